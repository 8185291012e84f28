"""The real loop (LangGraph, workers, evaluation subprocess) on a tiny config-built llama: tests shrink limits,
not logic."""
import json
import shutil

import pytest

from agentic_compression import methods
from agentic_compression.config import RunConfig
from agentic_compression.loop.experiment import Experiment
from agentic_compression.methods import Method, registered
from agentic_compression.policies import RulePolicy, candidate_steps
from agentic_compression.schemas import Step, Strategy


class Explode(Method):
    """Failure injection for tests: a method whose library call raises."""

    name = "test_explode"
    action = "quantization"

    def apply(self, model, tokenizer, params, ctx):
        raise RuntimeError("boom: the library refused")


@pytest.fixture(autouse=True, scope="module")
def _explode():
    with registered(Explode):  # this module's runs may pick it; no other module sees it
        yield


class Scripted:
    """A policy that proposes a fixed list, then falls back to the rule policy."""

    name = "scripted"

    def __init__(self, steps):
        self.steps = list(steps)

    def decide(self, view):
        while self.steps:
            nxt = self.steps.pop(0)
            st = nxt if isinstance(nxt, Strategy) else Strategy(action="quantization", steps=[nxt])
            st = st.model_copy(update={"policy": self.name})
            if st.key() not in view.tried:
                return st
        return RulePolicy().decide(view)


def _cfg(tiny_dir, data_dir, tmp_path, fast_eval, **kw):
    return RunConfig(model=str(tiny_dir), data_dir=data_dir, output_dir=tmp_path / "out", experiment="exp",
                     presets=False, eval=fast_eval, threads=1, force=True,
                     **kw)  # random weights: a broken baseline, on purpose


@pytest.fixture(scope="module")
def finished(tiny_dir, data_dir, tmp_path_factory):
    from agentic_compression.config import EvalSettings

    fast = EvalSettings(limit=8, ppl_tokens=256, ppl_window=128, ppl_stride=64, prompt_tokens=16, decode_tokens=4,
                        warmup=1, repeats=2, batch_size=8, threads=1)
    tmp = tmp_path_factory.mktemp("loop")
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp, fast, max_episodes=3))
    exp.policy = Scripted([Step(method="test_explode"), Step(method="rtn", params={"scheme": "W4A16",
                                                                                   "group_size": 32}),
                           Strategy(action="lora", base="episode_001",  # chained on the previous candidate
                                    steps=[Step(method="lora", params={"steps": 2, "seq_len": 32})])])
    exp.run()
    return exp.dir


def test_artifact_layout(finished):
    for name in ("model_spec.json", "config.json", "pareto_frontier.json", "final_results.json",
                 "pareto_visualization.html", "baseline/results.json"):
        assert (finished / name).is_file(), name
    for i in range(3):
        ep = finished / f"episode_{i:03d}"
        assert (ep / "strategy.json").is_file() and (ep / "results.json").is_file()
    page = (finished / "pareto_visualization.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page and len(page) > 1_000_000  # self-contained
    final = json.loads((finished / "final_results.json").read_text())
    assert final["complete"] and final["termination_reason"] == "max_episodes reached (3)"
    assert len(final["hypervolume_history"]) == 4  # baseline + 3 episodes


def test_failed_step_is_recorded_and_excluded(finished):
    res = json.loads((finished / "episode_000" / "results.json").read_text())
    assert res["status"] == "failed" and res["failed_step"] == 0 and "boom" in res["error"]
    assert res["result"] is None and not (finished / "episode_000" / "checkpoint").exists()
    frontier = json.loads((finished / "pareto_frontier.json").read_text())
    assert "episode_000" not in {s["episode_id"] for s in frontier["solutions"]}
    assert json.loads((finished / "final_results.json").read_text())["episodes_failed"] == 1


def test_successful_episode_is_measured_and_reloadable(finished):
    res = json.loads((finished / "episode_001" / "results.json").read_text())
    assert res["status"] == "success"
    r = res["result"]
    ckpt = finished / "episode_001" / "checkpoint"
    # the bytes measured on disk: every file but the model card, which is written after, from the measurements
    assert r["size_bytes"] == sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file() and f.name != "README.md")
    assert r["accuracy_n"] == 8 and 0 < r["accuracy_stderr"] < 0.5
    assert r["latency"]["decode_ms_per_token"]["n"] == 2 * 4 and r["latency_ms"] > 0
    assert r["memory"]["model_peak_bytes"] > 0 and r["co2_grams"] > 0 and r["energy_kwh"] > 0
    assert r["relative"]["model_size_gb"] < 1.0  # smaller than the baseline on disk
    baseline = json.loads((finished / "baseline" / "results.json").read_text())["result"]
    assert baseline["relative"]["accuracy"] == 1.0


