"""Pydantic models at the boundaries: what goes into and comes out of every box of the loop."""
from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from . import objectives

ACTIONS = ("quantization", "asvd", "lora", "qlora", "pruning", "distillation", "pipeline", "search", "end")
Action = Literal["quantization", "asvd", "lora", "qlora", "pruning", "distillation", "pipeline", "search", "end"]


class ModelSpec(BaseModel):
    model_name: str
    num_params: int
    model_size_gb: float = Field(description="fp16 weight size, params * 2 bytes")
    dtype: str | None = None
    model_family: str = "unknown"
    min_memory_gb: float
    recommended_memory_gb: float
    size_class: Literal["small", "medium", "large"]
    preferred_methods: list[str]
    source: Literal["local", "hub", "database", "regex"]


class Step(BaseModel):
    """One compression step: a registered method and its parameters."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    condition: str | None = Field(
        default=None, description="optional guard, e.g. 'accuracy_drop > 0.02'; the step runs only when true")


class Strategy(BaseModel):
    action: Action
    steps: list[Step] = Field(default_factory=list)
    base: str = Field(default="base", description="'base' or an earlier episode id (chaining)")
    reasoning: str = ""
    policy: str = Field(default="", description="the policy that decided (after any fallback)")
    meta: dict[str, Any] = Field(default_factory=dict, description="how it was decided: the LLM's raw answers, "
                                 "their validation errors, the fallback reason")

    def key(self) -> str:
        """Identity of the strategy (what is done, not why): used to never repeat one."""
        body = json.dumps({"base": self.base, "steps": [s.model_dump(exclude_none=True) for s in self.steps]},
                          sort_keys=True)
        return hashlib.sha1(body.encode()).hexdigest()[:12]


class EvaluationResult(BaseModel):
    accuracy: float
    accuracy_stderr: float
    accuracy_n: int
    benchmark: str
    accuracy_detail: dict[str, Any] = Field(default_factory=dict)
    perplexity: float | None = None
    perplexity_tokens: int | None = None
    latency_ms: float = Field(description="per-token decode latency: the baseline's median times the candidate's "
                              "ratio to the baseline, timed in turn with it (paired); the raw median is in latency")
    latency: dict[str, Any] = Field(default_factory=dict)
    memory_gb: float = Field(description="peak RSS of load + inference, minus the runtime's RSS before loading")
    memory: dict[str, Any] = Field(default_factory=dict)
    model_size_gb: float = Field(description="bytes on disk of the saved checkpoint / 1e9")
    size_bytes: int
    num_params: int
    co2_grams: float = Field(description="CO2 per 1,000 generated tokens (the evaluation's own is in energy)")
    energy_kwh: float = Field(description="energy per 1,000 generated tokens")
    energy: dict[str, Any] = Field(default_factory=dict)
    eval_seconds: float
    eval_phases: dict[str, float] = Field(default_factory=dict, description="seconds of the measuring process's "
                                          "parts: load, latency, perplexity_kld, benchmarks")
    relative: dict[str, float] = Field(default_factory=dict, description="each objective / the baseline's")
    runtime: dict[str, Any] = Field(default_factory=dict, description="where it was measured: target, runtime and "
                                    "its version, the checkpoint's format (type, real bits per weight)")
    kld: float | None = Field(default=None, description="mean KL divergence (nats/token) of the candidate's "
                              "next-token distribution from the baseline's, on the perplexity tokens; None: not "
                              "measured (a runtime without full logits, or a result older than the measure)")
    kld_detail: dict[str, Any] = Field(default_factory=dict, description="its standard error, n, median, "
                                       "percentiles, same top token, Δp RMS (evaluation.measure.kl_stats)")
    intervals: dict[str, list[float] | None] = Field(
        default_factory=dict, description="objective -> [low, high], the confidence interval that decides ties in "
        "dominance; None: this measurement cannot tell values apart (an estimate derived from latency, or an "
        "objective not measured)")

    @model_validator(mode="after")
    def _unmeasured(self):
        """An objective without a value (not measured in that runtime, or a result older than it) can tell nothing
        apart: its interval is None, so it ties in dominance and adds no hypervolume (pareto.py)."""
        for k, v in self.objectives().items():
            if v is None:
                self.intervals[k] = None
        return self

    def objectives(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in OBJECTIVES}

    @property
    def eval_co2_grams(self) -> float:
        """CO2 of the evaluation itself (what a run spends), as codecarbon measured it."""
        return self.energy.get("eval_co2_grams", self.co2_grams)


OBJECTIVES = objectives.OBJECTIVES  # name -> +1 maximise, -1 minimise (objectives.py)


class EpisodeStatus(str, Enum):
    success = "success"
    failed = "failed"
    pruned = "pruned"  # its evaluation stopped after the first tokens (measure.hopeless): a failure, with numbers


class Episode(BaseModel):
    episode_id: str
    index: int
    strategy: Strategy
    status: EpisodeStatus
    result: EvaluationResult | None = None
    error: str | None = None
    failed_step: int | None = None
    pruned: dict[str, Any] | None = Field(default=None, description="a pruned episode's first tokens: perplexity, "
                                         "KL statistics, latency, memory, phases, eval_seconds")
    checkpoint: str | None = None
    compress_seconds: float = 0.0
    compress_energy: dict[str, Any] = Field(default_factory=dict, description="codecarbon, around the workers")
    step_log: list[dict[str, Any]] = Field(default_factory=list, description="per step: ran or skipped, and why")
    feasible: bool | None = Field(default=None, description="meets the run's goals (None: failed, or no goals)")
    infeasible_because: list[str] = Field(default_factory=list)
    goal_violations: dict[str, float] = Field(default_factory=dict, description="goal -> how far past its limit "
                                              "the candidate is (> 0 broken, <= 0 kept by that margin)")
    started_at: str
    finished_at: str
    worker: dict[str, Any] | None = Field(default=None, description="--parallel: the Ray task's process, node and "
                                          "attempt (1 unless a worker died and the episode re-ran)")


class ParetoSolution(BaseModel):
    episode_id: str
    strategy: Strategy
    objectives: dict[str, float | None]
    intervals: dict[str, list[float] | None] = Field(default_factory=dict, description="as EvaluationResult's")
    dominates: list[str] = Field(default_factory=list)
    checkpoint: str | None = None
