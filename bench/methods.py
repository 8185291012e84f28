"""Every available compression method on one model: wall time, size on disk, parameters, WikiText-2 perplexity.

    .venv/bin/python bench/methods.py --model smollm2-135m --data-dir ../shared/data [--only gptq,rtn] \
        [--ppl-tokens 4096]

Each case (one method, or a pipeline of steps) runs through the workers' apply_strategy; its checkpoint is
saved, reloaded from disk, and scored on the same evaluation-half tokens (the calibration
windows come from the other half). Prints a Markdown table."""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from agentic_compression import data, methods, models
from agentic_compression.evaluation.measure import perplexity
from agentic_compression.formats import logical_params
from agentic_compression.loop.workers import apply_strategy
from agentic_compression.schemas import Step, Strategy

# each case is a list of (method, params) steps; group size 64 because SmolLM2's width 576 is not a multiple of 128
CASES = [
    [("rtn", {"scheme": "W8A8", "group_size": None})],
    [("rtn", {"scheme": "W4A16", "group_size": 64})],
    [("gptq", {"scheme": "W4A16", "group_size": 64})],
    [("awq", {"scheme": "W4A16", "group_size": 64})],
    [("autoround", {"scheme": "W4A16", "group_size": 64})],
    [("bnb", {"mode": "int8"})],
    [("bnb", {"mode": "nf4"})],
    [("asvd", {"rank_ratio": 0.8, "alpha": 0.5, "targets": "mlp"})],
    [("asvd", {"rank_ratio": 0.8, "alpha": 0.0, "targets": "mlp"})],  # plain SVD at the same ranks
    [("magnitude", {"sparsity": 0.5})],
    [("wanda", {"sparsity": 0.5})],
    [("sparsegpt", {"sparsity": 0.5})],
    [("sparsegpt", {"sparsity": 0.5, "mask_structure": "2:4"})],
    [("structured", {"granularity": "mlp", "ratio": 0.1})],
    [("structured", {"granularity": "layer", "ratio": 0.1})],
    [("qlora", {"steps": 30})],
    [("structured", {"granularity": "mlp", "ratio": 0.2}), ("distill", {"steps": 30})],
    [("wanda", {"sparsity": 0.5}), ("lora", {"steps": 30})],
    [("gptq", {"scheme": "W4A16", "group_size": 64}), ("lora", {"steps": 30})],
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--only", help="comma-separated method names")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base, _ = models.resolve(a.model)
    _, tok = models.load(base)
    ids = tok(data.wikitext_halves(a.data_dir)[1], add_special_tokens=False)["input_ids"][: a.ppl_tokens]
    calib = {}

    def calibration(tokenizer, n, seq_len):
        if (n, seq_len) not in calib:
            calib[(n, seq_len)] = data.calibration_samples(tokenizer, a.data_dir, n, seq_len, seed=0)
        return calib[(n, seq_len)]

    ctx = methods.Context(calibration=calibration, extras={"teacher": base})

    def measure(path: Path) -> dict:
        model, _ = models.load(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return {"size": size, "params": logical_params(model),
                "ppl": perplexity(model, ids, 512, 256)["perplexity"]}

    ref = measure(base)
    rows = [("baseline (fp32)", "", 0.0, ref)]
    only = set(a.only.split(",")) if a.only else None
    avail = methods.available_methods()
    for case in CASES:
        names = [m for m, _ in case]
        label = " -> ".join(names)
        params = "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for _, p in case)
        if (only and not only & set(names)) or not set(names) <= set(avail):
            continue
        work = Path(tempfile.mkdtemp(prefix="acf-bench-"))
        try:
            t = time.perf_counter()
            res = apply_strategy(Strategy(action="pipeline", steps=[Step(method=m, params=p) for m, p in case]),
                                 base, work / "ckpt", ctx)
            seconds = time.perf_counter() - t
            rows.append((label, params, seconds, measure(res.checkpoint) if res.checkpoint else
                         {"error": res.error.splitlines()[0]}))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"done {label} {params}", flush=True)

    print(f"\n{a.model}, WikiText-2 evaluation half, {len(ids)} tokens, window 512 / stride 256, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| method | parameters | wall s | size MB | size vs base | params (M) | perplexity | ppl vs base |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, params, s, r in rows:
        if "error" in r:
            print(f"| {name} | {params} | failed | | | | {r['error'][:80]} | |")
            continue
        print(f"| {name} | {params} | {s:.1f} | {r['size'] / 1e6:.1f} | {r['size'] / ref['size']:.3f} | "
              f"{r['params'] / 1e6:.2f} | {r['ppl']:.2f} | {r['ppl'] / ref['ppl']:.3f} |")


if __name__ == "__main__":
    main()
