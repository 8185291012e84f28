"""The reward: one number per measured candidate, for the policies that need a scalar (bandit, PBT) and for the
frontier's balanced pick. The hypervolume stays the measure of the frontier as a whole.

    reward = w_acc * (acc / acc_base - 1) + sum_cost w_c * (1 - cost / cost_base)      if acc / acc_base >= floor
           = -1                                                                        otherwise (or a failure)

A cost read on a fixed scale (KL divergence, objectives.py) adds w_c * (kld_base - kld) / scale instead. Each
term is a relative change against the baseline, so a 1% accuracy gain and a 1% cost cut weigh what their
weights say; the baseline itself scores 0. Weights and the floor come from the experiment's RewardSettings.
"""
from __future__ import annotations

from typing import Mapping

from pydantic import Field, model_validator

from .objectives import OBJECTIVES, SPECS, normalised, ratio
from .strict import Settings

FAILED = -1.0


class RewardSettings(Settings):
    weights: dict[str, float] = Field(
        default_factory=lambda: {o.name: o.weight for o in SPECS},
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
    kept = ratio(objectives["accuracy"], baseline["accuracy"])
    if kept is not None and kept < s.accuracy_floor:
        return FAILED
    total = 0.0
    for k, w in s.weights.items():
        mine, base = normalised(k, objectives.get(k), baseline.get(k)), normalised(k, baseline.get(k), baseline.get(k))
        if mine is not None and base is not None:  # a ratio's baseline is 1; a fixed scale's, the baseline's value
            total += w * OBJECTIVES[k] * (mine - base)
    return total