@pytest.mark.slow
def test_a_candidate_far_past_a_goal_is_pruned_after_its_first_tokens(tiny_dir, data_dir, tmp_path, fast_eval):
    """--max-kld 1e-6: an RTN W4 candidate's first 512 scored tokens already put its KL divergence far past twice
    the goal, so its evaluation stops there (no benchmark), the episode is 'pruned' with the reason and the slice's
    numbers, stays out of the frontier, and the run goes on; --no-prune measures it in full. The slice is judged in
    the run's process against the stored reference, before an evaluation process starts: no latency was timed."""
    from agentic_compression.goals import Goals

    ev = fast_eval.model_copy(update={"ppl_tokens": 1024})
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, ev, max_episodes=2, goals=Goals(max_kld=1e-6),
                          use_skills=False))
    exp.policy = Scripted([Step(method="rtn", params={"scheme": "W4A16", "group_size": 32}),
                           Step(method="rtn", params={"scheme": "W8A16", "group_size": 32})])
    final = exp.run()
    res = json.loads((exp.dir / "episode_000" / "results.json").read_text())
    assert res["status"] == "pruned" and res["result"] is None
    assert res["error"].startswith("pruned: KL divergence") and "the limit is 2e-06" in res["error"]
    p = res["pruned"]
    assert 512 <= p["tokens"] < 512 + 64 and p["kld"]["n"] == p["tokens"] and p["kld"]["mean"] > 2e-6
    assert set(p["phases"]) == {"load", "perplexity_kld"} and "latency" not in p and "before" in p["judged"]
    assert final["episodes_run"] == 2 and final["episodes_failed"] == 0  # the run went on (W8 is near-lossless)
    assert final["episodes_pruned"] == 1 + (final["episodes"][1]["status"] == "pruned")
    assert "episode_000" not in {s.episode_id for s in exp.frontier.solutions}
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path / "full", ev, max_episodes=1, goals=Goals(max_kld=1e-6),
                          use_skills=False, prune=False))
    exp.policy = Scripted([Step(method="rtn", params={"scheme": "W4A16", "group_size": 32})])
    exp.run()
    res = json.loads((exp.dir / "episode_000" / "results.json").read_text())
    assert res["status"] == "success" and res["result"]["perplexity_tokens"] == 1023 and not res["feasible"]


@pytest.mark.slow
def test_stop_on_time_budget(tiny_dir, data_dir, tmp_path, fast_eval):
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, fast_eval, budget_hours=1e-6))
    final = exp.run()
    assert final["termination_reason"].startswith("time budget exceeded") and final["episodes_run"] == 0


@pytest.mark.slow
def test_stop_on_patience(tiny_dir, data_dir, tmp_path, fast_eval):
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, fast_eval, patience=1, max_episodes=4))
    exp.policy = Scripted([Step(method="test_explode")])
    final = exp.run()
    assert final["episodes_run"] == 1 and final["termination_reason"].startswith("converged: 1 consecutive")


@pytest.mark.slow
def test_resource_check_refuses_what_cannot_fit(tiny_dir, data_dir, tmp_path, fast_eval, monkeypatch):
    import psutil

    from agentic_compression.loop import resources

    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, fast_eval))
    state = {"current_episode": 0, "consecutive_no_improvement": 0, "history": [], "refused": []}
    fits = exp.coordinator(state)
    assert not fits.get("should_terminate") and fits["current_strategy"]["steps"]

    class Tiny:
        available = 10_000_000  # 10 MB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    out = exp.coordinator(state)
    assert out["should_terminate"] and "refused" in out["termination_reason"]
    assert out["refused"] and all("only 0.0 GB is available" in r["reason"] for r in out["refused"])
    assert len({r["key"] for r in out["refused"]}) == len(out["refused"])  # each refused once, never retried
    strategy = Strategy(**fits["current_strategy"])
    assert resources.check(strategy, exp.spec, available_gb=100.0) is None


