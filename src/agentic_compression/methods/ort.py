"""ONNX Runtime GenAI's weight-only quantization (MatMulNBits), applied by its model builder while it exports the
model in hand (targets.ortgenai): the last step of a strategy on the ortgenai target."""
from __future__ import annotations

from .base import Method, Param, register


@register
class OrtQuant(Method):
    name = "ort"
    action = "quantization"
    runtime = "onnx"
    final = True
    cost = 0
    memory_factor = 3.0
    reduces = ("model_size_gb", "latency_ms", "memory_gb", "co2_grams")
    requires = ("onnxruntime_genai", "onnx_ir")
    params = (Param(name="precision", choices=["int4", "int8"], default="int4"),
              Param(name="block_size", choices=[32, 64, 128], default=32,
                    help="weights per scale; it must divide the model's widths"),
              Param(name="accuracy_level", choices=[4, 1], default=4,
                    help="4: activations in int8 inside the MatMul (fastest on CPU), 1: fp32"),
              Param(name="algo_config", choices=["rtn", "k_quant"], default="rtn",
                    help="round to nearest, or k-quant rounding"))

    @classmethod
    def check(cls, params, config):
        b = params.get("block_size", 32)
        if params.get("algo_config") == "k_quant" and b != 32:  # 0.18's builder: "cannot reshape array" otherwise
            return f"ort.algo_config=k_quant works with block_size 32 only in onnxruntime-genai's builder, not {b}"
        widths = [config.get(k) for k in ("hidden_size", "intermediate_size") if config.get(k)]
        if any(w % b for w in widths):
            return f"ort.block_size={b} does not divide the model's widths {widths}: use 32 or 64"
        return super().check(params, config)

    def apply(self, model, tokenizer, params, ctx):
        raise TypeError("ort quantizes while exporting to ONNX: it runs as a strategy's last step, in the ortgenai "
                        "target's export")
