"""Deployment targets: the runtime a candidate is measured in, as it would be served.

A target declares the checkpoint formats it runs (``Method.runtime`` values), how a PyTorch-side checkpoint is
exported to it, and how the evaluation process loads what it exported: in serving mode for latency and memory, in
scoring mode for perplexity and lm-eval. A new runtime is one module here plus its methods. vLLM (vllm.py) is written
but not yet run on a GPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError


class Target:
    name: ClassVar[str]
    runtime: ClassVar[str]  # what results record as the runtime
    runs: ClassVar[frozenset[str]]  # the Method.runtime values whose checkpoints it serves
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
        return method.runtime in self.runs

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


TARGETS: dict[str, Target] = {}


def register(target: type[Target]) -> type[Target]:
    if target.name in TARGETS and type(TARGETS[target.name]) is not target:
        raise ValueError(f"target name '{target.name}' is taken by {type(TARGETS[target.name]).__qualname__}")
    TARGETS[target.name] = target()
    return target


def get(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown target '{name}'", f"choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def ready(name: str) -> Target:
    """The target, or a one-line error saying what to install."""
    t = get(name)
    ok, why = t.available()
    if not ok:
        raise UserError(f"target '{name}' cannot run here: {why}", "run setup.sh, which installs every CPU runtime")
    return t


AUTO = "auto"
HUMANEVAL_ONLY_HERE = "transformers"  # HumanEval executes generated code: only the transformers target generates it


def _runs(target: Target, strategy) -> bool:
    from .. import methods

    return all(m in methods.REGISTRY and target.offers(methods.get(m)) for m in (s.method for s in strategy.steps))


def route(chosen: dict[str, Target], strategy) -> Target:
    """The target a strategy's result runs in: the first of a run's targets (``chosen``, in order) that runs every
    step's format (llama.cpp for a GGUF type, ONNX Runtime GenAI for its own quantization; a PyTorch-only strategy
    goes to the first target listed)."""
    for t in chosen.values():
        if _runs(t, strategy) and t.refuses(strategy.steps) is None:
            return t
    first = next(iter(chosen.values()))
    return next((t for t in chosen.values() if _runs(t, strategy)), first)  # validation says why


def refused(chosen: dict[str, Target], strategy) -> str | None:
    """Why the target whose formats a strategy needs cannot run it as written (a converter's limits): refused
    before an episode is spent on it, as the resource check refuses."""
    t = route(chosen, strategy)
    found = t.refuses(strategy.steps) if _runs(t, strategy) else None
    return f"the {t.name} target: {found[1]}" if found else None


def choose(device: str, humaneval: bool = False) -> tuple[list[str], str]:
    """What ``--targets auto`` runs on this machine, and why: the runtimes installed here that serve on ``device``
    (CPU: llama.cpp and ONNX Runtime GenAI; CUDA: vLLM and transformers); transformers where none is installed.
    The transformers fp32 model is measured in any case, as the reference."""
    if humaneval:
        return [HUMANEVAL_ONLY_HERE], "HumanEval runs in transformers only"
    wanted = ("vllm", "transformers") if device == "cuda" else ("llamacpp", "ortgenai")
    names = [n for n in wanted if TARGETS[n].available()[0]]
    if names:
        return names, f"the runtimes installed here that serve on {device.upper()}"
    return ["transformers"], (f"neither {' nor '.join(wanted)} is installed here (setup.sh installs the CPU "
                              "runtimes); candidates are measured in transformers")


def resolve(cfg):
    """``cfg`` (a RunConfig) with ``auto`` replaced by the targets chosen here, and the reason (None when the run
    named its targets): an experiment records the targets it ran, so a resume elsewhere measures in the same."""
    if cfg.eval.target != AUTO:
        return cfg, None
    from ..benchmarks import HUMANEVAL, names as benchmark_names

    chosen, why = choose(cfg.eval.device, HUMANEVAL in benchmark_names(cfg.eval.benchmark))
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"target": ",".join(chosen)})}), why


from . import llamacpp, ortgenai, transformers, vllm  # noqa: E402,F401  (registration)
