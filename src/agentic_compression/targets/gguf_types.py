"""Per-tensor type allocation for llama.cpp: every weight matrix of the GGUF, the token embedding and the output head
included, gets one of the types llama.cpp stores at that matrix's row width, chosen under a bits-per-weight budget
so that the summed measured sensitivity is least (a multiple-choice knapsack, solved exactly, ``allocate``).

- **llama.cpp's own rounding.** A matrix is quantized by ``ggml_quantize_chunk`` from the binding's libggml (the
  function llama-quantize calls), with the importance of each input column where asked for (llama-imatrix's mean
  squared input over the calibration text, the matrix llama-quantize is given), and dequantized by gguf-py.
  Rows are quantized independently, so the converter's permutation of the attention rows changes nothing.
- **Measured sensitivity.** The mean next-token KL divergence of the PyTorch model from itself when only that matrix
  holds its values rounded to one type (methods/mixed.py's replay: the blocks before it are not recomputed), carried
  to the matrix's other types by their importance-weighted squared rounding errors. Summing them assumes their
  effects add up, as every such allocator does; the written file's KL divergence, measured in llama.cpp, is what a
  result reports.
- **Only types the file will hold.** A type whose block does not divide the row width is not offered for that
  matrix (llama.cpp would fall back from it: Q4_K to Q5_0 at width 576), so the allocation names only types that
  llama-quantize writes as asked; the export reads the file back and checks.
- **Bits are stored bits**: a type's bytes per block x 8 / weights per block (Q4_0 4.5, Q4_K 4.5, Q6_K 6.5625)."""
from __future__ import annotations

import ctypes
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..models.llamacpp_runtime import TYPES

SCALE = 32  # bits x 32 is a whole number for every type (Q6_K: 210; Q3_K: 110): the knapsack's integer weights


def bits(qtype: str) -> float:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return size * 8 / block


def fits(qtype: str, row: int) -> bool:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return row % GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0] == 0


@lru_cache(maxsize=1)
def _ggml():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    return lib


