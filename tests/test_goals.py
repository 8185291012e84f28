"""Goals: constraints every episode is judged against, the best feasible candidates, the recommended one, a run
that stops once its goal is met, and the rule policy steering toward the feasible region."""
import json

import pytest

from agentic_compression.goals import Goals, judge, met, pick, violations
from agentic_compression.schemas import EvaluationResult, Strategy


def _r(acc=0.5, se=0.02, size=0.5, lat=40.0, mem=0.9):
    return EvaluationResult(accuracy=acc, accuracy_stderr=se, accuracy_n=500, benchmark="hellaswag", latency_ms=lat,
                            memory_gb=mem, model_size_gb=size, size_bytes=int(size * 1e9), num_params=1,
                            co2_grams=0.1, energy_kwh=1e-4, eval_seconds=1.0)


BASE = _r()


@pytest.mark.parametrize("given,allowed", [("0.01", 0.01), (0.02, 0.02), ("1%", 0.005), (" 10 % ", 0.05)])
def test_an_accuracy_drop_is_absolute_or_relative(given, allowed):
    assert Goals(max_accuracy_drop=given).allowed_drop(0.5) == pytest.approx(allowed)


@pytest.mark.parametrize("bad", ["2", "1.0", "100%", "-0.01", "one percent", "1e-2"])
def test_a_wrong_accuracy_drop_is_refused_with_what_to_give(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="absolute one below 1 .* relative one below 100%"):
        Goals(max_accuracy_drop=bad)


def test_the_accuracy_goal_is_judged_with_the_standard_error_of_the_difference():
    g = Goals(max_accuracy_drop="0.01")  # se of the difference: hypot(0.02, 0.02) = 0.0283
    assert judge(_r(acc=0.465), BASE, g) == []  # drop 0.035: over 0.01 by 0.025 < 0.0283, not shown to break it
    why = judge(_r(acc=0.45), BASE, g)  # drop 0.05: over by 0.04 > 0.0283
    assert why == ["accuracy drop 0.050 exceeds the allowed 0.010 by more than its standard error 0.028"]
    assert judge(_r(acc=0.45, se=0.001), _r(se=0.001), Goals(max_accuracy_drop="10%")) == []  # 0.05 allowed


def test_size_latency_and_memory_goals_name_what_broke():
    g = Goals(max_size_gb=0.3, max_latency_ratio=1.1, max_memory_gb=0.5)
    assert judge(_r(size=0.29, lat=44.0, mem=0.5), BASE, g) == []
    assert judge(_r(size=0.31, lat=48.0, mem=0.6), BASE, g) == [
        "size 0.310 GB > 0.3 GB", "latency 1.20x the baseline's > 1.1x", "peak memory 0.600 GB > 0.5 GB"]


def test_violations_are_the_margins_past_each_stated_goal():
    g = Goals(max_accuracy_drop="0.01", max_size_gb=0.3, max_latency_ratio=1.1, max_memory_gb=0.5)
    kept = violations(_r(acc=0.5, size=0.15, lat=44.0, mem=0.5), BASE, g)
    assert kept == pytest.approx({"accuracy": -0.01 - 0.02828, "size": -0.5, "latency": 0.0, "memory": 0.0},
                                 abs=1e-4)  # at a limit is kept; every margin <= 0
    broken = violations(_r(acc=0.45, size=0.6, lat=48.0, mem=0.6), BASE, g)
    assert broken == pytest.approx({"accuracy": 0.04 - 0.02828, "size": 1.0, "latency": 48 / 44 - 1,
                                    "memory": 0.2}, abs=1e-4)
    assert len(judge(_r(acc=0.45, size=0.6, lat=48.0, mem=0.6), BASE, g)) == sum(v > 0 for v in broken.values())
    assert violations(_r(), BASE, Goals(max_size_gb=1.0)).keys() == {"size"}  # only the goals stated


