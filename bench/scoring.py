"""The scoring passes of one evaluation, timed alone: perplexity over the default windows and the benchmarks through
lm-eval, on one exported checkpoint in its runtime, as the evaluation process runs them. Run it with two versions of
acf on the same machine (PYTHONPATH=<their src>), alternating, to compare their scoring time; the scores printed
must agree.

    .venv/bin/python bench/scoring.py --checkpoint EXP/presets/llamacpp-Q4_K_M/checkpoint --target llamacpp \\
        --data-dir ../shared/data [--limit 100] [--ppl-tokens 4096] [--threads 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--target", default="llamacpp")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--benchmark", default="hellaswag")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import torch

    from agentic_compression import benchmarks, targets
    from agentic_compression.config import EvalSettings
    from agentic_compression.data import read_text
    from agentic_compression.evaluation import measure
    from agentic_compression.models import load_tokenizer

    torch.set_num_threads(a.threads)
    s = EvalSettings(target=a.target, benchmark=a.benchmark, limit=a.limit, ppl_tokens=a.ppl_tokens,
                     threads=a.threads)
    tok = load_tokenizer(a.checkpoint)
    ids = tok(read_text(a.data_dir, s.ppl_text), add_special_tokens=False)["input_ids"][: s.ppl_tokens]
    target = targets.get(a.target)
    with tempfile.TemporaryDirectory() as tmp:
        built = benchmarks.build(a.data_dir, a.benchmark, a.limit, s.seed, Path(tmp))
        task = [{"name": a.benchmark, "task": built.task, "metric": benchmarks.get(a.benchmark).metric}]
        for r in range(a.repeats):
            model = target.scoring(target.load(a.checkpoint, s), s)
            with torch.no_grad():
                t = time.perf_counter()
                ppl = measure.perplexity(model, ids, s.ppl_window, s.ppl_stride)
                t_ppl = time.perf_counter() - t
                t = time.perf_counter()
                acc = measure.accuracy(target.lm(model, tok, s, None), Path(tmp), task, s.seed)[a.benchmark]
                t_acc = time.perf_counter() - t
            getattr(model, "close", lambda: None)()
            print(f"repeat {r}: perplexity {ppl['perplexity']:.4f} over {ppl['tokens']} tokens in {t_ppl:.1f} s; "
                  f"{a.benchmark} {acc['value']:.3f} (n={acc['n']}) in {t_acc:.1f} s", flush=True)


if __name__ == "__main__":
    main()
