"""Mixed precision by measured sensitivity, under an average-bits budget.

Each decoder Linear's sensitivity to a format is measured on the calibration text: the mean KL divergence of the
model's next-token distribution when only that layer's weights are rounded to the format (compressed-tensors'
symmetric rounding: scale = absmax / ((2^bits - 1) / 2)), every other layer kept as it is. The formats are then
allocated exactly under the budget: the summed sensitivity is minimised subject to the stored weight bits of the
decoder Linears averaging at most ``avg_bits`` (a multiple-choice knapsack, solved by dynamic programming over the
budget in units of the layers' common size, as AutoScheme and ModelOpt's auto_quantize allocate). llm-compressor
then applies the allocation as one QuantizationModifier with one config group per format, each naming its layers:
the checkpoint is compressed-tensors, reloads in transformers and can be served by vLLM.

Summing per-layer KLs assumes their effects add up, which holds to first order (small perturbations); the
benchmark in bench/mixed.py says whether the result beats uniform precision at equal bytes."""
from __future__ import annotations

import math
import time
from functools import reduce
from pathlib import Path
from typing import Any

from ..models.architecture import of_model
from ..models.stats_cache import cached, weights_digest, windows_digest
from .base import Context, Method, Param, register
from .llmcompressor_quant import _scheme, group_problem

FORMATS = {"W4A16": 4, "W8A16": 8}  # what is mixed: the weight bits of each (group-wise int, activations in fp)
MAX_UNITS = 2_000_000  # the knapsack's budget axis; beyond it the unit is coarsened (and the result approximate)


def allocate(numels: list[int], costs: list[list[float]], bits: list[int], avg_bits: float) -> list[int]:
    """Per layer, the index of its format: the choice minimising sum(costs[i][f]) with sum(bits[f] * numels[i]) at
    most avg_bits * sum(numels). Exact (dynamic programming over the budget in units of the sizes' common divisor).
    Raises ValueError when even the smallest format of every layer exceeds the budget."""
    total = sum(numels)
    unit = reduce(math.gcd, numels)
    while total * max(bits) // unit > MAX_UNITS:
        unit *= 2
    w = [[b * math.ceil(n / unit) for b in bits] for n in numels]
    cap = math.floor(avg_bits * total / unit + 1e-9)
    if sum(min(row) for row in w) > cap:
        raise ValueError(f"avg_bits {avg_bits:g} is below the smallest format's {min(bits)} bits")
    inf = float("inf")
    best = [0.0] + [inf] * cap  # best[c]: the least summed cost of the layers so far at total weight exactly c
    choice: list[list[int]] = []
    for i, row in enumerate(w):
        nxt, pick = [inf] * (cap + 1), [-1] * (cap + 1)
        for f, wf in enumerate(row):
            cost = costs[i][f]
            for c in range(wf, cap + 1):
                v = best[c - wf] + cost
                if v < nxt[c]:
                    nxt[c], pick[c] = v, f
        best = nxt
        choice.append(pick)
    c = min(range(cap + 1), key=lambda k: best[k])
    out = []
    for i in reversed(range(len(w))):
        f = choice[i][c]
        out.append(f)
        c -= w[i][f]
    return out[::-1]


