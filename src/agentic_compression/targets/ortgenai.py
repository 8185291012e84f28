"""ONNX Runtime GenAI on the CPU (Olive's target): the model builder of onnxruntime-genai exports a dense PyTorch-side
checkpoint to ONNX (fp32 for the baseline, or int8 / int4 weight-only MatMulNBits with its block sizes, accuracy
levels and RTN or k-quant rounding), and onnxruntime-genai's Generator runs it. The fp32 export is checked against the
PyTorch model (next-token KL below F32_KL on the check text), as the llama.cpp export is.

What chains here: dense PyTorch-side results (structured pruning, distillation, LoRA merged, sparsity stored dense),
and llm-compressor's weight-only integer results (GPTQ, AWQ, AutoRound, RTN, mixed W4/W8), which the builder reads
once they are rewritten in the AutoGPTQ layout (``gptq_layout``): the same integers and scales, so the ONNX model
computes what the candidate computes, checked like the fp32 export. What does not: W8A8 (activations quantized),
per-channel scales (MatMulNBits takes power-of-two blocks), and bitsandbytes or low-rank checkpoints."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from ..models.llamacpp_runtime import shared_prefix
from ..models.threads import default_threads
from .base import Target, clean_tokenizer, copy_side_files, register

FORMAT_FILE = "acf_format.json"
# how a user runs an exported folder (the model card's; tests run it as written, PATH replaced)
SNIPPET = """import onnxruntime_genai as og
model = og.Model("PATH"); tokenizer = og.Tokenizer(model); params = og.GeneratorParams(model)
params.set_search_options(max_length=64); generator = og.Generator(model, params)
generator.append_tokens(tokenizer.encode("The capital of France is"))
while not generator.is_done(): generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
"""
WEIGHTS = ("model.onnx", "model.onnx.data")
F32_KL = 1e-3


class OrtGenAI:
    """An ONNX Runtime GenAI model called like a transformers model: serving mode returns the last position's
    logits and carries the generator (its KV cache) between calls; scoring mode (``logits``) every position's."""

    def __init__(self, folder: Path, max_length: int, logits_all: bool = True, threads: int | None = None):
        import onnxruntime_genai as og
        import torch

        limit = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]
        self.og, self.path, self.max_length, self.logits_all = og, folder, min(max_length, limit), logits_all
        config = og.Config(str(folder))  # the folder's own config, with the thread count of models/threads.py
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": default_threads(threads)}}}}))
        self.model, self.device, self.gen = og.Model(config), torch.device("cpu"), None
        self.held, self.scores = [], None  # what the generator holds in scoring mode (logits), and its logits

    def _generator(self):
        p = self.og.GeneratorParams(self.model)
        p.set_search_options(max_length=self.max_length)
        return self.og.Generator(self.model, p)

    def __call__(self, input_ids, past_key_values: int | None = None, **_):
        import numpy as np
        import torch

        ids = input_ids[0].tolist()
        self.held = []  # serving mode moves the generator: scoring mode's next call starts afresh
        if past_key_values is None:
            self.gen = self._generator()
        self.gen.append_tokens(ids)
        logits = np.asarray(self.gen.get_output("logits"))[0]
        if not self.logits_all:
            logits = logits[-1:]
        return SimpleNamespace(logits=torch.from_numpy(np.array(logits, dtype=np.float32))[None],
                               past_key_values=(past_key_values or 0) + len(ids))

    def logits(self, ids: list[int], first: int = 0):
        """Scoring mode: the logits of positions ``first``.. of ``ids``, evaluating only what follows the longest
        prefix it shares with the sequence before (lm-eval's choices share their context): the generator is rewound
        to that prefix, whose logits are kept, as llama.cpp's scoring mode reuses its KV cache."""
        import numpy as np

        common = shared_prefix(self.held, ids)
        if common == 0 or self.gen is None:
            common, self.gen = 0, self._generator()
        else:
            self.gen.rewind_to(common)
        self.gen.append_tokens(ids[common:])
        new = np.asarray(self.gen.get_output("logits"), dtype=np.float32)[0]
        self.scores = new if common == 0 else np.concatenate([self.scores[:common], new])
        self.held = list(ids)
        return self.scores[first:]

    def close(self) -> None:
        self.gen = self.model = None