@pytest.mark.slow
def test_a_strategy_its_target_cannot_build_spends_no_episode(tiny_dir, data_dir, tmp_path, fast_eval):
    """GPTQ with per-channel scales has no ONNX form (MatMulNBits takes power-of-two blocks): on --target ortgenai
    it is refused with the reason before any work, as the resource check refuses, and the policy asked again."""
    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, fast_eval.model_copy(update={"target": "ortgenai"})))
    exp.policy = Scripted([Step(method="gptq", params={"group_size": None}), Step(method="gptq",
                                                                                 params={"group_size": 32})])
    out = exp.coordinator({"current_episode": 0, "consecutive_no_improvement": 0, "history": [], "refused": []})
    assert out["current_strategy"]["steps"][0]["params"]["group_size"] == 32
    (refused,) = out["refused"]
    assert refused["reason"] == ("the ortgenai target: step 0: gptq: group_size None is not a power-of-two block of "
                                 "at least 16, which MatMulNBits needs")


@pytest.mark.slow
def test_rule_policy_never_repeats_and_ends(tiny_dir, data_dir, tmp_path, fast_eval):
    from agentic_compression.policies import PolicyView

    exp = Experiment(_cfg(tiny_dir, data_dir, tmp_path, fast_eval))
    avail = {k: v for k, v in methods.available_methods().items() if k != Explode.name}
    tried, seen = set(), []
    while True:
        view = PolicyView(spec=exp.spec, model_config=exp.model_config, methods=avail, baseline=None, frontier=[],
                          history=[], tried=tried, episodes_left=99, seconds_left=1e9)
        s = RulePolicy().decide(view)
        if s.action == "end":
            break
        assert s.key() not in tried and s.reasoning and s.policy == "rule"
        tried.add(s.key())
        seen.append(s)
    singles = candidate_steps(PolicyView(spec=exp.spec, model_config=exp.model_config, methods=avail,
                                         baseline=None, frontier=[], history=[], tried=set(), episodes_left=1,
                                         seconds_left=1))
    assert {Strategy(action="quantization", steps=[st]).key() for st in singles} <= tried  # every single step
    assert any(len(s.steps) > 1 and s.action == "pipeline" for s in seen)  # and the multi-step templates
    assert not any(m.method in ("lora", "distill") for s in seen if len(s.steps) == 1 for m in s.steps)
    groups = {st.params.get("group_size") for s in seen for st in s.steps}
    assert 128 not in groups  # 128 does not divide the 64-wide layers
    first = seen[0].steps[0]
    assert first.method == "autoround" and first.params["scheme"] == "W4A16"  # the seed: small -> AutoRound


def test_chained_episode_builds_on_an_earlier_checkpoint(finished):
    import struct

    strategy = json.loads((finished / "episode_002" / "strategy.json").read_text())
    assert strategy["base"] == "episode_001" and strategy["steps"][0]["method"] == "lora"
    res = json.loads((finished / "episode_002" / "results.json").read_text())
    assert res["status"] == "success", res["error"]
    ckpt = finished / "episode_002" / "checkpoint"
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    with open(ckpt / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["model.layers.0.mlp.up_proj.weight_packed"]["dtype"] == "I32"  # the 4-bit base, kept


def test_rule_policy_reads_bits_from_every_method():
    from agentic_compression.policies.rule import bits

    assert [bits(Step(method=m, params=p)) for m, p in [
        ("gptq", {"scheme": "W4A16"}), ("rtn", {"scheme": "W8A8"}), ("bnb", {"mode": "int8"}),
        ("bnb", {"mode": "nf4"}), ("qlora", {}), ("structured", {"ratio": 0.1})]] == [4, 8, 8, 4, 4, 16]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed (setup.sh installs it)")
def test_report_renders_in_a_real_browser(finished, tmp_path):
    """Headless Chromium runs the page's own Plotly: 2-D pairs, 3-D, parallel coordinates and the hypervolume curve
    are drawn (their SVG/WebGL elements exist in the DOM after the scripts ran), offline."""
    import subprocess

    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
         (finished / "pareto_visualization.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("js-plotly-plot") >= 4  # splom, 3-D, parallel coordinates, hypervolume
    assert dom.count("main-svg") >= 4 and 'class="parcoords"' in dom and "gl-container" in dom
    assert "episode_001" in dom and "Hypervolume of the frontier" in dom
