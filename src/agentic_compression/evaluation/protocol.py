"""What the evaluation process is asked (EvalRequest) and what it answers (Measured): the two files that pass between
the run (evaluation/__init__.py) and the measuring process (worker.py), checked on both sides. A measurement in the
eval cache is a Measured too. How one kind of benchmark is asked for and scored is a TaskEvaluator: lm-eval's
tasks (measure.LmEval) and HumanEval's sandboxed pass@1 (humaneval.HumanEval)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from ..config import EvalSettings


class Task(BaseModel):
    """One benchmark as the measuring process runs it."""

    name: str  # acf's benchmark name (benchmarks.py), or humaneval
    task: str  # lm-eval's task name (a local YAML built in include_path, or the Hub's task)
    metric: str
    items: int | None = None  # local files: the seeded subset's size and its digest
    digest: str | None = None


class Pruned(Exception):
    """The first measure.SLICE scored tokens already put the candidate far past a limit (measure.hopeless): the
    evaluation stopped there, with the reason and the slice's numbers (``partial``)."""

    def __init__(self, reason: str, partial: dict[str, Any]):
        super().__init__(reason)
        self.partial = partial


class EvalRequest(BaseModel):
    """The same for every candidate of an experiment except the checkpoint (and the baseline it is timed beside)."""

    model_config = ConfigDict(extra="forbid")
    settings: EvalSettings
    include_path: str | None  # the folder of the local benchmarks' lm-eval YAML
    tasks: list[Task]
    ppl_ids: list[int]  # the perplexity text's tokens
    prompt_ids: list[int]  # the latency prompt's tokens
    bos_id: int | None  # the tokenizer starts every text with BOS (bos_id), or not (None)
    checkpoint: str = ""
    baseline_checkpoint: str | None = None  # timed in turn with the candidate (paired latency)
    baseline_target: str | None = None  # the runtime the baseline is loaded in (None: the candidate's)
    reference_logprobs: str | None = None  # where the baseline's log-probabilities are (StoredLogProbs)
    keep_logprobs: str | None = None  # where this checkpoint's are to be stored (it is a baseline)
    prune: dict[str, float] | None = None  # limits past which the first tokens stop the evaluation (measure.hopeless)

    def key(self) -> str:
        """What the measurements depend on besides the checkpoint: paths, the cache switch and the timeout left out.
        A sha256 prefix, the eval cache's key."""
        import hashlib
        import json

        from .measure import KLD, PAIRING

        body = {"settings": self.settings.model_dump(exclude={"cache", "timeout_s"}), "include_path": None,
                "pairing": PAIRING, "kld": KLD,
                "tasks": [t.model_dump(exclude={"task"}, exclude_none=True) for t in self.tasks],
                "ppl_ids": self.ppl_ids, "prompt_ids": self.prompt_ids, "bos_id": self.bos_id}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class Measured(BaseModel):
    """The measuring process's answer: raw measurements, before the run divides by the baseline."""

    model_config = ConfigDict(extra="forbid")
    accuracy: dict[str, Any]  # value, stderr, n, and per benchmark (measure.aggregate)
    perplexity: dict[str, Any]  # perplexity, tokens (measure.perplexity)
    kld: dict[str, Any] | None = None  # KL divergence to the baseline (measure.kl_stats); None: not measurable here
    latency: dict[str, Any]  # decode and prefill medians, repeats, and the pairing with the baseline
    energy: dict[str, Any]  # codecarbon's energy and CO2 over the scoring, its duration and source
    memory: dict[str, Any]  # peak and runtime RSS (or the CUDA allocator's peak), load time, threads, device
    size_bytes: int  # the checkpoint's bytes on disk
    num_params: int  # logical parameters (formats.logical_params, or the runtime's own count)
    runtime: dict[str, Any]  # target, runtime, version, and the target's format facts (Target.describe)
    phases: dict[str, float] = {}  # seconds each part took: load, latency (paired included), perplexity_kld, benchmarks
    measured_at: str | None = None  # when it was measured (added by the run)
    cached_from: str | None = None  # the eval-cache entry it came from, when it did


class TaskEvaluator(Protocol):
    """One kind of benchmark: which of acf's benchmark names it scores, the Task the run asks for (built once per
    experiment), and its scores on a loaded model in the measuring process: {benchmark name: {metric, value,
    stderr, stderr_source, n, ...}}, what measure.aggregate averages."""

    def claims(self, name: str) -> bool: ...

    def task(self, name: str, settings: EvalSettings, data_dir: Path, include: Path) -> Task: ...

    def score(self, model, tokenizer, tasks: list[Task], request: EvalRequest, target) -> dict[str, dict]: ...


def evaluators() -> list[TaskEvaluator]:
    """Every kind (registry.EVALUATORS), in registration order, the most specific first: a benchmark is scored by
    the first that claims it."""
    from ..registry import EVALUATORS

    return list(EVALUATORS.values())


def evaluator_for(name: str) -> TaskEvaluator:
    return next(e for e in evaluators() if e.claims(name))
