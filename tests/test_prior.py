"""The shipped prior (prior.py, built by bench/prior.py from the committed replay tables): built from a table with
its verdicts, read by the skill memory beside (and overridden by) the user's outcomes, and by the rule and the
bandit, so that a new install's first episodes skip what the project measured to wreck a model of that size."""
import json
import sys
from pathlib import Path

import pytest

from agentic_compression.loop.skills import SkillContext, SkillMemory
from agentic_compression.methods import available_methods
from agentic_compression.policies import PolicyView, RulePolicy, prior
from agentic_compression.policies.search import BanditPolicy
from agentic_compression.schemas import EvaluationResult

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
SMOLLM2 = SkillContext(model="smollm2-135m", family="llama", num_params=134_515_008, task="hellaswag",
                       targets=("transformers",))
OBJ = {"accuracy": 0.4, "latency_ms": 40.0, "memory_gb": 0.6, "model_size_gb": 0.5, "co2_grams": 0.05}


def _table(rows, target="transformers"):
    base = {**OBJ, "accuracy_stderr": 0.03, "accuracy_n": 200, "benchmark": "hellaswag", "perplexity": 20.0,
            "num_params": 134_515_008}
    return {"model": "smollm2-135m", "experiment": "t", "eval": {"benchmark": "hellaswag", "target": target},
            "baseline": base, "rows": [{"key": f"k{i}", "strategy": {"action": "quantization", "steps": [s]},
                                        "status": st, "objectives": o, "perplexity": p, "target": target}
                                       for i, (s, st, o, p) in enumerate(rows)]}


def _build(tmp_path, tables):
    from prior import build  # bench/prior.py

    paths = []
    for i, t in enumerate(tables):
        paths.append(tmp_path / f"t{i}.json")
        paths[-1].write_text(json.dumps(t))
    return build(paths, model=lambda name: ("llama", {"hidden_size": 576, "intermediate_size": 1536}))


def test_a_table_becomes_entries_with_their_verdicts_and_rewards(tmp_path):
    gptq = {"method": "gptq", "params": {"scheme": "W4A16", "group_size": 64}}
    asvd = {"method": "asvd", "params": {"rank_ratio": 0.8}}
    data = _build(tmp_path, [_table([
        (gptq, "success", {**OBJ, "accuracy": 0.39, "model_size_gb": 0.2}, 26.0),
        (asvd, "success", {**OBJ, "accuracy": 0.25}, 6940.0),  # 347x the baseline's perplexity
        ({"method": "awq", "params": {"group_size": 64}}, "failed", None, None),
        # a failure acf's own check refuses now (the builder's k-quant at block 64): no policy proposes it
        ({"method": "ort", "params": {"algo_config": "k_quant", "block_size": 64}}, "failed", None, None)])])
    assert data["version"] == prior.VERSION and data["sources"][0]["rows"] == 3
    assert data["sources"][0]["left_out"] == 1
    g, a, w = data["entries"]
    assert (g["method"], g["bits"], g["verdict"], g["perplexity_ratio"]) == ("gptq", 4, "ok", 1.3)
    assert g["reward"] > 0 and g["size_ratio"] == 0.4 and g["target"] == "transformers"
    assert a["verdict"] == "wrecked" and a["reward"] < 0 and a["perplexity_ratio"] == 347.0
    assert (w["verdict"], w["reward"]) == ("failed", None)
    # the same strategy measured again in a later table replaces the first row; another target's row is kept
    again = _build(tmp_path, [_table([(gptq, "success", OBJ, 21.0)]), _table([(gptq, "success", OBJ, 22.0)]),
                              _table([(gptq, "success", OBJ, 40.0)], target="llamacpp")])
    assert [(e["target"], e["perplexity_ratio"], e["verdict"]) for e in again["entries"]] == \
        [("transformers", 1.1, "ok"), ("llamacpp", 2.0, "ok")]


def test_the_shipped_prior_is_the_one_the_committed_tables_build():
    """A table added or re-measured without rebuilding the prior fails here (bench/prior.py rebuilds it)."""
    from prior import build

    shipped = json.loads(prior.PATH.read_text())
    tables = [BENCH.parent / t for t in shipped["command"].split("--tables ")[1].split(",")]
    assert all(t.is_file() for t in tables), "the prior names a table that is not committed"
    assert build(tables)["entries"] == shipped["entries"] and shipped["version"] == prior.VERSION
    verdicts = {(e["method"], e["verdict"]) for e in shipped["entries"] if e["target"] == "transformers"}
    assert ("asvd", "wrecked") in verdicts and ("asvd", "ok") not in verdicts  # what the rule must learn


