"""Episodes per hour with one episode at a time (K=1, in the driver) and with two at once (K=2, each a Ray task on an
embedded local cluster), on SmolLM2-135M, the same 6 cheap strategies, 1 thread per episode, no evaluation cache.
Prints both rates, their ratio (goal >= 1.6x on 2 CPUs) and whether the two runs' frontiers hold the same
strategies.

    .venv/bin/python bench/parallel.py --data-dir ../shared/data [--limit 50]
"""
import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from agentic_compression.config import EvalSettings, RunConfig
from agentic_compression.loop.experiment import Experiment
from agentic_compression.schemas import Step, Strategy

STEPS = [Step(method="rtn", params={"scheme": "W8A16", "group_size": 64}),
         Step(method="rtn", params={"scheme": "W4A16", "group_size": 64}),
         Step(method="bnb", params={"mode": "int8", "double_quant": False}),
         Step(method="bnb", params={"mode": "nf4", "double_quant": False}),
         Step(method="magnitude", params={"sparsity": 0.5, "mask_structure": "unstructured"}),
         Step(method="structured", params={"granularity": "mlp", "ratio": 0.1, "num_samples": 8, "seq_len": 256})]


class Fixed:
    """The 6 strategies in order: both runs measure the same candidates."""

    name = "fixed"

    def __init__(self):
        self.left = list(STEPS)

    def decide(self, view):
        while self.left:
            step = self.left.pop(0)
            st = Strategy(action=view.methods[step.method].action, steps=[view.step(step.method, step.params)],
                          policy=self.name)
            if st.key() not in view.tried:
                return st
        return Strategy(action="end", reasoning="the 6 strategies ran", policy=self.name)


def run(k: int, args, out: Path) -> dict:
    ev = EvalSettings(target="transformers", limit=args.limit, ppl_tokens=1024, repeats=3, threads=1, cache=False)
    cfg = RunConfig(model="smollm2-135m", dataset="hellaswag", data_dir=args.data_dir, output_dir=out,
                    experiment=f"k{k}", eval=ev, threads=1, max_episodes=len(STEPS), patience=99, parallel=k,
                    use_skills=False)
    exp = Experiment(cfg)
    exp.policy = Fixed()
    t = time.perf_counter()
    final = exp.run()
    wall = time.perf_counter() - t
    results = [json.loads((out / f"k{k}" / e["episode_id"] / "results.json").read_text()) for e in final["episodes"]]
    start = min(datetime.fromisoformat(r["started_at"]) for r in results)
    end = max(datetime.fromisoformat(r["finished_at"]) for r in results)
    loop = (end - start).total_seconds()
    frontier = sorted(json.dumps(next(e["steps"] for e in final["episodes"] if e["episode_id"] == i), sort_keys=True)
                      for i in final["pareto_frontier"] if i.startswith("episode"))
    print(f"K={k}: {len(results)} episodes ({sum(r['status'] == 'success' for r in results)} succeeded) in "
          f"{loop:.0f} s from the first start to the last finish ({len(results) / loop * 3600:.1f} episodes/hour); "
          f"whole run with the baseline {wall:.0f} s; frontier: {list(final['pareto_frontier'])}", flush=True)
    return {"rate": len(results) / loop * 3600, "frontier": frontier, "final": final}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--limit", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="acf-bench-parallel-") as tmp:
        one, two = run(1, args, Path(tmp)), run(2, args, Path(tmp))
    print(f"episodes per hour: K=1 {one['rate']:.1f}, K=2 {two['rate']:.1f}, ratio {two['rate'] / one['rate']:.2f}x "
          f"(goal >= 1.6x)")
    print(f"same frontier strategies: {one['frontier'] == two['frontier']}")
    for a, b in zip(one["final"]["episodes"], two["final"]["episodes"]):
        oa, ob = a["objectives"] or {}, b["objectives"] or {}
        print(f"  {a['episode_id']} {a['steps'][0]['method']:10s} {json.dumps(a['steps'][0]['params'])[:60]:60s} "
              f"acc {oa.get('accuracy', float('nan')):.3f}/{ob.get('accuracy', float('nan')):.3f} "
              f"latency x{(a['relative'] or {}).get('latency_ms', float('nan')):.2f}/"
              f"x{(b['relative'] or {}).get('latency_ms', float('nan')):.2f}")


if __name__ == "__main__":
    main()
