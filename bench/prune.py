"""What early abort saves (issue 33): the same wrecked candidates evaluated with pruning (the default) and in full
(--no-prune), on SmolLM2-135M in transformers, through the real loop.

    .venv/bin/python bench/prune.py [--data-dir ../shared/data] [--out /tmp/acf-prune]

Two experiments with the same scripted episodes (ASVD keeping 80% of the MLP rank and 50% magnitude pruning: the
project's own measurements give them 290x and 27x the baseline's perplexity) and default evaluation settings; the
second finds the baseline's evaluation in the cache. Prints each episode's status and evaluation seconds (a pruned
one's from its `pruned` record, a full one's from its result) and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from agentic_compression.schemas import Step, Strategy  # noqa: E402

STEPS = [("asvd", Step(method="asvd", params={"rank_ratio": 0.8, "targets": "mlp"})),
         ("pruning", Step(method="magnitude", params={"sparsity": 0.5, "mask_structure": "unstructured"}))]


class Script:
    name = "script"

    def __init__(self):
        self.todo = [Strategy(action=a, steps=[s], policy=self.name, reasoning="bench") for a, s in STEPS]

    def decide(self, view):
        return self.todo.pop(0) if self.todo else Strategy(action="end", reasoning="done", policy=self.name)


def run(out: Path, data_dir: Path, prune: bool) -> list[dict]:
    from agentic_compression.config import EvalSettings, RunConfig
    from agentic_compression.loop.experiment import Experiment

    exp = Experiment(RunConfig(model="smollm2-135m", data_dir=data_dir, output_dir=out,
                               experiment="prune" if prune else "full", max_episodes=len(STEPS),
                               eval=EvalSettings(target="transformers"), presets=False, use_skills=False,
                               prune=prune))
    exp.policy = Script()
    exp.run()
    rows = []
    for ep in sorted(exp.dir.glob("episode_*/results.json")):
        r = json.loads(ep.read_text())
        seconds = r["pruned"]["eval_seconds"] if r["status"] == "pruned" else (r["result"] or {}).get("eval_seconds")
        ppl = r["pruned"]["perplexity"] if r["status"] == "pruned" else (r["result"] or {}).get("perplexity")
        rows.append({"episode": r["episode_id"], "strategy": r["strategy"]["steps"][0]["method"],
                     "status": r["status"], "eval_seconds": seconds, "perplexity": ppl})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/acf-prune"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pruned, full = run(a.out, a.data_dir, True), run(a.out, a.data_dir, False)
    print(f"{'episode':12} {'strategy':10} {'pruned run':>22} {'full run':>22} {'ratio':>6}")
    for p, f in zip(pruned, full):
        ratio = p["eval_seconds"] / f["eval_seconds"] if p["eval_seconds"] and f["eval_seconds"] else float("nan")
        print(f"{p['episode']:12} {p['strategy']:10} {p['status']:>8} {p['eval_seconds']:8.1f} s ppl "
              f"{p['perplexity']:<7.4g} {f['status']:>8} {f['eval_seconds']:8.1f} s ppl {f['perplexity']:<7.4g} "
              f"{ratio:6.2f}")


if __name__ == "__main__":
    main()
