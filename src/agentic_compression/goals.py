"""Goals: the constraints a practitioner states ("the smallest model within 1% accuracy"), as INC's
tolerable_loss, Olive's stop_when_goals_met and ModelOpt's constraints do. Every measured episode is judged
feasible or not, with the reasons; the summary names the best feasible candidate per objective and a recommended
one (the smallest, then the fastest, among the feasible); ``stop_when_met`` ends a run once a feasible candidate
reaches the stated size target.

The accuracy rule, with the measured standard errors: a candidate breaks ``max_accuracy_drop`` when its drop below
the baseline exceeds the allowance by more than the standard error of that difference, sqrt(se_base^2 +
se_candidate^2). Within one standard error the data cannot say the allowance was broken, so it is not held
against the candidate; the margin is reported. (The items are the same for every candidate, so the true error of
the difference is smaller: the rule errs towards feasible.)"""
from __future__ import annotations

import math
import re

from pydantic import Field, field_validator

from . import objectives
from .schemas import OBJECTIVES, EvaluationResult
from .strict import Settings

_DROP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class Goals(Settings):
    max_accuracy_drop: str | None = Field(default=None, description="'0.01': at most 0.01 below the baseline's "
                                          "accuracy (absolute); '1%': at most 1% of it (relative)")
    max_size_gb: float | None = Field(default=None, gt=0, description="bytes on disk / 1e9")
    max_latency_ratio: float | None = Field(default=None, gt=0, description="decode latency / the baseline's")
    max_memory_gb: float | None = Field(default=None, gt=0, description="peak memory")
    max_kld: float | None = Field(default=None, gt=0, description="mean KL divergence to the baseline, nats/token "
                                  "(llama.cpp's 'Mean KLD'): Q8_0 is near 0.004, a good 4-bit near 0.03")
    target_size_ratio: float | None = Field(default=None, gt=0, description="with stop_when_met: the size / the "
                                            "baseline's a feasible candidate must reach to end the run")
    stop_when_met: bool = Field(default=False, description="end the run once a feasible candidate reaches "
                                "target_size_ratio (or, without one, once any candidate is feasible)")

    @field_validator("max_accuracy_drop", mode="before")
    @classmethod
    def _drop(cls, v):
        if v is None:
            return None
        m = _DROP.match(str(v))
        if not m or (m.group(2) and float(m.group(1)) >= 100) or (not m.group(2) and float(m.group(1)) >= 1):
            raise ValueError(f"'{v}' is not an accuracy drop: give an absolute one below 1 (0.01) or a relative "
                             "one below 100% (1%)")
        return f"{m.group(1)}{m.group(2)}"

    def active(self) -> bool:
        return any(v is not None for v in (self.max_accuracy_drop, self.max_size_gb, self.max_latency_ratio,
                                           self.max_memory_gb, self.max_kld, self.target_size_ratio))

    def allowed_drop(self, baseline_accuracy: float) -> float:
        value, pct = _DROP.match(self.max_accuracy_drop).groups()
        return float(value) / 100 * baseline_accuracy if pct else float(value)


def _checks(result: EvaluationResult, baseline: EvaluationResult, goals: Goals) -> list[tuple[str, float, str]]:
    """(goal, excess, what it says when broken) for each stated goal; excess > 0 breaks it. Accuracy's excess is in
    accuracy points past the allowance plus the standard error; the others' are fractions of the limit."""
    out = []
    if goals.max_accuracy_drop is not None:
        allowed, drop = goals.allowed_drop(baseline.accuracy), baseline.accuracy - result.accuracy
        se = math.hypot(baseline.accuracy_stderr, result.accuracy_stderr)
        out.append(("accuracy", drop - allowed - se, f"accuracy drop {drop:.3f} exceeds the allowed {allowed:.3f} "
                    f"by more than its standard error {se:.3f}"))
    if goals.max_size_gb is not None:
        out.append(("size", result.model_size_gb / goals.max_size_gb - 1,
                    f"size {result.model_size_gb:.3f} GB > {goals.max_size_gb:g} GB"))
    if goals.max_latency_ratio is not None:
        ratio = objectives.ratio(result.latency_ms, baseline.latency_ms)
        ratio = math.inf if ratio is None else ratio
        out.append(("latency", min(ratio / goals.max_latency_ratio - 1, 1e6),
                    f"latency {ratio:.2f}x the baseline's > {goals.max_latency_ratio:g}x"))
    if goals.max_memory_gb is not None:
        out.append(("memory", result.memory_gb / goals.max_memory_gb - 1,
                    f"peak memory {result.memory_gb:.3f} GB > {goals.max_memory_gb:g} GB"))
    if goals.max_kld is not None:  # the mean, as the accuracy goal reads its score: n is in the thousands
        kld = result.kld
        out.append(("kld", 1e6 if kld is None else kld / goals.max_kld - 1,
                    f"KL divergence not measured in {result.runtime.get('runtime', 'this runtime')}" if kld is None
                    else f"KL divergence {kld:.4f} > {goals.max_kld:g} nats/token"))
    return out


def judge(result: EvaluationResult, baseline: EvaluationResult, goals: Goals) -> list[str]:
    """Why ``result`` breaks the goals: empty when it is feasible."""
    return [why for _, excess, why in _checks(result, baseline, goals) if excess > 0]


def violations(result: EvaluationResult, baseline: EvaluationResult, goals: Goals) -> dict[str, float]:
    """goal -> how far past its limit ``result`` is (> 0 broken, <= 0 kept, by that margin): the constraints the
    search policies tell Optuna, and the margins an episode records."""
    return {goal: excess for goal, excess, _ in _checks(result, baseline, goals)}


def met(result: EvaluationResult, baseline: EvaluationResult, goals: Goals) -> bool:
    """A feasible candidate that reaches the stated size target: what stop_when_met waits for."""
    if judge(result, baseline, goals):
        return False
    return goals.target_size_ratio is None or result.model_size_gb <= goals.target_size_ratio * \
        baseline.model_size_gb


def pick(results: dict[str, EvaluationResult], baseline: EvaluationResult, goals: Goals) -> dict:
    """Among the measured candidates (the baseline included, by its id): which are feasible, the best feasible for
    each objective, and the recommended one: the smallest, then the fastest, then the most accurate."""
    feasible = {k: r for k, r in results.items() if not judge(r, baseline, goals)}
    best = {}
    for obj, sign in OBJECTIVES.items():  # among those that measured it
        have = [k for k in feasible if getattr(feasible[k], obj) is not None]
        if have:
            best[obj] = (max if sign > 0 else min)(have, key=lambda k, o=obj: getattr(feasible[k], o))
    rec = min(feasible, key=lambda k: (feasible[k].model_size_gb, feasible[k].latency_ms,
                                       -feasible[k].accuracy)) if feasible else None
    return {"goals": goals.model_dump(exclude_none=True), "feasible": sorted(feasible), "best_feasible": best,
            "recommended": rec}
