"""Weight quantization through llm-compressor: round-to-nearest and GPTQ, saved as compressed-tensors
(loadable by transformers and vLLM). The output head stays unquantized (tied to the embedding in small models, and
lm-eval's HFLM re-ties it); which module that is, the architecture says (architecture.py)."""
from __future__ import annotations

import logging
from typing import Any

from ..models.architecture import of_config, of_model
from .base import Context, Method, Param, register

_SCHEMES = ["W4A16", "W8A16", "W8A8"]
_GROUPS = [None, 32, 64, 128]


def _scheme(scheme: str, group_size: int | None) -> dict[str, Any]:
    bits = int(scheme[1])
    weights = {"num_bits": bits, "type": "int", "symmetric": True,
               "strategy": "group" if group_size else "channel", "group_size": group_size}
    group: dict[str, Any] = {"targets": ["Linear"], "weights": weights}
    if scheme.endswith("A8"):  # dynamic per-token int8 activations
        group["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                      "dynamic": True}
    return {"group_0": group}


def linear_in_features(config: dict[str, Any]) -> set[int]:
    """Input widths of a decoder's Linear layers (what a group size must divide): read from the model the config
    builds, else (a config transformers cannot build) estimated from its sizes."""
    if (arch := of_config(config)) is not None and arch.widths:
        return set(arch.widths)
    hidden = config.get("hidden_size")
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = {hidden, config.get("intermediate_size")}
    if heads and (head_dim or hidden):
        widths.add(heads * (head_dim or hidden // heads))
    return {w for w in widths if w}


def group_problem(group_size: int | None, config: dict[str, Any]) -> str | None:
    bad = sorted(w for w in linear_in_features(config) if group_size and w % group_size)
    return f"group_size {group_size} does not divide the layer width(s) {bad}" if bad else None


def calibration_dataset(tokenizer, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """oneshot() keyword arguments for ``num_samples`` seeded windows of ``seq_len`` calibration tokens."""
    from datasets import Dataset

    n, seq_len = int(p["num_samples"]), int(p["seq_len"])
    samples = ctx.calibration(tokenizer, n, seq_len)
    ds = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    return {"dataset": ds, "num_calibration_samples": n, "max_seq_length": seq_len}


_CALIB = (Param(name="num_samples", low=8, high=1024, default=64, help="calibration windows"),
          Param(name="seq_len", low=64, high=4096, default=256, help="tokens per calibration window"))


class _LLMCompressorQuant(Method):
    action = "quantization"
    produces = "compressed-tensors"
    requires = ("llmcompressor", "compressed_tensors")

    @classmethod
    def bits(cls, params):
        return int(cls.resolve(params)["scheme"][1])  # W4A16 -> 4

    @classmethod
    def check(cls, params, config):
        if err := super().check(params, config):
            return err
        p = cls.resolve(params)
        if p["scheme"] == "W8A8" and p["group_size"]:
            return "W8A8 uses per-channel weights: group_size must be None"
        return group_problem(p["group_size"], config)

    def modifier(self, p: dict[str, Any], ignore: list[str]):
        raise NotImplementedError

    def apply(self, model, tokenizer, params, ctx: Context):
        from llmcompressor import oneshot

        p = self.resolve(params)
        kwargs = self.calibration_kwargs(tokenizer, p, ctx)
        oneshot(model=model, recipe=self.modifier(p, of_model(model).ignore()), **kwargs)
        return model

    def calibration_kwargs(self, tokenizer, p, ctx) -> dict[str, Any]:
        return {}



@register
class RTN(_LLMCompressorQuant):
    """Round-to-nearest, data-free: seconds."""

    name = "rtn"
    tags = ("compressed-tensors", "quantized")
    size_rank = {"small": 3, "medium": 3, "large": 1}
    cost = 0
    memory_factor = 1.5
    params = (Param(name="scheme", choices=_SCHEMES, default="W4A16"),
              Param(name="group_size", choices=_GROUPS, default=128, help="None = per output channel"))

    def modifier(self, p, ignore):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return QuantizationModifier(config_groups=_scheme(p["scheme"], p["group_size"]), ignore=ignore)


@register
class GPTQ(_LLMCompressorQuant):
    """GPTQ: second-order error compensation on calibration activations (minutes on CPU)."""

    name = "gptq"
    tags = ("compressed-tensors", "gptq", "quantized")
    size_rank = {"small": 1, "medium": 0, "large": 0}
    memory_factor = 2.5
    params = (Param(name="scheme", choices=["W4A16", "W8A16"], default="W4A16"),
              Param(name="group_size", choices=_GROUPS, default=128),
              *_CALIB, Param(name="dampening_frac", low=0.001, high=0.2, default=0.01))

    def modifier(self, p, ignore):
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=_scheme(p["scheme"], p["group_size"]), ignore=ignore,
                            dampening_frac=p["dampening_frac"])

    def calibration_kwargs(self, tokenizer, p, ctx):
        return calibration_dataset(tokenizer, p, ctx)


@register
class AWQ(_LLMCompressorQuant):
    """AWQ: activation-aware scaling of salient channels, then W4A16 quantization (llm-compressor).
    llm-compressor pins its activation cache for host-to-GPU copies; with no accelerator pin_memory() fails, so the
    pinning (a transfer optimisation only) is skipped on CPU."""

    name = "awq"
    tags = ("compressed-tensors", "awq", "quantized")
    size_rank = {"small": 2, "medium": 1}
    memory_factor = 3.0
    params = (Param(name="scheme", choices=["W4A16"], default="W4A16"),
              Param(name="group_size", choices=[32, 64, 128], default=128),
              Param(name="num_samples", low=8, high=1024, default=32, help="calibration windows"), _CALIB[1],
              Param(name="n_grid", low=2, high=40, default=10, help="scale grid points searched per layer"))

    def modifier(self, p, ignore):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(n_grid=int(p["n_grid"])),
                QuantizationModifier(config_groups=_scheme(p["scheme"], p["group_size"]), ignore=ignore)]

    def calibration_kwargs(self, tokenizer, p, ctx):
        return calibration_dataset(tokenizer, p, ctx)

    def apply(self, model, tokenizer, params, ctx):
        from unittest import mock

        import torch
        from llmcompressor.pipelines.cache import IntermediatesCache

        if torch.accelerator.is_available():
            return super().apply(model, tokenizer, params, ctx)
        with mock.patch.object(IntermediatesCache, "pin_memory", lambda self, *a, **k: None):
            return super().apply(model, tokenizer, params, ctx)


class _NotPile(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using default calibration dataset")


def silence_default_dataset_notice() -> None:
    """llm-compressor builds one auto_round.AutoRound per decoder block without a dataset and feeds it the block
    inputs it captured from acf's calibration windows, so AutoRound never loads its default NeelNanda/pile-10k.
    Its log line "Using default calibration dataset NeelNanda/pile-10k" is therefore false here: drop it at its
    logger ("autoround"), once."""
    log = logging.getLogger("autoround")
    if not any(isinstance(f, _NotPile) for f in log.filters):
        log.addFilter(_NotPile())


@register
class AutoRound(_LLMCompressorQuant):
    """AutoRound (Intel auto-round, run through llm-compressor's AutoRoundModifier): sign-gradient tuning of
    rounding and clipping per decoder block. Saved as compressed-tensors, so it reloads like GPTQ/AWQ (fp32 compute
    after load, instead of auto-round's own fp16 QuantLinear that is ~25x slower on CPU)."""

    name = "autoround"
    tags = ("compressed-tensors", "autoround", "quantized")
    size_rank = {"small": 0, "medium": 2}
    cost = 2
    requires = ("llmcompressor", "compressed_tensors", "auto_round")
    memory_factor = 3.0
    params = (Param(name="scheme", choices=["W4A16", "W8A16"], default="W4A16"),
              Param(name="group_size", choices=[32, 64, 128], default=128),
              Param(name="iters", low=1, high=1000, default=10,
                    help="tuning steps per decoder block (auto-round's own default is 200: hours on this CPU)"),
              Param(name="num_samples", low=8, high=1024, default=16, help="calibration windows"), _CALIB[1],
              Param(name="batch_size", low=1, high=64, default=8))

    def modifier(self, p, ignore):
        from llmcompressor.modifiers.autoround import AutoRoundModifier

        silence_default_dataset_notice()
        return AutoRoundModifier(config_groups=_scheme(p["scheme"], p["group_size"]), ignore=ignore,
                                 iters=int(p["iters"]), batch_size=int(p["batch_size"]), enable_torch_compile=False)

    def calibration_kwargs(self, tokenizer, p, ctx):
        return calibration_dataset(tokenizer, p, ctx)