def build(dense: Path, out: Path, precision: str, options: dict[str, str | int]) -> None:
    """onnxruntime-genai's model builder, in a process of its own (its argparse --help crashes; it is called with
    every argument it needs)."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".ort-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(dense), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", cache]
        if options:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "%|" not in ln][-3:]
        raise RuntimeError(f"onnxruntime-genai's model builder failed (exit {proc.returncode}): {' | '.join(last)}")


# a prequantized checkpoint's build: the head and embeddings left float (acf's compressed-tensors keep them float), and
# accuracy level 4, the CPU kernels that quantize activations to int8 inside the matmul (as the `ort` method's default)
PREQUANTIZED = {"nodes_to_exclude": "/lm_head/MatMul,/model/embed_tokens/Gather", "accuracy_level": 4}
# next-token KL against the compressed-tensors model that the int8 activations may cost (SmolLM2: 0.003 nats; at
# accuracy level 1, 0.0); a wrong layout costs nats (a zero point off by one: 14)
PREQUANTIZED_KL = 0.05


def gptq_problem(params: dict) -> str | None:
    """Why a compressed-tensors step's result cannot be rewritten for the builder, from its parameters."""
    if str(params.get("scheme", "W4A16")).endswith("A8"):
        return f"{params['scheme']} quantizes activations, which the builder's prequantized path does not take"
    g = params.get("group_size")
    if not g or g < 16 or g & (g - 1):
        return f"group_size {g} is not a power-of-two block of at least 16, which MatMulNBits needs"
    return None


def gptq_layout(ct: Path, out: Path) -> dict[str, tuple[int, int]]:
    """A compressed-tensors checkpoint of symmetric integer weights in groups, rewritten in the AutoGPTQ layout
    onnxruntime-genai's builder reads: qweight (input rows packed 32 bits at a time), qzeros (the zero point minus
    one, as AutoGPTQ stores it), scales, g_idx. The integers and scales are the same; a module whose bits or group
    size differ from the most common ones gets the builder's per-module ('dynamic') override. Returns each
    module's (bits, group size)."""
    import collections
    import re
    import shutil

    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file, save_file

    cfg = json.loads((ct / "config.json").read_text())
    for group in (cfg.get("quantization_config") or {}).get("config_groups", {}).values():
        if group.get("input_activations"):
            raise ValueError("its activations are quantized, which the builder's prequantized path does not take")
    tensors = {}
    for f in sorted(ct.glob("*.safetensors")):
        tensors |= load_file(f)
    kept, kinds = {}, {}
    for name, t in tensors.items():
        if re.search(r"\.weight_(scale|shape|g_idx|zero_point)$", name):
            if name.endswith("zero_point"):
                raise ValueError(f"{name}: asymmetric weights are not rewritten (acf's methods store symmetric ones)")
            continue
        if not name.endswith(".weight_packed"):
            if t.ndim == 2 and re.search(r"\.layers\.\d+\..*_proj\.weight$", name):
                raise ValueError(f"{name} is left in float, which the builder would read as packed integers")
            kept[name] = t
            continue
        base = name.removesuffix(".weight_packed")
        rows, cols = (int(x) for x in tensors[f"{base}.weight_shape"])
        bits, scale = 32 * t.shape[1] // cols, tensors[f"{base}.weight_scale"].float()
        group = cols // scale.shape[1]
        if problem := gptq_problem({"group_size": group}):
            raise ValueError(f"{base}: {problem}")
        g_idx = torch.arange(cols, dtype=torch.int32) // group
        if f"{base}.weight_g_idx" in tensors and not torch.equal(tensors[f"{base}.weight_g_idx"].int(), g_idx):
            raise ValueError(f"{base}: its groups follow an activation order, which MatMulNBits blocks cannot")
        mid = 2 ** (bits - 1)  # signed integers stored offset by half the range, zero point there
        q = unpack_from_int32(t, bits, torch.Size((rows, cols))).to(torch.int64) + mid
        zeros = torch.full((scale.shape[1], rows), mid - 1)
        kept |= {f"{base}.qweight": _pack_rows(q, bits).T.contiguous(), f"{base}.scales": scale.T.contiguous(),
                 f"{base}.qzeros": _pack_rows(zeros, bits), f"{base}.g_idx": g_idx}
        kinds[base] = (bits, group)
    if not kinds:
        raise ValueError(f"{ct} holds no packed integer weights")
    (bits, group), _ = collections.Counter(kinds.values()).most_common(1)[0]
    out.mkdir(parents=True, exist_ok=True)
    save_file(kept, out / "model.safetensors", metadata={"format": "pt"})
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False,
                                  "sym": True, "dynamic": {rf"+:{re.escape(b)}\.": {"bits": k[0], "group_size": k[1]}
                                                           for b, k in kinds.items() if k != (bits, group)}}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ct.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja", ".model", ".txt") and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    return kinds


