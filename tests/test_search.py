"""Search policies, the reward and the skill memory. The histories below are test inputs for the policies' logic
(a deterministic function stands in for the environment); nothing here enters a result."""
import json
import multiprocessing
import sqlite3

import pytest

from agentic_compression.loop.skills import SkillContext, SkillMemory
from agentic_compression.methods import available_methods
from agentic_compression.policies import PolicyView, RulePolicy, make, propose
from agentic_compression.policies.search import ALGORITHMS, PBT, BanditPolicy, search
from agentic_compression.reward import RewardSettings, reward
from agentic_compression.schemas import EvaluationResult, Strategy

BASE = {"accuracy": 0.5, "latency_ms": 40.0, "memory_gb": 0.9, "model_size_gb": 0.54, "co2_grams": 0.1}


def _baseline():
    return EvaluationResult(accuracy=0.5, accuracy_stderr=0.05, accuracy_n=100, benchmark="hellaswag",
                            latency_ms=40.0, memory_gb=0.9, model_size_gb=0.54, size_bytes=540_000_000,
                            num_params=134_515_008, co2_grams=0.1, energy_kwh=1e-4, eval_seconds=1.0)


@pytest.fixture(scope="module")
def env(tiny_weights_dir):
    from agentic_compression.loop.spec import infer_spec

    spec = infer_spec("tiny", tiny_weights_dir, online=False)
    config = json.loads((tiny_weights_dir / "config.json").read_text())
    from agentic_compression.targets import get

    avail = {n: m for n, m in available_methods().items() if get("transformers").offers(m)}  # a transformers run's
    return spec, config, avail


def _view(env, history=(), tried=(), recs=()):
    spec, config, avail = env
    return PolicyView(spec=spec, model_config=config, methods=avail, baseline=_baseline(), frontier=[],
                      history=list(history), tried=set(tried), episodes_left=10, seconds_left=1e6,
                      skill_recommendations=list(recs))


def _measure(st: Strategy) -> dict | None:
    """The test environment: 4-bit halves size and costs 10% accuracy, pruning fails, the rest is neutral."""
    step = st.steps[0]
    if step.method in ("wanda", "sparsegpt", "magnitude"):
        return None
    four = step.params.get("scheme") == "W4A16" or step.params.get("mode") in ("nf4", "fp4")
    g = step.params.get("group_size") or 128
    return {**BASE, "accuracy": 0.5 - (0.05 if four else 0.0) - 0.0001 * g,
            "model_size_gb": BASE["model_size_gb"] * (0.33 if four else 0.6 if "W8" in str(step.params) else 0.9)}


def _run(env, policy, n):
    history, tried = [], set()
    for i in range(n):
        st = policy.decide(_view(env, history, tried))
        if st.action == "end":
            break
        assert st.key() not in tried, "a search policy repeated a strategy"
        tried.add(st.key())
        obj = _measure(st)
        history.append({"episode_id": f"episode_{i:03d}", "strategy": st.model_dump(),
                        "status": "success" if obj else "failed", "objectives": obj, "error": None if obj else "x"})
    return history


@pytest.mark.parametrize("name", ["tpe", "nsga2", "bandit", "random", "pbt"])
def test_search_proposals_are_valid_untried_strategies_and_deterministic(env, name):
    spec, config, avail = env
    history = _run(env, make(name), 7)
    assert len(history) == 7
    for h in history:
        st = Strategy(**h["strategy"])
        for step in st.steps:
            assert step.method in avail and avail[step.method].check(step.params, config) is None
        assert st.policy == name
    again = _run(env, make(name), 7)  # same seed, same measurements: the same decisions
    assert [h["strategy"]["steps"] for h in again] == [h["strategy"]["steps"] for h in history]
    if name in ("tpe", "nsga2", "random"):  # another seed, other decisions
        from agentic_compression.policies import search

        other = _run(env, search.make(name, seed=7), 7)
        assert [h["strategy"]["steps"] for h in other] != [h["strategy"]["steps"] for h in history]


def test_search_policies_serve_the_search_action_with_the_runs_seed(env):
    for name in ALGORITHMS:
        st = search(_view(env), name, "gptq")
        assert st.action == "search" and st.steps[0].method == ("gptq" if name != "pbt" else st.steps[0].method)
    draws = {json.dumps(search(_view(env), "random", seed=s).steps[0].model_dump(), sort_keys=True) for s in range(4)}
    assert len(draws) > 1  # --search-seed reaches the searcher


def test_bandit_ucb(env):
    history = _run(env, BanditPolicy(c=0.1), 14)
    first = [h["strategy"]["steps"][0]["method"] for h in history]
    arms = sorted(set(first))
    assert set(first[:len(arms)]) == set(arms)  # every arm once before any arm twice
    # afterwards, with little exploration, the failing pruning arms are not pulled again
    assert not {"wanda", "sparsegpt", "magnitude"} & set(first[len(arms):])


