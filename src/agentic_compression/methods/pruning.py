"""Unstructured and N:M pruning of the decoder's Linear weights (the output head, tied to the embedding in small
models, is never pruned).

SparseGPT and Wanda run through llm-compressor's one-shot modifiers on calibration text. Magnitude pruning is a
per-layer threshold on |W| (our code: llm-compressor's MagnitudePruningModifier is a training-time schedule and
leaves weights untouched in one-shot). compressed-tensors 0.19 has no sparse storage format any more, so pruned
checkpoints are stored dense: the zeros are in the weights, not yet in the bytes on disk."""
from __future__ import annotations

import re

import torch

from ..architecture import of_model
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
                groups = w.abs().reshape(-1, 4)
                drop = groups.topk(2, dim=1, largest=False).indices
                mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False).reshape(w.shape)
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
    modifier_class = "SparseGPTModifier"


@register
class Wanda(_LLMCompressorPruner):
    name = "wanda"
    modifier_class = "WandaPruningModifier"


def _mask(p: dict) -> str:
    return "0:0" if p["mask_structure"] == "unstructured" else p["mask_structure"]
