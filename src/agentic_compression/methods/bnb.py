"""bitsandbytes INT8 (LLM.int8) and 4-bit NF4/FP4 weights, applied the way bitsandbytes is meant to be used: by
transformers at load time. The model in hand is written to a scratch folder and reloaded with a
BitsAndBytesConfig; the saved checkpoint carries that config, so it reloads quantized."""
from __future__ import annotations

import tempfile

from ..models.architecture import of_model
from .base import Context, Method, Param, register


def bnb_config(mode: str, double_quant: bool = True, skip: list[str] = ()):
    """``skip``: the modules left in float (the output head: architecture.Architecture.ignore)."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(skip)
    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=mode, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip)


def load_quantized(model, tokenizer, mode: str, double_quant: bool = True):
    import torch
    from transformers import AutoModelForCausalLM

    config = bnb_config(mode, double_quant, of_model(model).ignore())
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, quantization_config=config)


@register
class BitsAndBytes(Method):
    name = "bnb"
    cost = 0
    action = "quantization"
    produces = "bitsandbytes"
    tags = ("bitsandbytes", "quantized")
    requires = ("bitsandbytes",)
    memory_factor = 2.0
    params = (Param(name="mode", choices=["int8", "nf4", "fp4"], default="nf4"),
              Param(name="double_quant", choices=[True, False], default=True, help="4-bit only: quantize scales"))

    @classmethod
    def bits(cls, params):
        return 8 if cls.resolve(params)["mode"] == "int8" else 4

    @classmethod
    def check(cls, params, config):
        p = cls.resolve(params)
        if p["mode"] == "int8" and not p["double_quant"]:
            return "double_quant applies to 4-bit modes only: leave it True for int8"
        return super().check(params, config)

    def apply(self, model, tokenizer, params, ctx: Context):
        p = self.resolve(params)
        return load_quantized(model, tokenizer, p["mode"], p["double_quant"])