def test_pbt_exploits_the_top_and_explores_around_it():
    pbt = PBT({"lr": ("log", 1e-5, 1e-2), "rank": ("choice", [4, 8, 16]), "steps": ("int", 10, 100)},
              population=4, quantile=0.25, seed=3, continue_=lambda p: {**p, "steps": p["steps"] * 2})
    gen0 = pbt.initial()
    assert len(gen0) == 4 and gen0 == pbt.initial()  # seeded
    scored = [(gen0[0], 0.1), (gen0[1], 0.9), (gen0[2], -1.0), (gen0[3], 0.5)]
    gen1 = pbt.next_generation(scored, 1)
    kept, new = gen1[:3], gen1[3]
    assert [k["lr"] for k in kept] == [gen0[1]["lr"], gen0[3]["lr"], gen0[0]["lr"]]  # the worst is replaced
    assert all(k["steps"] == 2 * g["steps"] for k, g in zip(kept, (gen0[1], gen0[3], gen0[0])))  # continue
    top = gen0[1]  # exploit the best, then explore: lr x0.8 or x1.25, rank a neighbour
    assert new["lr"] / top["lr"] in (pytest.approx(0.8), pytest.approx(1.25))
    assert abs([4, 8, 16].index(new["rank"]) - [4, 8, 16].index(top["rank"])) <= 1


def test_reward_uses_the_settings():
    assert reward(BASE, BASE) == 0.0
    smaller = {**BASE, "model_size_gb": BASE["model_size_gb"] / 2}
    assert reward(smaller, BASE) == pytest.approx(0.5)
    worse = {**smaller, "accuracy": 0.4}
    assert reward(worse, BASE) == -1.0  # under the default floor of 0.9
    assert reward(worse, BASE, RewardSettings(accuracy_floor=0.5)) == pytest.approx(0.5 - 2 * 0.2)
    assert reward(None, BASE) == -1.0
    with pytest.raises(ValueError, match="unknown objective"):
        RewardSettings(weights={"speed": 1.0})


def _record(path, n, method):
    mem = SkillMemory(path)
    ctx = SkillContext(model="m", family="llama", num_params=135_000_000, task="hellaswag")
    for _ in range(n):
        mem.record(ctx, {"steps": [{"method": method, "params": {"scheme": "W4A16"}}]}, True,
                   {**BASE, "model_size_gb": 0.2}, BASE, 0.5)