def _pack_rows(t, bits: int):
    """(rows, n) integers of ``bits`` bits -> (rows, n * bits / 32) int32, value j in bits [bits*(j % k), ...)."""
    import torch

    per = 32 // bits
    words = (t.to(torch.int64).reshape(t.shape[0], -1, per) << (torch.arange(per) * bits)).sum(-1)
    return ((words + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32)


def check(model, tokenizer, runtime, kl_tolerance: float) -> dict:
    """The exported model against the PyTorch one on the check text: perplexity ratio and next-token KL."""
    import torch

    from ..models.llamacpp_runtime import CHECK_TEXT, next_token_stats

    ids = tokenizer(CHECK_TEXT)["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0]
    st = next_token_stats(ours, torch.from_numpy(runtime.logits(ids)), ids)
    ratio = math.exp(st["nll_ours"] - st["nll_ref"])
    out = {"tokens": len(ids), "kl": round(st["kl"], 6), "ppl_ratio": round(ratio, 5),
           "top1_agreement": round(st["top1"], 4), "kl_tolerance": kl_tolerance, "ok": st["kl"] <= kl_tolerance}
    return out if out["ok"] else {**out, "why": f"next-token KL divergence {st['kl']:.6f} nats "
                                               f"(tolerance {kl_tolerance})"}


@register
class OrtGenAITarget(Target):
    name = "ortgenai"
    runtime = "onnxruntime-genai"
    runs = frozenset({"dense", "onnx", "compressed-tensors"})
    writes = frozenset({"onnx"})
    # the model builder's defaults for int4 on the CPU: blocks of 32, int8 activations (accuracy level 4), RTN
    presets = {"int4": [{"method": "ort", "params": {"precision": "int4", "block_size": 32, "accuracy_level": 4}}]}
    requires = ("onnxruntime_genai", "onnx_ir")

    def refuses(self, steps) -> tuple[int, str] | None:
        """A compressed-tensors result is exported as it is: it ends the strategy, in a layout the builder takes."""
        from ..methods import get

        for i, st in enumerate(steps):
            if get(st.method).produces == "compressed-tensors":
                if i != len(steps) - 1:
                    return i, (f"step {i}: {st.method}'s integer weights are exported to ONNX as they are, so it "
                               "must be the last step")
                if problem := gptq_problem(get(st.method).resolve(st.params)):
                    return i, f"step {i}: {st.method}: {problem}"
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return f"onnxruntime-genai {version('onnxruntime-genai')}"

    def export(self, dense: Path, out: Path, final=None, ctx=None) -> dict:
        from .. import formats
        from ..models import load

        out.parent.mkdir(parents=True, exist_ok=True)
        model, tok = load(dense)
        params = formats.logical_params(model)
        if formats.stored_as(dense).name == "compressed-tensors":  # the candidate's own integers, rewritten
            stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=".stage-gptq-"))
            kinds = gptq_layout(dense, stage)
            build(stage, out, "int4", PREQUANTIZED)
            c = check(model, tok, OrtGenAI(out, 1024), PREQUANTIZED_KL)
            if not c["ok"]:
                raise RuntimeError(f"the ONNX export does not compute what the compressed-tensors model does: "
                                   f"{c['why']}")
            info = {"format": "onnx", "type": "+".join(f"int{b}" for b in sorted({b for b, _ in kinds.values()})),
                    "from": "compressed-tensors", "accuracy_level": PREQUANTIZED["accuracy_level"],
                    "conversion_check": c}
        elif final is None:
            build(dense, out, "fp32", {})
            c = check(model, tok, OrtGenAI(out, 1024), F32_KL)
            if not c["ok"]:
                raise RuntimeError(f"the fp32 ONNX export does not match the PyTorch model: {c['why']}")
            info = {"format": "onnx", "type": "fp32", "conversion_check": c}
        else:
            p = {**final.params}
            precision = p.pop("precision", "int4")
            build(dense, out, precision, {k: v for k, v in p.items() if v is not None})
            info = {"format": "onnx", "type": precision, **p}
        copy_side_files(dense, out)
        clean_tokenizer(out)  # what onnxruntime_genai.Tokenizer reads (acf scores with token ids, not through it)
        weights = sum((out / f).stat().st_size for f in WEIGHTS if (out / f).is_file())
        info |= {"num_params": params, "bits_per_weight": 8 * weights / params, "runtime": self.runtime,
                 "runtime_version": self.version()}
        (out / FORMAT_FILE).write_text(json.dumps(info, indent=1))
        return info

    def predictor(self, checkpoint: Path):
        return OrtGenAI(checkpoint, 512)

    def package(self, folder: Path, name: str) -> None:
        clean_tokenizer(folder)  # a folder exported before the export cleaned it

    def how_to_run(self, name: str) -> str:
        return f"""ONNX Runtime GenAI (`pip install onnxruntime-genai`) opens this folder as it is:

```python
{SNIPPET}```"""

    def load(self, checkpoint: Path, settings):
        return OrtGenAI(checkpoint, settings.prompt_tokens + settings.decode_tokens + 8, logits_all=False,
                        threads=settings.threads)

    def scoring(self, model, settings):
        model.close()
        return OrtGenAI(model.path, max(settings.ppl_window, 2048), threads=settings.threads)

    def lm(self, model, tokenizer, settings, add_bos):
        from .runtime_lm import RuntimeLM

        return RuntimeLM(model, tokenizer, add_bos, max_length=model.max_length)

    def size_bytes(self, checkpoint: Path) -> int:
        return sum((checkpoint / f).stat().st_size for f in WEIGHTS if (checkpoint / f).is_file())

    def num_params(self, model) -> int:
        return self.describe(model.path, model)["num_params"]

    def describe(self, checkpoint: Path, model) -> dict:
        return json.loads((checkpoint / FORMAT_FILE).read_text())

