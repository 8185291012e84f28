"""SmolLM2-135M in every CPU runtime acf measures in, through acf's own export and evaluator: decode time per token,
peak memory over the runtime, file size, real bits per weight, perplexity, and the decode time against the bandwidth
bound (the bytes a decode step reads, here the weights, over the read bandwidth measured in this run).

Every row is timed beside transformers fp32 (paired, step by step): its ratio to transformers is measured side by
side, and its absolute time is that ratio times transformers' own median.

    .venv/bin/python bench/runtimes.py --data-dir ../shared/data [--limit 50] [--threads 2]

Goals (issue 13), on this CPU: the best 4-bit row decodes at least 4x faster than transformers fp32 with at most 0.3x
its peak memory; every f32 export's perplexity equals transformers fp32 within 0.5%; the fastest 4-bit row decodes
within 2x of its bandwidth bound.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

ROWS = [("transformers", None, None), ("llamacpp", None, None), ("llamacpp", "gguf", {"type": "Q8_0"}),
        ("llamacpp", "gguf", {"type": "Q4_K_M"}), ("llamacpp", "gguf", {"type": "Q4_0"}),
        ("ortgenai", None, None), ("ortgenai", "ort", {"precision": "int8"}),
        ("ortgenai", "ort", {"precision": "int4", "block_size": 32}),
        # llm-compressor's GPTQ on the PyTorch side, its integers rewritten for the builder (head kept fp32)
        ("ortgenai", "gptq", {"scheme": "W4A16", "group_size": 32})]


def bandwidth_gb_s(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth: the best of ``repeats`` sums over an out-of-cache fp32 tensor."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mb * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=50, help="hellaswag items (accuracy is not this table's point)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from agentic_compression import methods, targets
    from agentic_compression.config import EvalSettings
    from agentic_compression.data import calibration_samples
    from agentic_compression.evaluation import Evaluator
    from agentic_compression.loop.workers import apply_strategy
    from agentic_compression.models import load_tokenizer, resolve
    from agentic_compression.schemas import Step, Strategy

    base, _ = resolve("smollm2-135m")
    tok = load_tokenizer(base)
    ctx = methods.Context(calibration=lambda tk, n, L: calibration_samples(tk, a.data_dir, n, L, seed=0))
    bw = bandwidth_gb_s(a.threads)
    s = EvalSettings(target="transformers", limit=a.limit, threads=a.threads, decode_tokens=64, repeats=3,
                     ppl_tokens=1024, cache=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="acf-runtimes-") as tmp:
        ref = Evaluator(s, a.data_dir, tok, Path(tmp)).evaluate(base)
        for i, (name, method, params) in enumerate(ROWS):
            t = targets.ready(name)
            ckpt = base
            if name != "transformers":
                ckpt = Path(tmp) / f"row{i}"
                step = Step(method=method, params=params) if method else None
                if step and not methods.get(method).final:  # a PyTorch-side method, exported as acf's episodes do
                    done = apply_strategy(Strategy(action="quantization", steps=[step]), base, ckpt, ctx, target=t)
                    assert done.error is None, done.error
                else:
                    t.export(base, ckpt, step, ctx)
            r = ref
            if name != "transformers":
                ev = Evaluator(s.model_copy(update={"target": name}), a.data_dir, tok, Path(tmp))
                ev.pair_first_with(base, "transformers")
                r = ev.evaluate(ckpt)
            pair = r.latency.get("paired") or {"ratio": 1.0, "ci": None}
            ms = pair["ratio"] * ref.latency_ms
            fmt = r.runtime.get("type", "fp32") + (f" ({method})" if method and method not in ("gguf", "ort") else "")
            bpw = r.runtime.get("bits_per_weight", 32.0)
            bound_ms = r.size_bytes / (bw * 1e9) * 1e3
            rows.append({"row": f"{t.runtime} {fmt}", "ms": ms, "ratio": pair["ratio"], "ci": pair["ci"],
                         "mib": r.memory_gb * 1e9 / 2**20, "mb": r.size_bytes / 1e6, "bpw": bpw,
                         "ppl": r.perplexity, "acc": r.accuracy, "bound": bound_ms, "mem_ratio": r.memory_gb /
                         ref.memory_gb})
    print(f"read bandwidth, {a.threads} threads: {bw:.1f} GB/s; transformers fp32 decode median "
          f"{ref.latency_ms:.1f} ms/token; {s.prompt_tokens}-token prompt, {s.decode_tokens} greedy tokens, "
          f"{s.repeats} paired rounds; perplexity on {s.ppl_tokens} WikiText-2 tokens; hellaswag n={a.limit}\n")
    print("| runtime / format | decode ms/token | x transformers (95% CI) | peak MiB over runtime | file MB | "
          "bits/weight | ppl | hellaswag | bound ms | decode / bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ci = f" ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})" if r["ci"] else ""
        print(f"| {r['row']} | {r['ms']:.1f} | {r['ratio']:.3f}{ci} | {r['mib']:.0f} | {r['mb']:.0f} | "
              f"{r['bpw']:.2f} | {r['ppl']:.2f} | {r['acc']:.3f} | {r['bound']:.2f} | {r['ms'] / r['bound']:.1f} |")
    four = [r for r in rows if r["bpw"] < 6.5]
    for r in sorted(four, key=lambda r: r["ms"]):
        met = 1 / r["ratio"] >= 4 and r["mem_ratio"] <= 0.3
        print(f"4-bit row {r['row']}: {1 / r['ratio']:.1f}x faster than transformers fp32 (goal >= 4x), "
              f"{r['mem_ratio']:.2f}x its peak memory (goal <= 0.3x){': both met' if met else ''}")
    fastest = min(four, key=lambda r: r["ms"])
    print(f"fastest 4-bit row ({fastest['row']}): {fastest['ms'] / fastest['bound']:.1f}x its bandwidth bound "
          "(goal <= 2x)")
    f32 = [r for r in rows if r["bpw"] > 31]
    worst = max(abs(r["ppl"] / rows[0]["ppl"] - 1) for r in f32)
    print(f"f32 exports' perplexity vs transformers fp32: at most {worst:.3%} apart (goal <= 0.5%)")


if __name__ == "__main__":
    main()