def _entry(i, st, obj, why=(), margins=None):
    return {"episode_id": f"episode_{i:03d}", "strategy": st.model_dump(), "status": "success", "objectives": obj,
            "error": None, "relative": {"perplexity": 1.0}, "feasible": not why, "infeasible_because": list(why),
            "goal_violations": margins or {}}


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_optuna_is_told_the_goals_as_constraints(env, name, monkeypatch):
    import optuna

    from agentic_compression.policies import make

    studies = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    v = _view(env, [], Goals(max_accuracy_drop="0.01"))
    four, eight = v.step("rtn", {"scheme": "W4A16", "group_size": 64}), v.step("rtn", {"scheme": "W8A16"})
    history = [_entry(0, Strategy(action="quantization", steps=[four]), _r(acc=0.40, size=0.15).objectives(),
                      ["accuracy drop ..."], {"accuracy": 0.07}),
               _entry(1, Strategy(action="quantization", steps=[eight]), _r(acc=0.50, size=0.3).objectives(),
                      margins={"accuracy": -0.038})]
    make(name).decide(_view(env, history, Goals(max_accuracy_drop="0.01")))
    told = [t for t in studies[0].trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.constraints for t in told] == [{"accuracy": 0.07}, {"accuracy": -0.038}]
    assert [t.params["rtn.scheme"] for t in told] == ["W4A16", "W8A16"]


def test_the_bandit_and_pbt_steer_toward_the_feasible_region(env):
    from agentic_compression.policies.base import candidate_steps
    from agentic_compression.policies.search import BanditPolicy, PBTPolicy

    v = _view(env, [], Goals())
    arms = sorted({s.method for s in candidate_steps(v)})
    # every arm pulled once; gptq's candidate is the smallest, so it has the best reward, but it broke the goal
    history = [_entry(i, Strategy(action="quantization", steps=[v.step(a)]),
                      _r(size=0.1 if a == "gptq" else 0.5).objectives(),
                      ["size ..."] if a == "gptq" else (), {"size": 0.5 if a == "gptq" else -0.1})
               for i, a in enumerate(arms)]
    no_goals = [{k: x for k, x in h.items() if k not in ("feasible", "infeasible_because", "goal_violations")}
                for h in history]
    assert BanditPolicy(c=0.01).decide(_view(env, no_goals, Goals())).steps[0].method == "gptq"
    assert BanditPolicy(c=0.01).decide(_view(env, history, Goals(max_size_gb=0.15))).steps[0].method != "gptq"
    # PBT recovers accuracy, never size: it does not pick the candidate whose size broke the goal
    def lost(entries):
        return [{**h, "objectives": {**h["objectives"], "accuracy": 0.45}} for h in entries
                if h["strategy"]["steps"][0]["method"] in ("gptq", "rtn")]

    def target(entries, g):
        return PBTPolicy()._target(_view(env, lost(entries), g))["strategy"]["steps"][0]["method"]

    assert target(no_goals, Goals()) == "gptq"  # without goals the smaller one has the better reward
    assert target(history, Goals(max_size_gb=0.15)) == "rtn"


def test_the_recommended_candidate_is_the_smallest_then_the_fastest_feasible():
    g = Goals(max_accuracy_drop="0.01")
    results = {"baseline": BASE, "a": _r(acc=0.49, size=0.2, lat=50.0, mem=0.5), "b": _r(acc=0.495, size=0.2, lat=30.0),
               "c": _r(acc=0.40, size=0.1, lat=20.0), "d": _r(acc=0.51, size=0.3, lat=35.0)}
    out = pick(results, BASE, g)
    assert out["feasible"] == ["a", "b", "baseline", "d"]  # c dropped 0.10: infeasible
    assert out["recommended"] == "b"  # a and b are the smallest; b is faster
    assert out["best_feasible"] == {"accuracy": "d", "latency_ms": "b", "memory_gb": "a", "model_size_gb": "a",
                                    "co2_grams": "baseline"}  # all equal: the first
    assert pick({"baseline": BASE, "c": results["c"]}, BASE, Goals(max_size_gb=0.01))["recommended"] is None


