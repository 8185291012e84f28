"""Deployment targets: the runtime a candidate is measured in, as it would be served.

A target (base.py) declares the checkpoint formats it runs (``Method.produces`` values) and the file formats it
writes, how a PyTorch-side checkpoint is exported to it, and how the evaluation process loads what it exported: in
serving mode for latency and memory, in scoring mode for perplexity and lm-eval. A new runtime is one module here (plus
its lazy entry in registry.py, and its final methods in methods/). Importing this package checks the contracts: each
target's formats are registered ones or its own, and some target runs what each method produces. vLLM (vllm.py) is
written but not yet run on a GPU."""
from __future__ import annotations

from .. import methods
from ..errors import UserError
from ..formats import FORMATS
from ..registry import TARGETS
from .base import SIDE_FILES, Target, byte_level_cleaned, clean_tokenizer, copy_side_files, register

__all__ = ["AUTO", "SIDE_FILES", "TARGETS", "Target", "byte_level_cleaned", "choose", "clean_tokenizer",
           "copy_side_files", "get", "ready", "refused", "register", "resolve", "route"]


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
    from ..benchmarks import HUMANEVAL
    from ..benchmarks import names as benchmark_names

    chosen, why = choose(cfg.eval.device, HUMANEVAL in benchmark_names(cfg.eval.benchmark))
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"target": ",".join(chosen)})}), why


def _formats_known(name: str, target: Target) -> str | None:
    """A target's contract: every format it runs is a registered one or its own file's, and it runs what it writes."""
    unknown = sorted(target.runs - set(FORMATS) - target.writes)
    if unknown:
        return f"it runs {', '.join(unknown)}, which no format registers (formats: {', '.join(FORMATS)})"
    return None if target.writes <= target.runs else f"it writes {', '.join(target.writes - target.runs)} but " \
                                                      "does not run it"


def _run_somewhere(name: str, method) -> str | None:
    """A method's contract: some target runs the format it produces."""
    if any(method.produces in t.runs for t in TARGETS.values()):
        return None
    return f"it produces '{method.produces}', which no target runs (" + \
        "; ".join(f"{t.name}: {', '.join(sorted(t.runs))}" for t in TARGETS.values()) + ")"


TARGETS.contract(_formats_known)
for _name in list(TARGETS):
    TARGETS[_name]  # noqa: B018  (each built-in target resolved now, so its contract is checked at import)
methods.REGISTRY.contract(_run_somewhere)
