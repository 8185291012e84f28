"""What acf adds around the work (issue 17): per episode, its wall time against the sum of the calls that do the
work, and the time a second episode saves by reusing the calibration statistics of the first (stats_cache.py).

Part 1 runs compression episodes on SmolLM2-135M in one process, as an experiment's workers do, with one
statistics folder: the work is loading the checkpoint (transformers), the method itself (llm-compressor's oneshot,
or our code for structured pruning and ASVD) and saving (save_pretrained); "statistics" is the part of the method
that is calibration forward passes, which a later episode on the same weights and windows reuses.
Part 2 (``--experiment DIR``) reads a finished run: each episode's wall time (started_at to finished_at) against
its compression plus its evaluation.

    .venv/bin/python bench/overhead.py --data-dir ../shared/data [--experiment experiments/RUN]

Goal: wall time at most 1.10x the work.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

EPISODES = [("structured", {"granularity": "mlp", "ratio": 0.1}),
            ("structured", {"granularity": "mlp", "ratio": 0.2}),
            ("asvd", {"rank_ratio": 0.8, "targets": "mlp"}),
            ("rtn", {"scheme": "W4A16", "group_size": 64}),
            ("gptq", {"scheme": "W4A16", "group_size": 64, "num_samples": 16})]


def timed(table: dict, label: str, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            table[label] += time.perf_counter() - t0
    return wrapper


def compression(data_dir: Path, threads: int) -> None:
    from loguru import logger  # llm-compressor's log lines, off the table on stdout

    from agentic_compression import data, methods
    from agentic_compression.loop import workers
    from agentic_compression.methods import base
    from agentic_compression.models import resolve
    from agentic_compression.schemas import Step, Strategy

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    model_dir, _ = resolve("smollm2-135m")
    calib: dict = {}

    def calibration(tok, n, L):  # the experiment's: each (n, seq_len) drawn once
        return calib.setdefault((n, L), data.calibration_samples(tok, data_dir, n, L, seed=0))

    print("| episode | method | wall s | load s | method s | of which statistics s | save s | wall / work |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    stats_s = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = methods.Context(calibration=calibration, stats=Path(tmp) / "statistics")
        for i, (name, params) in enumerate(EPISODES):
            t: dict = defaultdict(float)
            originals = (workers.load, workers.formats.save, base.forward_with_hooks, methods.get(name).apply)
            workers.load, workers.formats.save = timed(t, "load", originals[0]), timed(t, "save", originals[1])
            base.forward_with_hooks = timed(t, "statistics", originals[2])
            methods.get(name).apply = timed(t, "method", originals[3])
            try:
                t0 = time.perf_counter()
                res = workers.apply_strategy(Strategy(action="pipeline", steps=[Step(method=name, params=params)]),
                                             model_dir, Path(tmp) / f"episode_{i}", ctx, threads)
                wall = time.perf_counter() - t0
            finally:
                workers.load, workers.formats.save, base.forward_with_hooks, methods.get(name).apply = originals
            if res.error:
                raise SystemExit(f"{name}: {res.error}")
            work = t["load"] + t["method"] + t["save"]
            stats_s.append(t["statistics"])
            label = f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})"
            print(f"| {i} | {label} | {wall:.1f} | {t['load']:.1f} | {t['method']:.1f} | {t['statistics']:.1f} | "
                  f"{t['save']:.1f} | {wall / work:.3f} |", flush=True)
    print(f"\nThe second structured episode and ASVD reused the first one's input statistics: "
          f"{stats_s[0]:.1f} s of forward passes measured once, {stats_s[1]:.1f} s and {stats_s[2]:.1f} s after.")


def loop(exp: Path) -> None:
    final = json.loads((exp / "final_results.json").read_text())
    print(f"\n{exp.name}: each episode's wall time against its compression plus its evaluation\n")
    print("| episode | wall s | compress s | evaluate s | wall / work |")
    print("|---|---:|---:|---:|---:|")
    for e in final["episodes"]:
        r = json.loads((exp / e["episode_id"] / "results.json").read_text())
        wall = (datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["started_at"])).total_seconds()
        ev = (r.get("result") or {}).get("eval_seconds", 0.0)
        print(f"| {e['episode_id']} | {wall:.0f} | {r['compress_seconds']:.0f} | {ev:.0f} | "
              f"{wall / (r['compress_seconds'] + ev):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experiment", type=Path, help="also read this finished run's episodes")
    a = ap.parse_args()
    compression(a.data_dir, a.threads)
    if a.experiment:
        loop(a.experiment)


if __name__ == "__main__":
    main()