def rounded(weight, qtype: str, importance=None):
    """``weight`` [rows, row width] (torch, any float) as llama.cpp stores it in ``qtype`` and reads it back
    (float32), rounded with ``importance`` [row width] where given."""
    import numpy as np
    import torch
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    t = GGMLQuantizationType[qtype]
    rows, row = weight.shape
    block, size = GGML_QUANT_SIZES[t]
    src = np.ascontiguousarray(weight.detach().float().cpu().numpy())
    dst = np.empty(rows * row // block * size, dtype=np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance.detach().float().cpu().numpy())
    # rows are independent: split them over torch's threads (ctypes releases the GIL; llama-quantize also threads)
    parts = max(1, min(torch.get_num_threads(), rows // 64))
    edges = [rows * i // parts for i in range(parts + 1)]

    def chunk(i):
        return _ggml().ggml_quantize_chunk(t.value, src.ctypes.data, dst.ctypes.data, edges[i] * row,
                                           edges[i + 1] - edges[i], row, None if imp is None else imp.ctypes.data)

    with ThreadPoolExecutor(parts) as pool:
        written = sum(pool.map(chunk, range(parts)))
    if written != dst.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {qtype}, expected {dst.size}")
    return torch.from_numpy(dequantize(dst.reshape(rows, -1), t).reshape(rows, row).astype(np.float32))


def matrices(model) -> dict[str, Any]:
    """The weight matrices llama.cpp quantizes, by PyTorch name: every block Linear, the token embedding, and the
    output head when it is not tied to the embedding."""
    from ..models.architecture import of_model

    out = dict(of_model(model).block_linears(model))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    out[_name(model, emb)] = emb
    if head is not None and head.weight is not emb.weight:
        out[_name(model, head)] = head
    return out


def _name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


PROBE = "Q4_0"  # the type each matrix's KL divergence is measured at (when its width takes it)
ROWS = 512  # evenly spaced rows of a matrix on which its types' rounding errors are compared (rows are rounded
# independently, so their ratio is a mean over >= 512 x width weights: a 49k-row embedding costs 1/96 of its rows)


def sensitivities(model, windows: list[list[int]], types: tuple[str, ...], importance: dict[str, Any] | None
                  ) -> dict[str, dict[str, float]]:
    """{matrix: {type: next-token KL (nats) with only that matrix rounded to that type}}, for the types that fit its
    row width. The KL is measured at one type (PROBE, or the smallest that fits) and carried to the others by the
    ratio of their importance-weighted squared rounding errors (sum_j importance_j sum_i dW_ij^2, the second-order
    term of the divergence, which llama.cpp's rounding itself minimises) over ROWS evenly spaced rows: one forward
    per matrix, every type's error from llama.cpp's real rounding."""
    import torch

    from ..methods.mixed import _Replay, kl
    from ..models.architecture import of_model

    arch, mats = of_model(model), matrices(model)
    with torch.no_grad():
        replay = _Replay(model, torch.tensor(windows, device=model.device))
        p = torch.softmax(replay.ref, -1)
        out: dict[str, dict[str, float]] = {}
        for name, mod in mats.items():
            block = int(name[len(arch.layers) + 1:].split(".")[0]) if name.startswith(arch.layers + ".") else 0
            kept = mod.weight.data.clone()
            imp = (importance or {}).get(name)
            weight = torch.ones(kept.shape[1]) if imp is None else imp.float()
            offered = [t for t in types if fits(t, kept.shape[1])]
            probe = PROBE if PROBE in offered else min(offered, key=bits)
            rows = kept[:: max(1, kept.shape[0] // ROWS)].float()
            errors = {t: float(((rounded(rows, t, imp) - rows) ** 2 * weight).sum()) for t in offered}
            mod.weight.data = rounded(kept, probe, imp).to(kept.dtype)
            measured = kl(p, replay.ref, replay(block))
            mod.weight.data = kept
            out[name] = {t: measured * errors[t] / errors[probe] if errors[probe] > 0 else 0.0 for t in offered}
    return out


def allocate(sens: dict[str, dict[str, float]], numels: dict[str, int], budget_bits: float) -> dict[str, str]:
    """{matrix: type} minimising the summed sensitivity with the stored bits averaging at most ``budget_bits`` over
    the matrices: exact, a multiple-choice knapsack by dynamic programming over the budget (in units of the sizes'
    common divisor times each type's bits x SCALE, all whole numbers), vectorised over the budget axis. Raises
    ValueError when the smallest types the matrices offer already exceed the budget."""
    import numpy as np

    names = list(sens)
    if bare := [n for n in names if not sens[n]]:
        raise ValueError(f"no offered type fits the row width of {bare[0]}: offer a 32-weight block type (Q8_0)")
    least = sum(min(bits(t) for t in sens[n]) * numels[n] for n in names) / sum(numels[n] for n in names)
    if least > budget_bits + 1e-9:
        raise ValueError(f"avg_bits {budget_bits:g} is below {least:.3f}, the smallest types these matrices offer")
    unit = math.gcd(*(numels[n] for n in names))
    cap = math.floor(budget_bits * SCALE * sum(numels[n] for n in names) / unit + 1e-9)
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0  # best[c]: the least summed sensitivity of the matrices so far at stored weight exactly c
    picks = []
    for n in names:
        nxt, pick = np.full(cap + 1, np.inf), np.full(cap + 1, -1, dtype=np.int16)
        options = list(sens[n].items())
        for i, (t, cost) in enumerate(options):
            w = round(bits(t) * SCALE) * numels[n] // unit
            if w <= cap:
                cand = best[: cap + 1 - w] + cost
                better = cand < nxt[w:]
                nxt[w:][better], pick[w:][better] = cand[better], i
        best = nxt
        picks.append((options, pick))
    c = int(np.argmin(best))
    out = {}
    for n, (options, pick) in zip(reversed(names), reversed(picks)):
        t = options[pick[c]][0]
        out[n] = t
        c -= round(bits(t) * SCALE) * numels[n] // unit
    return {n: out[n] for n in names}


def plan(model, windows: list[list[int]], budget_bits: float, importance: dict[str, Any] | None,
         stats: Path | None = None, types: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """Sensitivities to every type (reused from ``stats`` when this model, windows and importance were measured
    before, whichever types a budget offers) and the allocation over ``types`` under the budget, with its average
    stored bits and the summed sensitivity it predicts."""
    from ..models.stats_cache import cached, tensors_digest, weights_digest, windows_digest

    t0 = time.perf_counter()
    key = {"weights": weights_digest(model), "windows": windows_digest(windows), "types": list(TYPES),
           "importance": tensors_digest(importance) if importance else None,
           "measure": f"next-token KL at {PROBE}, one matrix in llama.cpp's rounding; weighted squared error ratios "
                      f"over {ROWS} rows"}
    every, reused = cached(stats, "gguf-sensitivity", key, lambda: sensitivities(model, windows, TYPES, importance))
    sens = {n: {t: v for t, v in s.items() if t in types} for n, s in every.items()}
    seconds = time.perf_counter() - t0
    numels = {n: m.weight.numel() for n, m in matrices(model).items()}
    assignment = allocate(sens, numels, budget_bits)
    avg = sum(bits(assignment[n]) * numels[n] for n in assignment) / sum(numels.values())
    return {"types": list(types), "formats": {t: bits(t) for t in types}, "sensitivity": sens,
            "assignment": assignment, "avg_bits": avg,
            "budget_bits": budget_bits, "predicted_kl": sum(sens[n][t] for n, t in assignment.items()),
            "sensitivity_seconds": seconds, "sensitivity_reused": reused}

