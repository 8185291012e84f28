"""ONNX Runtime GenAI on the CPU (Olive's target): the model builder of onnxruntime-genai exports a dense PyTorch-side
checkpoint to ONNX (fp32 for the baseline, or int8 / int4 weight-only MatMulNBits with its block sizes, accuracy
levels and RTN or k-quant rounding), and onnxruntime-genai's Generator runs it. The fp32 export is checked against the
PyTorch model (next-token KL below F32_KL on the check text), as the llama.cpp export is.

What chains here: dense PyTorch-side results (structured pruning, distillation, LoRA merged, sparsity stored dense).
What does not: compressed-tensors checkpoints (GPTQ, AWQ, AutoRound from llm-compressor) - the builder reads the
AutoGPTQ/AutoAWQ layouts, not compressed-tensors - and bitsandbytes or low-rank ones."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from . import Target, copy_side_files, register

FORMAT_FILE = "acf_format.json"
WEIGHTS = ("model.onnx", "model.onnx.data")
F32_KL = 1e-3


class OrtGenAI:
    """An ONNX Runtime GenAI model called like a transformers model: serving mode returns the last position's
    logits and carries the generator (its KV cache) between calls; scoring mode (``logits``) every position's."""

    def __init__(self, folder: Path, max_length: int, logits_all: bool = True):
        import onnxruntime_genai as og
        import torch

        limit = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]
        self.og, self.path, self.max_length, self.logits_all = og, folder, min(max_length, limit), logits_all
        self.model, self.device, self.gen = og.Model(str(folder)), torch.device("cpu"), None

    def _generator(self):
        p = self.og.GeneratorParams(self.model)
        p.set_search_options(max_length=self.max_length)
        return self.og.Generator(self.model, p)

    def __call__(self, input_ids, past_key_values: int | None = None, **_):
        import numpy as np
        import torch

        ids = input_ids[0].tolist()
        if past_key_values is None:
            self.gen = self._generator()
        self.gen.append_tokens(ids)
        logits = np.asarray(self.gen.get_output("logits"))[0]
        if not self.logits_all:
            logits = logits[-1:]
        return SimpleNamespace(logits=torch.from_numpy(np.array(logits, dtype=np.float32))[None],
                               past_key_values=(past_key_values or 0) + len(ids))

    def logits(self, ids: list[int]):
        import numpy as np

        gen = self._generator()
        gen.append_tokens(ids)
        return np.asarray(gen.get_output("logits"), dtype=np.float32)[0]

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


def check(model, tokenizer, runtime, kl_tolerance: float) -> dict:
    """The exported model against the PyTorch one on the check text: perplexity ratio and next-token KL."""
    import torch

    from ..llamacpp import CHECK_TEXT, next_token_stats

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
    runs = frozenset({"dense", "dense-smaller", "onnx"})
    requires = ("onnxruntime_genai", "onnx_ir")

    def version(self) -> str:
        from importlib.metadata import version

        return f"onnxruntime-genai {version('onnxruntime-genai')}"

    def export(self, dense: Path, out: Path, final=None, ctx=None) -> dict:
        from ..models import load

        out.parent.mkdir(parents=True, exist_ok=True)
        model, tok = load(dense)
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        if final is None:
            build(dense, out, "fp32", {})
            c = check(model, tok, OrtGenAI(out, 1024), F32_KL)
            if not c["ok"]:
                raise RuntimeError(f"the fp32 ONNX export does not match the PyTorch model: {c['why']}")
            info = {"format": "onnx", "type": "fp32", "conversion_check": c}
        else:
            p = {**final.params}
            precision = p.pop("precision", "int4")
            build(dense, out, precision, {k: v for k, v in p.items()})
            info = {"format": "onnx", "type": precision, **p}
        copy_side_files(dense, out)
        weights = sum((out / f).stat().st_size for f in WEIGHTS if (out / f).is_file())
        info |= {"num_params": params, "bits_per_weight": 8 * weights / params, "runtime": self.runtime,
                 "runtime_version": self.version()}
        (out / FORMAT_FILE).write_text(json.dumps(info, indent=1))
        return info

    def load(self, checkpoint: Path, settings):
        return OrtGenAI(checkpoint, settings.prompt_tokens + settings.decode_tokens + 8, logits_all=False)

    def scoring(self, model, settings):
        model.close()
        return OrtGenAI(model.path, max(settings.ppl_window, 2048))

    def lm(self, model, tokenizer, settings, add_bos):
        from .runtime_lm import RuntimeLM

        return RuntimeLM(model, tokenizer, add_bos, max_length=model.max_length)

    def size_bytes(self, checkpoint: Path) -> int:
        return sum((checkpoint / f).stat().st_size for f in WEIGHTS if (checkpoint / f).is_file())

    def num_params(self, model) -> int:
        return self.describe(model.path, model)["num_params"]

    def describe(self, checkpoint: Path, model) -> dict:
        return json.loads((checkpoint / FORMAT_FILE).read_text())

