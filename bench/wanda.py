"""acf's Wanda (norms of the incoming checkpoint, measured once and reusable across sparsities) against
llm-compressor's WandaPruningModifier (norms measured layer by layer through the layers it has already pruned), on
SmolLM2-135M: perplexity on WikiText-2 evaluation text and the time each takes, at each sparsity and 2:4. Both use the
same calibration windows (64 x 256 tokens, seed 0).

    .venv/bin/python bench/wanda.py --data-dir ../shared/data [--ppl-tokens 4096]
"""
from __future__ import annotations

import argparse
import copy
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
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from agentic_compression import data, methods
    from agentic_compression.evaluation import bos_id
    from agentic_compression.evaluation.measure import perplexity
    from agentic_compression.methods.llmcompressor_quant import calibration_dataset
    from agentic_compression.methods.pruning import _ignore
    from agentic_compression.models import load, resolve

    torch.set_num_threads(a.threads)
    path, _ = resolve("smollm2-135m")
    dense, tok = load(path)
    ids = tok(data.read_text(a.data_dir, data.WIKITEXT_EVALUATION), add_special_tokens=False)["input_ids"]
    ids = ids[: a.ppl_tokens]
    ctx = methods.Context(calibration=lambda t, n, L: data.calibration_samples(t, a.data_dir, n, L, seed=0),
                          stats=Path(tempfile.mkdtemp()) / "statistics")
    calib = {"num_samples": 64, "seq_len": 256}

    def ppl(model) -> float:
        with torch.no_grad():
            return perplexity(model, ids, 1024, 512, bos_id(tok))["perplexity"]

    print(f"done dense: ppl {ppl(dense):.3f}", file=sys.stderr, flush=True)
    rows = []
    for sparsity, structure in [(0.3, "unstructured"), (0.5, "unstructured"), (0.5, "2:4")]:
        p = {"sparsity": sparsity, "mask_structure": structure, **calib}
        t0 = time.perf_counter()
        ours = methods.get("wanda")().apply(copy.deepcopy(dense), tok, p, ctx)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = copy.deepcopy(dense)
        oneshot(model=theirs, recipe=WandaPruningModifier(
            sparsity=sparsity, mask_structure="0:0" if structure == "unstructured" else structure,
            targets=["Linear"], ignore=_ignore(theirs)), **calibration_dataset(tok, p, ctx))
        t_theirs = time.perf_counter() - t0
        rows.append((f"{sparsity:g} {structure}", ppl(ours), t_ours, ppl(theirs), t_theirs))
        print(f"done {rows[-1]}", file=sys.stderr, flush=True)
    print(f"SmolLM2-135M, perplexity on {len(ids)} WikiText-2 evaluation tokens (window 1024, stride 512); dense "
          f"{ppl(dense):.3f}\n")
    print("| sparsity | acf wanda ppl | acf s | llm-compressor wanda ppl | llm-compressor s |")
    print("|---|---:|---:|---:|---:|")
    for label, p1, t1, p2, t2 in rows:
        print(f"| {label} | {p1:.3f} | {t1:.0f} | {p2:.3f} | {t2:.0f} |")


if __name__ == "__main__":
    main()
