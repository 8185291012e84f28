"""Measure a grid of strategies on one model once, as a normal acf experiment, and store the table for replay.

    .venv/bin/python bench/grid.py run   [--model smollm2-135m] [--limit 50] [--ppl-tokens 2048] [--out DIR] [--to F]
    .venv/bin/python bench/grid.py run --space deploy --limit 100 --ppl-tokens 4096 --threads 2 \
        --experiment grid-smollm2-deploy --to bench/grid_smollm2_deploy.json
    .venv/bin/python bench/grid.py table EXPERIMENT_DIR [--to bench/grid_smollm2.json]
    .venv/bin/python bench/grid.py resume EXPERIMENT_DIR [--space S] [--first KEY,KEY,...] [--to F]

`run` executes a space's grid through the real loop: workers, the evaluation subprocess, the frontier. The
`pytorch` space (GRID: every PyTorch-side method at its main parameter values, plus the recovery template) is
measured in transformers; the `deploy` space (DEPLOY: every llama.cpp type with and without an importance matrix,
per-tensor budgets, ORT GenAI's precisions, block sizes, accuracy levels and roundings, and PyTorch-side steps
chained into both) in llama.cpp and ONNX Runtime GenAI, with KL divergence to each runtime's f32 export; the
`ort-mixed` space (ORT_MIXED: ORT GenAI's int8 groups inside int4) in ORT GenAI. Every candidate is measured in full
(no early abort), presets are not run (the grid holds them), and a strategy acf's own checks refuse on the model is
left out. `resume` continues a stopped grid experiment (the episode that was running starts again), the strategies
named by `--first` (their keys, as the table lists them) before the others. `table` turns the experiment folder
(complete or not) into the data file bench/replay.py reads: the baseline's and every episode's measured objectives.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from agentic_compression.schemas import OBJECTIVES, Step, Strategy  # noqa: E402

G64 = {"group_size": 64}
# fewer calibration windows than the defaults, to keep the grid near an hour on 2 cores; replay uses the same
# overrides, so a policy's proposals carry exactly these parameters
OVERRIDES = {"gptq": {"num_samples": 32}, "awq": {"num_samples": 16}}
GRID: list[tuple[str, list[tuple[str, dict]]]] = [
    *[("quantization", [("rtn", {"scheme": s, "group_size": g})])
      for s, g in [("W4A16", 64), ("W4A16", 32), ("W4A16", None), ("W8A16", 64), ("W8A8", None)]],
    *[("quantization", [("gptq", {"scheme": s, "group_size": g})])
      for s, g in [("W4A16", 64), ("W4A16", 32), ("W4A16", None), ("W8A16", 64)]],
    ("quantization", [("awq", {"scheme": "W4A16", **G64})]),
    ("quantization", [("autoround", {"scheme": "W4A16", **G64})]),
    ("quantization", [("autoround", {"scheme": "W4A16", "group_size": 32})]),
    *[("quantization", [("bnb", {"mode": m})]) for m in ("int8", "nf4", "fp4")],
    *[("asvd", [("asvd", {"rank_ratio": r, "targets": "mlp"})]) for r in (0.9, 0.8)],
    *[("pruning", [(m, {"sparsity": s, "mask_structure": "unstructured"})])
      for m in ("wanda", "sparsegpt") for s in (0.3, 0.5)],
    ("pruning", [("sparsegpt", {"sparsity": 0.5, "mask_structure": "2:4"})]),
    ("pruning", [("magnitude", {"sparsity": 0.3, "mask_structure": "unstructured"})]),
    *[("pruning", [("structured", {"granularity": g, "ratio": r})])
      for g, r in [("mlp", 0.05), ("mlp", 0.1), ("mlp", 0.2), ("layer", 0.1), ("head", 0.2)]],
    ("qlora", [("qlora", {})]),
]
TEMPLATES = ("balanced_quality",)  # GPTQ W4A16, then LoRA if ppl_ratio > 1.05: as the rule policy proposes it
IM = {"imatrix": True}
DEPLOY: list[tuple[str, list[tuple[str, dict]]]] = [
    *[("quantization", [("gguf", {"type": t, "imatrix": i})])
      for t in ("Q4_K_M", "Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "IQ4_XS") for i in (True, False)],
    *[("quantization", [("ort", {"precision": "int4", "block_size": b, "accuracy_level": a, "algo_config": g})])
      for b, a, g in [(32, 4, "rtn"), (64, 4, "rtn"), (32, 1, "rtn"), (32, 4, "k_quant"), (64, 4, "k_quant"),
                      (64, 1, "k_quant")]],
    ("quantization", [("ort", {"precision": "int8", "block_size": 32, "accuracy_level": 4, "algo_config": "rtn"})]),
    *[("quantization", [("gguf_mixed", {"avg_bits": b, **IM})]) for b in (6.0, 4.5)],
    ("quantization", [("gguf_mixed", {"avg_bits": 6.0, "exclude": "Q4_1", **IM})]),
    ("quantization", [("autoround", {"scheme": "W4A16", "group_size": 32})]),  # GPTQ-format int4: ORT GenAI
    ("pruning", [("structured", {"granularity": "mlp", "ratio": 0.1})]),  # a smaller f32 model: llama.cpp
    ("pipeline", [("structured", {"granularity": "mlp", "ratio": 0.1}), ("gguf", {"type": "Q4_K_M", **IM})]),
    ("quantization", [("autoround_gguf", {"type": "q4_k_m"})]),
    ("pruning", [("asvd", {"rank_ratio": 0.8, "targets": "mlp"})]),  # measured to wreck a 135M model: the prior
]
# ORT GenAI's int8 groups inside int4 (the builder's mixed_layers), beside the default int4 they refine
ORT_MIXED: list[tuple[str, list[tuple[str, dict]]]] = [
    ("quantization", [("ort", {"precision": "int4", "block_size": 32, "accuracy_level": 4, "algo_config": g,
                               "matmul_mixed_precision": "mixed_layers:int8"})]) for g in ("k_quant", "rtn")]
SPACES = {"pytorch": (GRID, TEMPLATES, "transformers"), "deploy": (DEPLOY, (), "llamacpp,ortgenai"),
          "ort-mixed": (ORT_MIXED, (), "ortgenai")}


def strategies(config: dict | None = None, space: str = "pytorch") -> list[Strategy]:
    from agentic_compression.methods import available_methods, get
    from agentic_compression.policies.pipelines import instantiate

    grid, templates, _ = SPACES[space]
    out = []
    for action, steps in grid:
        out.append(Strategy(action=action, steps=[
            Step(method=m, params=get(m).validated({**p, **OVERRIDES.get(m, {})})) for m, p in steps]))
    for name in templates if config else ():
        t = instantiate(name, config, available_methods(), OVERRIDES)
        if t is not None:
            out.append(t)
    return out


class GridPolicy:
    name = "grid"

    def __init__(self, config: dict, space: str = "pytorch"):
        from agentic_compression.methods import get

        # a strategy acf's own checks refuse on this model is never proposed by a policy: not measured either
        self.todo = [st for st in strategies(config, space)
                     if not any(get(s.method).check(s.params, config) for s in st.steps)]

    def decide(self, view):
        for st in self.todo:
            if st.key() not in view.tried:
                return st.model_copy(update={"policy": self.name, "reasoning": "grid"})
        return Strategy(action="end", reasoning="grid done", policy=self.name)


def table(exp_dir: Path) -> dict:
    base = json.loads((exp_dir / "baseline" / "results.json").read_text())["result"]
    base = {k: v for k, v in base.items() if k not in ("accuracy_detail", "latency", "memory", "energy")}
    rows = []
    for ep in sorted(exp_dir.glob("episode_*/results.json")):
        r = json.loads(ep.read_text())
        st = Strategy(**r["strategy"])
        res = r.get("result")
        rows.append({"key": st.key(), "strategy": {"action": st.action, "base": st.base,
                                                   "steps": [s.model_dump(exclude_none=True) for s in st.steps]},
                     "status": r["status"], "error": (r.get("error") or "")[-300:] or None,
                     "objectives": {k: res.get(k) for k in OBJECTIVES} if res else None,
                     "kld_stderr": (res.get("kld_detail") or {}).get("stderr") if res else None,
                     "target": (res.get("runtime") or {}).get("target") if res else None,
                     "intervals": res.get("intervals") if res else None,  # paired latency (absent before it)
                     "perplexity": res["perplexity"] if res else None,
                     "accuracy_stderr": res["accuracy_stderr"] if res else None,
                     # control workload's time over the baseline's (absent in tables measured before it existed)
                     "machine_speed": (res.get("relative") or {}).get("machine_speed") if res else None,
                     "compress_seconds": r["compress_seconds"]})
    cfg = json.loads((exp_dir / "config.json").read_text())
    return {"model": cfg["model"], "eval": cfg["eval"], "experiment": exp_dir.name,
            "baseline": base,
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    r.add_argument("--out", type=Path, default=REPO / "experiments")
    r.add_argument("--experiment", default="grid-smollm2")
    r.add_argument("--limit", type=int, default=50)
    r.add_argument("--ppl-tokens", type=int, default=2048)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--to", type=Path, default=REPO / "bench" / "grid_smollm2.json")
    r.add_argument("--space", choices=sorted(SPACES), default="pytorch")
    r.add_argument("--last", type=Path, help="a table: the strategies it measured run last (a partial run then "
                                             "covers what it lacks first)")
    res = sub.add_parser("resume")
    res.add_argument("experiment_dir", type=Path)
    res.add_argument("--space", choices=sorted(SPACES), default="pytorch")
    res.add_argument("--first", default="", help="strategy keys to measure before the others, in this order")
    res.add_argument("--to", type=Path, default=REPO / "bench" / "grid_smollm2.json")
    t = sub.add_parser("table")
    t.add_argument("experiment_dir", type=Path)
    t.add_argument("--to", type=Path, default=REPO / "bench" / "grid_smollm2.json")
    a = ap.parse_args()
    if a.cmd == "table":
        a.to.write_text(json.dumps(table(a.experiment_dir), indent=1))
        print(f"wrote {a.to}")
        return
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agentic_compression.config import EvalSettings, RunConfig
    from agentic_compression.loop import resuming
    from agentic_compression.loop.experiment import Experiment

    if a.cmd == "resume":
        exp = Experiment(RunConfig.from_file(a.experiment_dir / "config.json"), resume_dir=a.experiment_dir)
        exp.policy = GridPolicy(exp.model_config, a.space)
        first = [k for k in a.first.split(",") if k]
        exp.policy.todo.sort(key=lambda st: first.index(st.key()) if st.key() in first else len(first))
        try:
            resuming.resume(exp)
        finally:
            exp.close()
        a.to.write_text(json.dumps(table(exp.dir), indent=1))
        print(f"wrote {a.to}")
        return

    grid, templates, target = SPACES[a.space]
    n = len(grid) + len(templates)
    exp = Experiment(RunConfig(model=a.model, data_dir=a.data_dir, output_dir=a.out, experiment=a.experiment,
                               max_episodes=n, patience=n + 1, budget_hours=24, threads=a.threads,
                               method_overrides=OVERRIDES, use_skills=False, presets=False, prune=False,
                               eval=EvalSettings(target=target, limit=a.limit, ppl_tokens=a.ppl_tokens,
                                                 repeats=3, threads=a.threads)))
    exp.policy = GridPolicy(exp.model_config, a.space)
    if a.last:
        done = {r["key"] for r in json.loads(a.last.read_text())["rows"] if r["status"] == "success"}
        exp.policy.todo.sort(key=lambda st: st.key() in done)  # stable: the grid's order otherwise
    exp.run()
    a.to.write_text(json.dumps(table(exp.dir), indent=1))
    print(f"wrote {a.to}")


if __name__ == "__main__":
    main()
