"""ASVD: activation-aware singular value decomposition (Yuan et al., 2023), our code on torch.

Each decoder Linear W (out x in) is scaled by S = diag(mean|x|)^alpha, measured on calibration text, so that input
channels with large activations are kept more faithfully; W S is truncated to rank r by SVD and W is replaced by two
smaller Linears: down = sqrt(Sigma_r) V_r^T S^-1 (in -> r) and up = U_r sqrt(Sigma_r) (r -> out). alpha = 0 is plain
SVD. ``rank_ratio`` is the fraction of each layer's parameters kept: r = ratio * in * out / (in + out).

The result is in the low-rank format (formats/low_rank.py), which saves and reloads it."""
from __future__ import annotations

import torch
from torch import nn

from ..formats.low_rank import LowRankLinear, set_module
from ..models.architecture import Architecture, of_model
from ..models.stats_cache import input_stats
from .base import Context, Method, Param, register


def rank_for(in_f: int, out_f: int, ratio: float) -> int:
    return max(1, int(ratio * in_f * out_f / (in_f + out_f)))


@torch.no_grad()
def factorise(linear: nn.Linear, scale: torch.Tensor | None, rank: int, alpha: float) -> LowRankLinear:
    w = linear.weight.float()
    s = (scale.clamp_min(1e-6) ** alpha) if scale is not None and alpha > 0 else torch.ones(w.shape[1])
    u, sigma, vh = torch.linalg.svd(w * s, full_matrices=False)
    root = sigma[:rank].sqrt()
    lr = LowRankLinear(w.shape[1], w.shape[0], rank, linear.bias is not None)
    lr.down.weight.copy_(root[:, None] * vh[:rank] / s)
    lr.up.weight.copy_(u[:, :rank] * root)
    if linear.bias is not None:
        lr.up.bias.copy_(linear.bias)
    return lr


@register
class ASVD(Method):
    name = "asvd"
    action = "asvd"
    produces = "low-rank"
    tags = ("low-rank",)
    requires = ()
    memory_factor = 2.0
    reduces = ("model_size_gb", "memory_gb", "latency_ms")
    params = (Param(name="rank_ratio", low=0.1, high=0.95, default=0.8, grid=[0.6, 0.8, 0.9],
                    help="fraction of each factorised layer's parameters kept"),
              Param(name="alpha", low=0.0, high=1.0, default=0.5, help="activation scaling exponent (0 = plain SVD)"),
              Param(name="targets", choices=["mlp", "attention", "all"], default="mlp"),
              Param(name="num_samples", low=1, high=1024, default=16, help="calibration windows"),
              Param(name="seq_len", low=16, high=4096, default=256))

    def apply(self, model, tokenizer, params, ctx: Context):
        p = self.resolve(params)
        arch = of_model(model)
        linears = arch.block_linears(model, None if p["targets"] == "all" else p["targets"])
        if not linears:
            raise ValueError(f"a {arch.family} model has no {p['targets']} Linear layers in its blocks to factorise")
        scales = {}
        if p["alpha"] > 0:  # mean |x| per input channel, from the experiment's statistics when measured before
            inputs = input_stats(model, ctx.calibration(tokenizer, int(p["num_samples"]), int(p["seq_len"])),
                                 ctx.stats)
            scales = {n: inputs[n]["abs_sum"] / inputs[n]["tokens"] for n in linears}
        ranks = {}
        for n, lin in linears.items():
            r = rank_for(lin.in_features, lin.out_features, p["rank_ratio"])
            if r * (lin.in_features + lin.out_features) >= lin.in_features * lin.out_features:
                continue  # no saving at this ratio
            set_module(model, n, factorise(lin, scales.get(n), r, p["alpha"]))
            ranks[n] = r
        if not ranks:
            raise ValueError(f"rank_ratio {p['rank_ratio']} saves nothing on any targeted layer")
        return model

    @classmethod
    def supports(cls, arch: Architecture) -> str | None:
        return None if arch.widths else f"a {arch.family} model has no Linear layers in decoder blocks to factorise"
