"""The Target base class: what a runtime declares (the formats it runs and writes, its presets) and the lifecycle
every target follows, in this order: ``available`` (can it run here), ``offers`` / ``refuses`` (which strategies it
runs), ``export`` (in the episode's process: the PyTorch-side checkpoint to the runtime's own file, applying its final
method), then in the evaluation process ``load`` (serving mode: latency, memory), ``scoring`` (every position's logits:
perplexity, KL divergence) and ``lm`` (lm-eval's accuracy), and after the run ``predictor`` / ``package`` /
``how_to_run`` (``acf export``). Also the helpers its exports share (the tokenizer's side files)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

from ..registry import TARGETS


class Target:
    name: ClassVar[str]
    runtime: ClassVar[str]  # what results record as the runtime
    runs: ClassVar[frozenset[str]]  # the formats whose checkpoints it serves (Method.produces values)
    # its own file formats among them (gguf, onnx): what its final methods produce and its export writes
    writes: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[tuple[str, ...]] = ()
    # False: it serves the PyTorch-side checkpoint as saved (transformers, vLLM); True: export() writes its own file
    exports: ClassVar[bool] = True
    # True: scoring mode gives every position's logits over the whole vocabulary, so KL divergence is measured here
    full_logits: ClassVar[bool] = True
    # the community's presets here, what a practitioner picks by hand in a minute: name -> the strategy's steps
    # (a parameter "largest" takes the largest of its choices the model allows); measured beside every frontier
    # (presets.py)
    presets: ClassVar[dict[str, list[dict]]] = {}

    def available(self) -> tuple[bool, str]:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return (False, f"missing package(s): {', '.join(missing)}") if missing else (True, "")

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.requires[0])

    def offers(self, method) -> bool:
        """Whether a method's result runs here (alone, or chained into this target's own export)."""
        return method.produces in self.runs

    def refuses(self, steps) -> tuple[int, str] | None:
        """(step index, why) when this target cannot run these steps although it runs each one's format (a
        converter's limits), else None."""
        return None

    def export(self, dense: Path, out: Path, final=None, ctx=None) -> dict:
        """Write ``out`` from a dense PyTorch-side checkpoint, applying ``final`` (a Step of this target's own
        file-level method) on the way; returns what the export measured (conversion check, bits per weight)."""
        raise NotImplementedError

    # ---- in the evaluation process ----
    def load(self, checkpoint: Path, settings) -> Any:
        """The model in serving mode, called like a transformers model."""
        raise NotImplementedError

    def scoring(self, model, settings):
        """The model as perplexity and lm-eval need it (every position's logits)."""
        return model

    def lm(self, model, tokenizer, settings, add_bos: bool | None):
        """An lm-eval ``LM`` over the loaded model."""
        raise NotImplementedError

    def throughput(self, model, prompt: list[int], settings) -> dict | None:
        """Output tokens per second at a fixed batch where the runtime serves batches (vLLM), else None."""
        return None

    # a runtime without full logits scores the perplexity windows itself: perplexity(model, ids, settings, bos,
    # reference, keep, prune) -> dict (vllm.py); None: the evaluation runs evaluation.measure.perplexity over scoring
    # mode's logits, with the KL divergence from the baseline's log-probabilities on the same windows
    perplexity: ClassVar[Any] = None

    def memory(self, model) -> dict | None:
        """The model's memory where the process's own peak cannot see it (a runtime in a process of its own), or
        None: the evaluation reads its VmHWM, or on CUDA the allocator's peak."""
        return None

    def size_bytes(self, checkpoint: Path) -> int:
        return sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())

    def num_params(self, model) -> int:
        raise NotImplementedError

    def describe(self, checkpoint: Path, model) -> dict:
        """The format facts a result records beside runtime and version."""
        return {}

    # ---- `acf export` ----
    def predictor(self, checkpoint: Path):
        """The checkpoint in scoring mode, as its users load it: ``logits(ids)`` gives every position's logits (a
        torch tensor or numpy array), ``close()`` frees it."""
        return _TorchScorer(checkpoint)

    def how_to_run(self, name: str) -> str:
        """Markdown for the model card: how this runtime's users run the exported folder (PATH) named ``name``."""
        return ""

    def package(self, folder: Path, name: str) -> None:
        """Write into an exported ``folder`` what this runtime's tools read beside the weights (an Ollama
        Modelfile)."""


class _TorchScorer:
    def __init__(self, checkpoint: Path):
        from ..models import load

        self.model = load(checkpoint)[0]

    def logits(self, ids: list[int]):
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float()

    def close(self) -> None:
        self.model = None


# what besides the weights an exported checkpoint keeps: the tokenizer the evaluation scores with, the config the model
# card reads (acf's own bookkeeping files excluded)
SIDE_FILES = ("*.json", "*.jinja", "*.model", "*.txt")
NOT_SIDE = ("model.safetensors.index.json", "acf_format.json", "acf_conversion.json",
            "acf_lowrank.json")  # formats.low_rank.LOWRANK_FILE


def byte_level_cleaned(tokenizer_json: dict) -> bool:
    """A byte-level BPE that transformers rebuilt from a GGUF claims byte fallback and carries SentencePiece's
    decoders (ByteFallback, the '▁' replacement) beside ByteLevel: llama.cpp's converter then takes it for a
    SentencePiece vocabulary, and ONNX Runtime GenAI's tokenizer encodes every space as the unknown token. Neither
    flag does anything on a byte-level vocabulary (every byte has a token, no token holds '▁'), so both go: the
    model keeps byte fallback off and the decoder is ByteLevel alone. Returns whether ``tokenizer_json`` changed."""
    pre, model = json.dumps(tokenizer_json.get("pre_tokenizer")), tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        return False
    changed = bool(model.get("byte_fallback"))
    model["byte_fallback"] = False
    dec = tokenizer_json.get("decoder") or {}
    level = [d for d in dec.get("decoders", []) if d.get("type") == "ByteLevel"]
    if dec.get("type") == "Sequence" and level:
        tokenizer_json["decoder"], changed = level[0], True
    return changed


def clean_tokenizer(folder: Path) -> None:
    """``folder``'s tokenizer.json, byte_level_cleaned in place (a real file, never a link's target)."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        j = json.loads(tj.read_text(encoding="utf-8"))
        if byte_level_cleaned(j):
            tj.unlink()
            tj.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")


def copy_side_files(dense: Path, out: Path) -> None:
    import shutil

    for pattern in SIDE_FILES:
        for f in dense.glob(pattern):
            if f.name not in NOT_SIDE:
                shutil.copy2(f, out / f.name)


def register(target: type[Target]) -> type[Target]:
    """Add a target; a taken name, or formats it runs that no one declares, is an error (registry.py)."""
    return TARGETS.register(target)