def test_met_waits_for_a_feasible_candidate_at_the_size_target():
    g = Goals(max_accuracy_drop="0.01", target_size_ratio=0.35, stop_when_met=True)
    assert not met(_r(size=0.2, acc=0.40), BASE, g)  # small enough, not accurate enough
    assert not met(_r(size=0.2, acc=0.5), BASE, g)  # 0.4 of the baseline's 0.5 GB
    assert met(_r(size=0.17, acc=0.5), BASE, g)


def _view(env, history, goals):
    from agentic_compression.policies import PolicyView

    spec, config, avail = env
    return PolicyView(spec=spec, model_config=config, methods=avail, baseline=BASE, frontier=[], history=history,
                      tried={Strategy(**h["strategy"]).key() for h in history}, episodes_left=10, seconds_left=1e6,
                      goals=goals)


@pytest.fixture(scope="module")
def env(tiny_weights_dir):
    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.methods import available_methods

    config = json.loads((tiny_weights_dir / "config.json").read_text())
    return infer_spec("tiny", tiny_weights_dir, online=False), config, available_methods()


def test_the_rule_policy_steers_toward_the_feasible_region(env):
    from agentic_compression.policies import RulePolicy
    from agentic_compression.policies.rule import bits

    first = RulePolicy().decide(_view(env, [], Goals(max_accuracy_drop="0.01")))
    assert bits(first.steps[0]) == 4  # the plain rule starts at 4 bits (autoround)
    broke = {"episode_id": "episode_000", "strategy": first.model_dump(), "status": "success",
             "objectives": BASE.objectives(), "error": None, "relative": {"perplexity": 1.1},
             "feasible": False, "infeasible_because": ["accuracy drop 0.050 exceeds the allowed 0.010 by ..."]}
    after = RulePolicy().decide(_view(env, [broke], Goals(max_accuracy_drop="0.01")))
    assert bits(after.steps[0]) == 8, after  # the accuracy goal binds: 8-bit next
    eight = Strategy(action="quantization", steps=[_view(env, [], Goals()).step("rtn", {"scheme": "W8A16",
                                                                                        "group_size": 64})])
    feasible_but_big = {"episode_id": "episode_000", "strategy": eight.model_dump(), "status": "success",
                        "objectives": BASE.objectives(), "error": None,
                        "relative": {"perplexity": 1.0, "model_size_gb": 0.6}, "feasible": True,
                        "infeasible_because": []}
    g = Goals(max_accuracy_drop="0.01", target_size_ratio=0.35)
    assert bits(RulePolicy().decide(_view(env, [feasible_but_big], g)).steps[0]) == 4  # size unmet: 4-bit next


@pytest.mark.slow
def test_a_run_stops_when_its_goal_is_met_and_recommends_the_feasible_candidate(tiny_dir, data_dir, tmp_path,
                                                                                capsys):
    from agentic_compression.cli import main
    from agentic_compression.report import render

    args = ["run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
            "--experiment", "goal", "--max-episodes", "4", "--limit", "8", "--ppl-tokens", "256", "--repeats", "2",
            "--threads", "1", "--no-skills", "--force", "--max-size-gb", "0.05", "--stop-when-met"]
    assert main(args) == 0
    final = json.loads((tmp_path / "goal" / "final_results.json").read_text())
    assert final["termination_reason"].startswith("goal met: episode_000 is feasible"), final["termination_reason"]
    assert final["episodes_run"] == 1 and final["episodes"][0]["feasible"] is True
    g = final["goals"]
    assert g["goals"] == {"max_size_gb": 0.05, "stop_when_met": True} and g["recommended"] == "episode_000"
    assert "baseline" in g["feasible"]  # the tiny model itself is under 0.05 GB
    text = render(tmp_path / "goal")
    assert "goals (max_size_gb 0.05, stop_when_met True): recommended episode_000" in text
    assert "goals (" in (tmp_path / "goal" / "pareto_visualization.html").read_text()


def test_a_wrong_goal_on_the_command_line_is_one_line_and_exit_2(tiny_dir, data_dir, tmp_path, capsys):
    from agentic_compression.cli import main

    assert main(["run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir",
                 str(tmp_path), "--max-accuracy-drop", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "goals.max_accuracy_drop" in err[0] and "below 1" in err[0], err
    assert not any(tmp_path.iterdir())
