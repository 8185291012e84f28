"""ONNX Runtime GenAI's weight-only quantization (MatMulNBits), applied by its model builder while it exports the
model in hand (targets.ortgenai): the last step of a strategy on the ortgenai target."""
from __future__ import annotations

from .base import Method, Param, register

# onnxruntime-genai's builder selectors of the MatMuls quantized to int8 inside an int4 model
MIXED = ["mixed_layers:int8", "last_matmul:int8,mixed_layers:int8"]


@register
class OrtQuant(Method):
    name = "ort"
    action = "quantization"
    produces = "onnx"
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
                    help="round to nearest, or k-quant rounding"),
              Param(name="matmul_mixed_precision", choices=[None, *MIXED], default=None,
                    help="int4 precision with the builder's int8 groups: llama.cpp's sensitive layers "
                         "(mixed_layers: the first and last eighth of the layers and every third layer's qkv/v/down "
                         "projections), and the head (last_matmul, on a model whose head is not its embedding)"))

    @classmethod
    def bits(cls, params):
        return 8 if cls.resolve(params)["precision"] == "int8" else 4

    @classmethod
    def check(cls, params, config):
        b = params.get("block_size", 32)
        if params.get("algo_config") == "k_quant" and b != 32:  # 0.18's builder: "cannot reshape array" otherwise
            return f"ort.algo_config=k_quant works with block_size 32 only in onnxruntime-genai's builder, not {b}"
        widths = [config.get(k) for k in ("hidden_size", "intermediate_size") if config.get(k)]
        if any(w % b for w in widths):
            return f"ort.block_size={b} does not divide the model's widths {widths}: use 32 or 64"
        mixed = params.get("matmul_mixed_precision") or ""
        if mixed and params.get("precision", "int4") != "int4":
            return "ort.matmul_mixed_precision puts int8 groups inside an int4 model: use it with precision int4"
        if "last_matmul" in mixed and config.get("tie_word_embeddings", True):
            # onnxruntime-genai 0.18 shares the tied matrix and writes an int8 head the graph never defines
            return ("ort.matmul_mixed_precision=last_matmul: the builder writes an invalid graph for a head tied to "
                    "the embedding (this model's): use mixed_layers:int8")
        return super().check(params, config)

    def apply(self, model, tokenizer, params, ctx):
        raise TypeError("ort quantizes while exporting to ONNX: it runs as a strategy's last step, in the ortgenai "
                        "target's export")