def test_the_prior_weighs_less_than_the_users_outcomes_and_yields_to_them(tmp_path):
    mem = SkillMemory(tmp_path / "s.sqlite", prior.load())
    recs = {(r["method"], r["bits"]): r for r in mem.recommend(SMOLLM2, top=None)}
    assert recs[("asvd", 16)]["wrecked_rate"] == 1.0 and recs[("asvd", 16)]["source"] == "prior"
    assert recs[("asvd", 16)]["verdict_confidence"] == pytest.approx(0.5)  # two entries at half weight each
    # a model of another family twice the size: the same entries, far less sure
    gemma = SkillContext(model="gemma-3-270m", family="gemma3", num_params=268_098_176, task="hellaswag")
    far = {(r["method"], r["bits"]): r for r in mem.recommend(gemma, top=None)}
    assert far[("asvd", 16)]["verdict_confidence"] < 0.2
    # on a llama.cpp run a transformers-side reward says nothing, the verdict still holds
    cpu = SkillContext(**{**SMOLLM2.__dict__, "targets": ("llamacpp",)})
    there = {(r["method"], r["bits"]): r for r in mem.recommend(cpu, top=None)}
    assert there[("bnb", 4)]["confidence"] == 0.0 and recs[("bnb", 4)]["confidence"] > 0.3
    assert there[("asvd", 16)]["wrecked_rate"] == 1.0
    # the user's own ASVD outcome on this model replaces the prior's two
    plan = {"action": "asvd", "steps": [{"method": "asvd", "params": {"rank_ratio": 0.95}}]}
    mem.record(SMOLLM2, plan, True, {**OBJ, "model_size_gb": 0.45}, OBJ, reward=0.2)
    mine = {(r["method"], r["bits"]): r for r in mem.recommend(SMOLLM2, top=None)}[("asvd", 16)]
    assert (mine["count"], mine["wrecked_rate"], mine["source"], mine["mean_reward"]) == (1, 0.0, "memory", 0.2)


@pytest.fixture(scope="module")
def env(tiny_weights_dir):
    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.targets import get

    spec = infer_spec("tiny", tiny_weights_dir, online=False)
    config = json.loads((tiny_weights_dir / "config.json").read_text())
    return spec, config, {n: m for n, m in available_methods().items() if get("transformers").offers(m)}


def _decisions(env, policy, recs, n=15):
    spec, config, avail = env
    base = EvaluationResult(accuracy=0.4, accuracy_stderr=0.03, accuracy_n=200, benchmark="hellaswag",
                            latency_ms=40.0, memory_gb=0.6, model_size_gb=0.5, size_bytes=500_000_000,
                            num_params=134_515_008, co2_grams=0.05, energy_kwh=1e-4, eval_seconds=1.0)
    history, tried, out = [], set(), []
    for i in range(n):
        st = policy.decide(PolicyView(spec=spec, model_config=config, methods=avail, baseline=base, frontier=[],
                                      history=history, tried=tried, episodes_left=n - i, seconds_left=1e6,
                                      skill_recommendations=recs))
        tried.add(st.key())
        out.append(st.steps[0].method)
        history.append({"episode_id": f"episode_{i:03d}", "strategy": st.model_dump(), "status": "success",
                        "objectives": OBJ, "error": None, "relative": {"perplexity": 1.1}})
    return out


def test_the_rule_and_the_bandit_skip_what_the_prior_says_wrecks_this_model(env, tmp_path):
    """Without the prior both reach ASVD within 15 episodes; with it (on a SmolLM2-sized llama) neither does, and
    the bandit's first arm is the family the prior rewards most here."""
    recs = SkillMemory(tmp_path / "s.sqlite", prior.load()).recommend(SMOLLM2, top=None)
    assert "asvd" in _decisions(env, RulePolicy(), []) and "asvd" in _decisions(env, BanditPolicy(), [])
    assert "asvd" not in _decisions(env, RulePolicy(), recs) and "asvd" not in _decisions(env, BanditPolicy(), recs)
    best = max((r for r in recs if r["method"] in env[2]), key=lambda r: r["mean_reward"] * r["confidence"])
    assert _decisions(env, BanditPolicy(), recs, n=1) == [best["method"]]
    # a different model far from the prior's: ASVD is not ruled out by it
    gemma = SkillContext(model="g", family="gemma3", num_params=1_000_000_000, task="piqa", targets=("transformers",))
    far = SkillMemory(tmp_path / "s.sqlite", prior.load()).recommend(gemma, top=None)
    assert "asvd" in _decisions(env, RulePolicy(), far)


def test_a_stale_prior_is_not_read(tmp_path):
    old = tmp_path / "prior.json"
    old.write_text(json.dumps({"version": prior.VERSION + 1, "entries": [{"method": "x"}]}))
    assert prior.load(old) == [] and prior.load(tmp_path / "absent.json") == []