def test_skill_memory_learns_and_survives(tmp_path):
    path = tmp_path / "skills.sqlite"
    mem = SkillMemory(path)
    ctx = SkillContext(model="m", family="llama", num_params=135_000_000, task="hellaswag")
    assert mem.recommend(ctx) == []
    good = {**BASE, "model_size_gb": 0.2}
    for _ in range(3):
        mem.record(ctx, {"steps": [{"method": "gptq", "params": {"scheme": "W4A16"}}]}, True, good, BASE,
                   reward(good, BASE))
        mem.record(ctx, {"steps": [{"method": "awq", "params": {"scheme": "W4A16"}}]}, False, None, BASE, -1.0,
                   "pin_memory failed")
    recs = mem.recommend(ctx)
    assert [(r["method"], r["bits"]) for r in recs] == [("gptq", 4), ("awq", 4)]
    assert recs[0]["count"] == 3 and recs[0]["success_rate"] == 1.0 and recs[1]["success_rate"] == 0.0
    assert recs[0]["mean_size_ratio"] == pytest.approx(0.2 / 0.54, rel=1e-3)
    far = SkillContext(model="x", family="qwen", num_params=7_000_000_000, task="mmlu")
    assert mem.recommend(far)[0]["confidence"] < recs[0]["confidence"]  # dissimilar experiments weigh less

    # two writers at once lose nothing
    procs = [multiprocessing.get_context("spawn").Process(target=_record, args=(path, 20, m)) for m in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert SkillMemory(path).count() == 6 + 40

    # a corrupt file is reported and set aside, never deleted
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    fresh = SkillMemory(bad)
    assert fresh.set_aside and fresh.set_aside.read_bytes().startswith(b"this is not")
    assert fresh.count() == 0 and sqlite3.connect(bad).execute("select count(*) from outcomes").fetchone() == (0,)


def test_rule_policy_follows_the_skill_memory(env):
    plain = RulePolicy().decide(_view(env))
    assert plain.steps[0].method == "autoround"
    recs = [{"method": "bnb", "bits": 8, "mean_reward": 1.0, "confidence": 0.95, "count": 20},
            {"method": "autoround", "bits": 4, "mean_reward": -1.0, "confidence": 0.95, "count": 20}]
    learned = RulePolicy().decide(_view(env, recs=recs))
    assert learned.steps[0].method == "bnb" and learned.steps[0].params["mode"] == "int8"


def test_rule_policy_drops_a_method_that_wrecked_the_model(env):
    """After one ASVD result with 50x the baseline's perplexity, no other ASVD setting comes before the methods
    that kept the model usable (15 decisions); after a mild result (1.2x) ASVD is back within 10."""
    def order(ppl_ratio):
        history, tried = [], set()
        asvd = Strategy(action="asvd", steps=[_view(env).step("asvd", {"rank_ratio": 0.9})])
        history.append({"episode_id": "episode_000", "strategy": asvd.model_dump(), "status": "success",
                        "objectives": BASE, "error": None, "relative": {"perplexity": ppl_ratio}})
        tried.add(asvd.key())
        out = []
        for _ in range(15):
            st = RulePolicy().decide(_view(env, history, tried))
            tried.add(st.key())
            out.append(st.steps[0].method)
            history.append({"episode_id": "x", "strategy": st.model_dump(), "status": "success",
                            "objectives": BASE, "error": None, "relative": {"perplexity": 1.1}})
        return out

    assert "asvd" not in order(50.0) and "asvd" in order(1.2)[:10]


@pytest.mark.parametrize("name", ["rule", "tpe", "nsga2", "bandit", "random", "pbt"])
def test_batch_proposals_never_repeat_a_tried_or_pending_strategy(env, name):
    history = _run(env, make(name), 3)
    tried = {Strategy(**h["strategy"]).key() for h in history}
    view = _view(env, history, tried)
    batch = propose(make(name), view, 4)
    keys = [st.key() for st in batch]
    assert len(set(keys)) == len(keys) and not set(keys) & tried
    if name == "pbt":  # one generation at most: the rest of generation 0 on the candidate PBT recovers
        members = [h for h in history if h["strategy"]["steps"][0]["method"] == "lora"]
        assert members and len(batch) == 4 - len(members)
        assert {st.base for st in batch} == {members[0]["strategy"]["base"]}
    else:
        assert len(batch) == 4
    assert propose(make(name), view, 1) == [make(name).decide(view)]  # K=1 is the one-at-a-time decision


def test_a_bandit_batch_pulls_each_arm_once_before_any_twice(env):
    from agentic_compression.policies import candidate_steps

    arms = {s.method for s in candidate_steps(_view(env))}
    batch = propose(BanditPolicy(), _view(env), len(arms) + 1)
    pulled = [st.steps[0].method for st in batch]
    assert set(pulled[:len(arms)]) == arms  # pending pulls count: no arm twice while one was never pulled
    assert "pending" in batch[-1].reasoning  # the extra pull's bound counts the batch's pending pulls


def test_tpe_is_told_the_batch_as_running_trials(env, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    from agentic_compression.policies.base import with_pending

    history = _run(env, make("tpe"), 5)
    view = _view(env, history, {Strategy(**h["strategy"]).key() for h in history})
    first = make("tpe").decide(view)
    seen, sample = [], optuna.samplers.TPESampler.sample_relative

    def spy(self, study, trial, space):
        seen.append([t.params for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.number != trial.number])
        return sample(self, study, trial, space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_relative", spy)
    make("tpe").decide(with_pending(view, [first]))
    step = first.steps[0]
    assert seen and len(seen[0]) == 1 and seen[0][0]["method"] == step.method  # the pending strategy, running
    params = {p.name: p for p in view.methods[step.method].params}
    for k, v in seen[0][0].items():  # an ordered parameter is held as its position in the ordered options
        if k != "method":
            p = params[k.split(".", 1)[1]]
            assert step.params[p.name] == (p.ordered()[v] if p.ordered() else v)


def test_ordered_parameters_are_ordered_for_optuna(env, monkeypatch):
    """Group size, sparsity and ratio are positions in their ordered options (IntDistribution), names and flags
    stay categorical; every told trial decodes back to the strategy that was measured."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from agentic_compression.methods import get

    assert get("rtn").params[1].ordered() == [32, 64, 128, None]  # None: per channel, the coarsest
    assert get("wanda").params[0].ordered() == [0.3, 0.5, 0.7]
    assert get("rtn").params[0].ordered() is None and get("bnb").params[1].ordered() is None  # a name, a flag
    studies = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    history = _run(env, make("tpe"), 6)
    make("tpe").decide(_view(env, history, {Strategy(**h["strategy"]).key() for h in history}))
    told = [t for t in studies[-1].trials if t.state != optuna.trial.TrialState.RUNNING][:len(history)]
    assert len(told) == len(history)
    for t, h in zip(told, history):
        step = h["strategy"]["steps"][0]
        assert t.params["method"] == step["method"]
        for p in get(step["method"]).params:
            if (name := f"{step['method']}.{p.name}") not in t.params:
                continue
            d = t.distributions[name]
            if p.ordered():
                assert isinstance(d, IntDistribution) and (d.low, d.high) == (0, len(p.ordered()) - 1)
                assert p.ordered()[t.params[name]] == step["params"][p.name]
            else:
                assert isinstance(d, CategoricalDistribution) and t.params[name] == step["params"][p.name]
