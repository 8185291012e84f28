"""llama.cpp's quantization types, applied by llama.cpp to the f32 GGUF of the model in hand (targets.llamacpp):
the last step of a strategy on the llamacpp target, after any PyTorch-side steps (structured pruning, distillation,
LoRA merged). Optionally with an importance matrix computed by llama.cpp from the experiment's calibration text."""
from __future__ import annotations

from ..models.llamacpp_runtime import TYPES, converter_missing, tool
from .base import Method, Param, register


@register
class GGUFQuant(Method):
    name = "gguf"
    action = "quantization"
    produces = "gguf"
    final = True
    cost = 0
    memory_factor = 3.0  # the PyTorch model for the export check, plus llama.cpp's f32 file being quantized
    reduces = ("model_size_gb", "latency_ms", "memory_gb", "co2_grams")
    requires = ("llama_cpp", "gguf")
    params = (Param(name="type", choices=["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS"], default="Q4_K_M",
                    help="llama.cpp's quantization type (a width that is no multiple of 256 falls back per tensor)"),
              Param(name="imatrix", choices=[False, True], default=False,
                    help="weight the rounding error by llama.cpp's importance matrix over the calibration text"),
              Param(name="imatrix_samples", low=4, high=512, default=32, grid=[32],
                    help="512-token calibration windows the importance matrix is computed on"),
              Param(name="avg_bits", low=3.5, high=8.5, default=None,
                    help="per-tensor types: each weight matrix (embedding and head included) gets one of the types "
                         "llama.cpp stores at its row width, by measured sensitivity in llama.cpp's own rounding, "
                         "averaging at most this many stored bits per weight (targets/gguf_types.py)"),
              Param(name="tensor_types", default=None,
                    help="per-tensor overrides, {tensor name or pattern: ggml type}, e.g. {\"attn_v\": \"q8_0\"} "
                         "(mixed precision; set by a person or an allocation, never enumerated by a policy)"))

    @classmethod
    def bits(cls, params):
        """An allocation's budget (4.5 -> 4), else the type's first digit (Q4_K_M, IQ4_XS -> 4)."""
        p = cls.resolve(params)
        if p.get("avg_bits") is not None:
            return int(p["avg_bits"])
        return int(next(c for c in p["type"] if c.isdigit()))

    @classmethod
    def available(cls):
        ok, why = super().available()
        missing = converter_missing() if ok else None
        return (False, missing) if missing else (ok, why)

    @classmethod
    def check(cls, params, config):
        if params.get("imatrix") and not (tool("llama-imatrix") and tool("llama-quantize")):
            return "gguf.imatrix needs llama.cpp's llama-imatrix and llama-quantize tools, which setup.sh builds"
        types = params.get("tensor_types")
        if types is not None and not (isinstance(types, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                      for k, v in types.items())):
            return "gguf.tensor_types must map tensor names to ggml types, e.g. {\"attn_v\": \"q8_0\"}"
        unknown = [t for t in str(params.get("exclude") or "").upper().split(",") if t and t not in TYPES]
        if unknown:
            return f"gguf exclude names no type of the allocation: {', '.join(unknown)} (types: {', '.join(TYPES)})"
        return super().check(params, config)

    def apply(self, model, tokenizer, params, ctx):
        raise TypeError("gguf quantizes a file, not a model in memory: it runs as a strategy's last step, in the "
                        "llamacpp target's export")


@register
class AutoRoundGGUF(GGUFQuant):
    """auto-round's rounding, written as GGUF by auto-round itself (``gguf:q4_k_m``), run by llama.cpp: the last step
    of a strategy on the llamacpp target. iters=0, auto-round's optimised round-to-nearest over the calibration text
    (what it recommends for today's GGUF types); its tuned rounding crashed inside auto-round 0.15.1 here."""

    name = "autoround_gguf"
    cost = 1
    requires = ("auto_round", *GGUFQuant.requires)
    params = (Param(name="type", choices=["q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0"], default="q4_k_m"),
              Param(name="num_samples", low=4, high=512, default=32, grid=[32], help="calibration windows"),
              Param(name="seq_len", low=64, high=2048, default=256, grid=[256], help="tokens per window"))


@register
class GGUFMixed(GGUFQuant):
    """Per-tensor llama.cpp types under a bits-per-weight budget (gguf.avg_bits), as a search policy proposes it: the
    budget and the importance matrix are what it chooses. Q4_K_M on SmolLM2 stores 6.3 bits per weight (its 576-wide
    matrices fall back to Q5_0, the embedding is Q8_0), so the grid spans the presets' sizes."""

    name = "gguf_mixed"
    cost = 1  # the sensitivities: a forward per matrix and type, once per experiment (statistics/)
    params = (Param(name="type", choices=["Q8_0"], default="Q8_0",
                    help="the type of a matrix the allocation does not name (none: every one is allocated)"),
              Param(name="avg_bits", low=3.5, high=8.5, default=5.0, grid=[4.5, 5.0, 5.5, 6.0, 6.5],
                    help="stored bits per weight, averaged over the weight matrices"),
              Param(name="imatrix", choices=[True, False], default=True,
                    help="round with the importance of each input column (llama.cpp's importance matrix)"),
              Param(name="imatrix_samples", low=4, high=512, default=32, grid=[32],
                    help="512-token calibration windows the importance matrix is computed on"),
              Param(name="exclude", default=None,
                    help="types the allocation may not use, comma-separated (e.g. Q4_1 for a model whose own "
                         "weights are a dequantized Q4_1, which Q4_1 stores without loss)"))
