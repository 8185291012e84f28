"""The noise drill: the same 4 compressed candidates of SmolLM2-135M measured twice through acf's evaluator, once
on a quiet machine and once beside a load generator (busy processes switching on and off at seeded random times,
stopping by themselves). Prints, per candidate, the paired latency ratio in both runs, the unpaired one (raw median
over the baseline's raw median of that run), and frontier membership in both runs.

    .venv/bin/python bench/noise_drill.py --data-dir ../shared/data [--seed 7] [--burners 2] [--limit 50]

Goal (issue 15): paired ratios agree within 10% between the runs and membership is identical, where unpaired
medians differ by up to 3x. The last column is the paired ratio as estimated before the quieter-half rule
(measure.quiet_half), from the same steps.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

STRATEGIES = [("rtn", {"scheme": "W8A16", "group_size": 64}), ("rtn", {"scheme": "W4A16", "group_size": 64}),
              ("bnb", {"mode": "nf4"}), ("structured", {"granularity": "mlp", "ratio": 0.2})]
LOADER = """
import random, sys, time
rng, end = random.Random(int(sys.argv[1])), time.time() + float(sys.argv[2])
while time.time() < end:
    busy_until = time.time() + rng.uniform(0.5, 4.0)
    while time.time() < min(busy_until, end):
        pass
    time.sleep(min(rng.uniform(0.5, 4.0), max(0.0, end - time.time())))
"""


def compress(out: Path, data_dir: Path) -> tuple[Path, list[Path]]:
    from agentic_compression import formats, methods
    from agentic_compression.data import calibration_samples
    from agentic_compression.models import load, resolve

    base, _ = resolve("smollm2-135m")
    ctx = methods.Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0))
    paths = []
    for i, (name, params) in enumerate(STRATEGIES):
        model, tok = load(base)
        m = methods.get(name)()
        paths.append(out / f"c{i}")
        formats.save(m.apply(model, tok, params, ctx), tok, paths[-1])
    return base, paths


def measure(base: Path, cands: list[Path], data_dir: Path, work: Path, limit: int) -> list:
    from agentic_compression.config import EvalSettings
    from agentic_compression.evaluation import Evaluator
    from agentic_compression.models import load_tokenizer

    s = EvalSettings(target="transformers", benchmark="hellaswag", limit=limit, ppl_tokens=1024, cache=False)
    ev = Evaluator(s, data_dir, load_tokenizer(base), work)
    return [ev.evaluate(base)] + [ev.evaluate(c) for c in cands]


def frontier(results) -> list[bool]:
    from agentic_compression.loop.pareto import ParetoFrontier
    from agentic_compression.schemas import ParetoSolution, Strategy

    f = ParetoFrontier(baseline=results[0].objectives())
    for i, r in enumerate(results):
        f.add(ParetoSolution(episode_id=str(i), objectives=r.objectives(), intervals=r.intervals,
                             strategy=Strategy(action="pipeline")))
    members = {s.episode_id for s in f.solutions}
    return [str(i) in members for i in range(len(results))]


def all_steps(lat: dict) -> float:
    """The paired ratio as estimated before the quieter-half rule: each run's median step over the baseline's in
    that run, every step counted (the geometric mean over the runs, as pair_stats combines them)."""
    import math
    import statistics

    runs = zip(lat["run_steps"], lat["paired"]["baseline_run_steps"])
    return math.exp(statistics.fmean(math.log(statistics.median(c) / statistics.median(b)) for c, b in runs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--burners", type=int, default=2, help="busy processes of the load generator")
    ap.add_argument("--limit", type=int, default=50)
    a = ap.parse_args()
    print(f"load generator seed {a.seed}, {a.burners} process(es), busy and idle spells of 0.5-4 s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, cands = compress(tmp, a.data_dir)
        t0 = time.time()
        quiet = measure(base, cands, a.data_dir, tmp, a.limit)
        quiet_s = time.time() - t0
        loaders = [subprocess.Popen([sys.executable, "-c", LOADER, str(a.seed + i), str(quiet_s * 3 + 120)])
                   for i in range(a.burners)]
        try:
            t0 = time.time()
            loaded = measure(base, cands, a.data_dir, tmp, a.limit)
            loaded_s = time.time() - t0
        finally:
            for p in loaders:
                p.kill()
                p.wait()
    print(f"quiet run {quiet_s:.0f} s, loaded run {loaded_s:.0f} s; baseline raw decode "
          f"{quiet[0].latency['decode_ms_per_token']['median']:.1f} vs "
          f"{loaded[0].latency['decode_ms_per_token']['median']:.1f} ms/token")
    fq, fl = frontier(quiet), frontier(loaded)
    print(f"{'candidate':<34} {'paired quiet':>13} {'paired loaded':>14} {'agree':>6} {'unpaired quiet':>15} "
          f"{'unpaired loaded':>16} {'frontier q/l':>13} {'all-steps q/l (agree)':>22}")
    for i, (name, params) in enumerate(STRATEGIES, start=1):
        q, ld = quiet[i].latency, loaded[i].latency
        pq, pl = q["paired"]["ratio"], ld["paired"]["ratio"]
        uq = q["decode_ms_per_token"]["median"] / quiet[0].latency["decode_ms_per_token"]["median"]
        ul = ld["decode_ms_per_token"]["median"] / loaded[0].latency["decode_ms_per_token"]["median"]
        label = f"{name} {','.join(f'{k}={v}' for k, v in params.items())}"
        aq, al = all_steps(q), all_steps(ld)
        print(f"{label:<34} {pq:>13.3f} {pl:>14.3f} {abs(pl / pq - 1):>6.1%} {uq:>15.3f} {ul:>16.3f} "
              f"{('yes' if fq[i] else 'no') + '/' + ('yes' if fl[i] else 'no'):>13} "
              f"{f'{aq:.3f}/{al:.3f} ({abs(al / aq - 1):.1%})':>22}")
    cost = [r.latency["paired"]["extra_s"] / r.eval_seconds for r in quiet[1:] + loaded[1:]]
    print(f"baseline on the frontier: {fq[0]}/{fl[0]}; membership identical: {fq == fl}; pairing cost "
          f"{min(cost):.1%}-{max(cost):.1%} of an evaluation")


if __name__ == "__main__":
    main()
