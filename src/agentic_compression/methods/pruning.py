"""Unstructured and N:M pruning of the decoder's Linear weights (the output head, tied to the embedding in small
models, is never pruned).

SparseGPT runs through llm-compressor's one-shot modifier on calibration text. Wanda and magnitude pruning are our
code: Wanda's score needs only each input channel's norm, which the experiment's statistics cache already holds
(stats_cache.input_stats), and llm-compressor's MagnitudePruningModifier is a training-time schedule that leaves
weights untouched in one-shot. compressed-tensors 0.19 has no sparse storage format any more, so pruned
checkpoints are stored dense: the zeros are in the weights, not yet in the bytes on disk."""
from __future__ import annotations

import re

import torch

from ..models.architecture import of_model
from ..models.stats_cache import input_stats
from .base import Context, Method, Param, register
from .llmcompressor_quant import _CALIB, calibration_dataset

_SPARSITY = Param(name="sparsity", low=0.1, high=0.9, default=0.5, grid=[0.3, 0.5, 0.7],
                  help="fraction of each layer's weights zeroed")
_STRUCTURE = Param(name="mask_structure", choices=["unstructured", "2:4"], default="unstructured",
                   help="2:4 = two zeros in every four consecutive input weights (sparsity is then 0.5)")


def _ignore(model) -> list[str]:
    """Regexes: these modifiers match ignore against "<layer>.<module>" names, where the head is "lm_head." """
    return [f"re:.*{re.escape(n)}" for n in of_model(model).ignore()]


def decoder_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    head = of_model(model).head
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != head]


def _check_structure(params: dict) -> str | None:
    if params.get("mask_structure") == "2:4" and params.get("sparsity", 0.5) != 0.5:
        return "2:4 sparsity is exactly 0.5: leave sparsity at 0.5"
    return None


class _Pruner(Method):
    action = "pruning"
    reduces = ()  # stored dense, run dense: zeros lower no measured cost on this runtime

    @classmethod
    def check(cls, params, config):
        return super().check(params, config) or _check_structure(cls.resolve(params))


@register
class Magnitude(_Pruner):
    name = "magnitude"
    tags = ("sparse", "pruned")
    cost = 0
    requires = ()
    memory_factor = 1.5
    params = (_SPARSITY, _STRUCTURE)

    @torch.no_grad()
    def apply(self, model, tokenizer, params, ctx: Context):
        p = self.resolve(params)
        for _, lin in decoder_linears(model):
            w = lin.weight
            if p["mask_structure"] == "2:4":
                mask = _two_of_four(w.abs())
            else:
                k = int(w.numel() * p["sparsity"])
                threshold = w.abs().flatten().kthvalue(k).values if k else -1.0
                mask = w.abs() > threshold
            w.mul_(mask)
        return model


class _LLMCompressorPruner(_Pruner):
    requires = ("llmcompressor",)
    memory_factor = 2.5
    params = (_SPARSITY, _STRUCTURE, *_CALIB)

    modifier_class: str  # in llmcompressor.modifiers.pruning

    def apply(self, model, tokenizer, params, ctx: Context):
        from llmcompressor import oneshot
        from llmcompressor.modifiers import pruning

        p = self.resolve(params)
        modifier = getattr(pruning, self.modifier_class)(sparsity=p["sparsity"], mask_structure=_mask(p),
                                                         targets=["Linear"], ignore=_ignore(model))
        oneshot(model=model, recipe=modifier, **calibration_dataset(tokenizer, p, ctx))
        return model


@register
class SparseGPT(_LLMCompressorPruner):
    name = "sparsegpt"
    tags = ("compressed-tensors", "sparse", "pruned")
    modifier_class = "SparseGPTModifier"


@register
class Wanda(_Pruner):
    """Wanda (Sun et al., 2023): in each output row (2:4: in each four consecutive inputs) zero the weights of least
    |W_ij| * ||x_j||_2, x_j input channel j over the calibration tokens. The norms are measured on the incoming
    checkpoint in one pass, shared with ASVD and structured pruning and kept in the experiment's statistics, so
    another sparsity measures nothing again. (llm-compressor's modifier measures layer by layer through the layers it
    has already pruned, so its norms depend on the sparsity and cannot be reused.)"""
    name = "wanda"
    tags = ("sparse", "pruned")
    requires = ()
    memory_factor = 1.5
    params = (_SPARSITY, _STRUCTURE, *_CALIB)

    @torch.no_grad()
    def apply(self, model, tokenizer, params, ctx: Context):
        p = self.resolve(params)
        linears = of_model(model).block_linears(model)
        inputs = input_stats(model, ctx.calibration(tokenizer, int(p["num_samples"]), int(p["seq_len"])), ctx.stats)
        for n, lin in linears.items():
            score = lin.weight.abs() * inputs[n]["sq_sum"].sqrt()
            if p["mask_structure"] == "2:4":
                mask = _two_of_four(score)
            else:
                drop = score.sort(dim=1, stable=True).indices[:, :int(score.shape[1] * p["sparsity"])]
                mask = torch.ones_like(score, dtype=torch.bool).scatter_(1, drop, False)
            lin.weight.mul_(mask)
        return model


def _two_of_four(score: torch.Tensor) -> torch.Tensor:
    """Keep mask: the two highest scores of every four consecutive input weights."""
    groups = score.reshape(-1, 4)
    drop = groups.topk(2, dim=1, largest=False).indices
    return torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False).reshape(score.shape)


def _mask(p: dict) -> str:
    return "0:0" if p["mask_structure"] == "unstructured" else p["mask_structure"]
