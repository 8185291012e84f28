"""Evaluation throughput: tokens scored per second by the accuracy evaluation (lm-eval on the in-memory model,
our task YAMLs over local files) against the raw forward throughput of the same model on the same token rows,
in batches of the same size. Target: overhead <= 20%.

    .venv/bin/python bench/eval_throughput.py [--model smollm2-135m] [--benchmark hellaswag] [--limit 40]
                                              [--threads N] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--benchmark", default="hellaswag")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("ACF_DATA_DIR", REPO.parent / "shared" / "data")))
    a = ap.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    from agentic_compression import benchmarks
    from agentic_compression.evaluation import measure
    from agentic_compression.models import load, resolve

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load(resolve(a.model)[0])
    with tempfile.TemporaryDirectory() as tmp:
        built = benchmarks.build(a.data_dir, a.benchmark, a.limit, 1234, Path(tmp))
        task = {"name": a.benchmark, "task": built.task, "metric": built.benchmark.metric}

        # the rows lm-eval will score, tokenised as HFLM does (context + continuation, truncated from the left)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=a.batch_size)
        tasks = get_task_dict([built.task], TaskManager(include_path=tmp, include_defaults=False))
        leaves = [t for t in tasks.values() if not isinstance(t, dict)] or \
                 [t for d in tasks.values() if isinstance(d, dict) for t in d.values()]
        rows = []
        for t in leaves:
            t.build_all_requests(rank=0, world_size=1)
            for inst in t.instances:
                ctx, cont = inst.arguments
                ids = (lm.tok_encode(ctx) + lm.tok_encode(cont))[-(lm.max_length + 1):][:-1]
                rows.append(ids)
        scored = sum(len(r) for r in rows)

        t0 = time.perf_counter()
        res = measure.accuracy(lm, Path(tmp), [task], 1234)
        t_eval = time.perf_counter() - t0

        rows.sort(key=len, reverse=True)  # as lm-eval's collator does: longest first, similar lengths batched
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), a.batch_size):
                batch = rows[i:i + a.batch_size]
                width = max(len(r) for r in batch)
                x = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
                model(input_ids=x).logits.log_softmax(-1)
        t_raw = time.perf_counter() - t0

    print("| benchmark | items | rows | tokens | threads | lm-eval s | raw forward s | lm-eval tok/s | raw tok/s "
          "| overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.benchmark} | {built.n_items} | {len(rows)} | {scored} | {torch.get_num_threads()} | {t_eval:.1f} | "
          f"{t_raw:.1f} | {scored / t_eval:.0f} | {scored / t_raw:.0f} | {100 * (t_eval / t_raw - 1):+.0f}% |")
    print(f"\n{a.benchmark}: {res[a.benchmark]['metric']} = {res[a.benchmark]['value']:.3f} "
          f"(n={res[a.benchmark]['n']})")


if __name__ == "__main__":
    main()
