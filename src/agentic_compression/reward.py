"""The reward: one number per measured candidate, for the policies that need a scalar (bandit, PBT) and for the
frontier's balanced pick. The hypervolume stays the measure of the frontier as a whole.

    reward = w_acc * (acc / acc_base - 1) + sum_cost w_c * (1 - cost / cost_base)      if acc / acc_base >= floor
           = -1                                                                        otherwise (or a failure)

Each term is a relative change against the baseline, so a 1% accuracy gain and a 1% cost cut weigh what their
weights say; the baseline itself scores 0. Weights and the floor come from the experiment's RewardSettings.
"""
from __future__ import annotations

from typing import Mapping

from pydantic import BaseModel, Field, model_validator

from .schemas import OBJECTIVES

FAILED = -1.0


class RewardSettings(BaseModel):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 2.0, "latency_ms": 0.5, "memory_gb": 0.5, "model_size_gb": 1.0,
                                 "co2_grams": 0.25},
        description="weight of each objective's relative change against the baseline")
    accuracy_floor: float = Field(default=0.9, ge=0, le=1.0,
                                  description="a candidate below this fraction of the baseline's accuracy scores -1")

    @model_validator(mode="after")
    def _known(self):
        unknown = set(self.weights) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objective(s) in reward weights: {', '.join(sorted(unknown))}")
        return self


def reward(objectives: Mapping[str, float] | None, baseline: Mapping[str, float],
           settings: RewardSettings | None = None) -> float:
    s = settings or RewardSettings()
    if not objectives:
        return FAILED
    if baseline["accuracy"] and objectives["accuracy"] / baseline["accuracy"] < s.accuracy_floor:
        return FAILED
    total = 0.0
    for k, w in s.weights.items():
        if not baseline.get(k):
            continue
        ratio = objectives[k] / baseline[k]
        total += w * ((ratio - 1.0) if OBJECTIVES[k] > 0 else (1.0 - ratio))
    return total