def fake_quant(weight, bits: int, group_size: int | None):
    """compressed-tensors' symmetric int rounding of a weight matrix, per group of ``group_size`` inputs (None: per
    output channel), returned dequantized."""
    import torch

    out_f, in_f = weight.shape
    g = group_size or in_f
    w = weight.reshape(out_f, in_f // g, g)
    q_max, q_min = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    scale = (w.abs().amax(-1, keepdim=True) / ((2 ** bits - 1) / 2)).clamp_min(torch.finfo(w.dtype).tiny)
    return (torch.clamp(torch.round(w / scale), q_min, q_max) * scale).reshape(out_f, in_f)


def kl(p, ref_logits, logits):
    """Mean KL(p || q) over positions, q = softmax(logits), p = softmax(ref_logits) given as ``p``; computed from the
    logit differences d as log(sum p e^d) - sum p d, with expm1/log1p, so that float32 resolves KLs of 1e-9.
    ``logits`` is used up (overwritten in place: a [positions, vocabulary] array is 100 MB per copy)."""
    import torch

    d = logits.float().sub_(ref_logits).clamp_(-80, 80)
    pd = (p * d).sum(-1)
    return (torch.log1p(d.expm1_().mul_(p).sum(-1)) - pd).mean().item()


class _Replay:
    """Forwards that skip the decoder blocks before the one perturbed: each block's output on the windows is kept
    from the reference forward and returned as it was (whatever type the family's block returns). Checked once:
    replaying every block but the last must reproduce the reference logits exactly, else every forward runs in
    full."""

    def __init__(self, model, ids):
        import torch

        self.model, self.ids, self.blocks, self.outputs = model, ids, of_model(model).blocks(model), {}
        hooks = [b.register_forward_hook(lambda m, a, out, i=i: self.outputs.__setitem__(i, out))
                 for i, b in enumerate(self.blocks)]
        try:
            self.ref = model(input_ids=ids).logits.float()
        finally:
            for h in hooks:
                h.remove()
        self.ok = torch.equal(self(len(self.blocks) - 1), self.ref)

    def __call__(self, first: int):
        """The logits with blocks before ``first`` replayed from the reference forward."""
        skipped = self.blocks[:first] if getattr(self, "ok", True) else []
        for i, b in enumerate(skipped):
            b.forward = lambda *a, _out=self.outputs[i], **k: _out
        try:
            return self.model(input_ids=self.ids).logits.float()
        finally:
            for b in skipped:
                del b.forward


def sensitivities(model, windows: list[list[int]], formats: dict[str, int], group_size: int | None
                  ) -> dict[str, dict[str, float]]:
    """{layer: {format: mean next-token KL (nats) from the model as it is, with only that layer rounded}}."""
    import torch

    arch = of_model(model)
    layers = arch.block_linears(model)
    with torch.no_grad():
        replay = _Replay(model, torch.tensor(windows, device=model.device))
        p = torch.softmax(replay.ref, -1)
        out: dict[str, dict[str, float]] = {}
        for name, lin in layers.items():
            block = int(name[len(arch.layers) + 1:].split(".")[0])
            kept = lin.weight.data.clone()
            out[name] = {}
            for fmt, b in formats.items():
                lin.weight.data = fake_quant(kept, b, group_size)
                out[name][fmt] = kl(p, replay.ref, replay(block))
            lin.weight.data = kept
    return out


def plan(model, windows: list[list[int]], avg_bits: float, group_size: int | None,
         formats: dict[str, int] = FORMATS, stats: Path | None = None) -> dict[str, Any]:
    """The measured sensitivities (reused from ``stats`` when this model was measured so before) and the allocation
    under the budget: {layer: format}, with its average bits."""
    layers = of_model(model).block_linears(model)
    t0 = time.perf_counter()
    key = {"weights": weights_digest(model), "windows": windows_digest(windows),
           "formats": formats, "group_size": group_size, "measure": "next-token KL, one layer rounded"}
    sens, reused = cached(stats, "sensitivity", key, lambda: sensitivities(model, windows, formats, group_size))
    seconds = time.perf_counter() - t0
    names, fmts = list(layers), list(formats)
    numels = [layers[n].weight.numel() for n in names]
    pick = allocate(numels, [[sens[n][f] for f in fmts] for n in names], [formats[f] for f in fmts], avg_bits)
    assignment = {n: fmts[f] for n, f in zip(names, pick)}
    avg = sum(formats[assignment[n]] * k for n, k in zip(names, numels)) / sum(numels)
    return {"formats": dict(formats), "sensitivity": sens, "assignment": assignment, "avg_bits": avg,
            "budget_bits": avg_bits, "predicted_kl": sum(sens[n][assignment[n]] for n in names),
            "sensitivity_seconds": seconds, "sensitivity_reused": reused}


@register
class Mixed(Method):
    """W4A16 and W8A16 per decoder Linear, allocated by measured sensitivity under an average-bits budget."""

    name = "mixed"
    action = "quantization"
    produces = "compressed-tensors"
    requires = ("llmcompressor", "compressed_tensors")
    cost = 2
    memory_factor = 2.0
    params = (Param(name="avg_bits", low=4.0, high=8.0, default=5.0, grid=[4.5, 5.0, 6.0],
                    help="the decoder Linears' average weight bits (4: all W4A16, 8: all W8A16)"),
              Param(name="group_size", choices=[32, 64, 128], default=64, help="weights per scale, both formats"),
              Param(name="num_samples", low=1, high=64, default=4, help="calibration windows the KLs are measured on"),
              Param(name="seq_len", low=32, high=1024, default=128, help="tokens per calibration window"))

    @classmethod
    def bits(cls, params):
        return int(cls.resolve(params)["avg_bits"])

    @classmethod
    def check(cls, params, config):
        return super().check(params, config) or group_problem(cls.resolve(params)["group_size"], config)

    def apply(self, model, tokenizer, params, ctx: Context):
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        p = self.resolve(params)
        windows = ctx.calibration(tokenizer, int(p["num_samples"]), int(p["seq_len"]))
        result = plan(model, windows, float(p["avg_bits"]), p["group_size"], stats=ctx.stats)
        groups = {}
        for fmt in FORMATS:
            names = [n for n, f in result["assignment"].items() if f == fmt]
            if names:
                groups[f"group_{len(groups)}"] = {**_scheme(fmt, p["group_size"])["group_0"], "targets": names}
        oneshot(model=model, recipe=QuantizationModifier(config_groups=groups, ignore=of_model(model).ignore()))
        ctx.measured["mixed"] = result
        return model
