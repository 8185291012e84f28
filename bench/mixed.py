"""Mixed precision against uniform precision at equal bytes on disk (issue 17): SmolLM2-135M, perplexity on WikiText-2
evaluation text (the second half of its test file), for uniform W4A16 and W8A16 (llm-compressor round-to-nearest,
group 64) and for ``mixed`` at several average-bits budgets (W4A16/W8A16 per decoder Linear, allocated by measured
sensitivity). Each mixed row is set against the line between the two uniform rows at its size (perplexity
interpolated linearly in bytes): below the line, mixed beats uniform at those bytes.

    .venv/bin/python bench/mixed.py --data-dir ../shared/data [--ppl-tokens 4096] [--budgets 4.5,5,6]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--budgets", default="4.5,5,6")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    from agentic_compression import data, methods
    from agentic_compression.evaluation import bos_id
    from agentic_compression.evaluation.measure import perplexity
    from agentic_compression.loop.workers import apply_strategy
    from agentic_compression.models import load, load_tokenizer, resolve
    from agentic_compression.schemas import Step, Strategy

    torch.set_num_threads(a.threads)
    base, _ = resolve("smollm2-135m")
    tok = load_tokenizer(base)
    text = data.read_text(a.data_dir, data.WIKITEXT_EVALUATION)
    ids = tok(text, add_special_tokens=False)["input_ids"][: a.ppl_tokens]
    stats = Path(tempfile.mkdtemp()) / "statistics"  # as an experiment's: the sensitivities are measured once
    ctx = methods.Context(calibration=lambda t, n, L: data.calibration_samples(t, a.data_dir, n, L, seed=0),
                          stats=stats)
    rows = [("uniform W4A16 g64", Step(method="rtn", params={"scheme": "W4A16", "group_size": 64})),
            ("uniform W8A16 g64", Step(method="rtn", params={"scheme": "W8A16", "group_size": 64}))]
    rows += [(f"mixed avg_bits {b:g}", Step(method="mixed", params={"avg_bits": b, "group_size": 64}))
             for b in map(float, a.budgets.split(","))]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, step in rows:
            t0 = time.perf_counter()
            res = apply_strategy(Strategy(action="quantization", steps=[step]), base, Path(tmp) / label, ctx,
                                 a.threads)
            if res.error:
                raise SystemExit(f"{label}: {res.error}")
            secs = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in res.checkpoint.rglob("*.safetensors"))
            model, _ = load(res.checkpoint)
            with torch.no_grad():
                ppl = perplexity(model, ids, 1024, 512, bos_id(tok))["perplexity"]
            plan = (res.steps[0].get("measured") or {}).get("mixed")
            sens = (f"{plan['sensitivity_seconds']:.0f} s" + (" (reused)" if plan["sensitivity_reused"] else "")
                    if plan else "")
            out.append((label, size, ppl, plan["avg_bits"] if plan else float(step.params["scheme"][1]), secs, sens))
            print(f"done {label}: {size / 1e6:.1f} MB, ppl {ppl:.3f}, {secs:.0f} s", file=sys.stderr, flush=True)
    (_, s4, p4, *_), (_, s8, p8, *_) = out[:2]
    print(f"SmolLM2-135M, perplexity on {len(ids)} WikiText-2 evaluation tokens (window 1024, stride 512); weights "
          "bytes on disk (model.safetensors: the fp32 embedding and norms included)\n")
    print("| candidate | decoder-Linear bits | weights MB | ppl | uniform line at this size | mixed - line | "
          "apply s | of which sensitivities |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, size, ppl, bits, secs, sens in out:
        line = p4 + (p8 - p4) * (size - s4) / (s8 - s4)
        diff = f"{ppl - line:+.3f}" if label.startswith("mixed") else ""
        print(f"| {label} | {bits:.2f} | {size / 1e6:.1f} | {ppl:.3f} | {line:.3f} | {diff} | {secs:.0f} | {sens} |")


if __name__ == "__main__":
    main()
