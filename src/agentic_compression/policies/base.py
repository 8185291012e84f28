"""The coordinator's Policy interface: the same view in, one Strategy out (or up to K, for parallel episodes). The
built-in rule policy, the search policies and the LLM coordinator all sit behind it."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..goals import Goals
from ..methods import Method
from ..reward import RewardSettings
from ..schemas import EvaluationResult, ModelSpec, Step, Strategy


@dataclass
class PolicyView:
    spec: ModelSpec
    model_config: dict[str, Any]
    methods: dict[str, type[Method]]  # available here only
    baseline: EvaluationResult | None
    frontier: list[dict]  # ParetoFrontier.summary()
    history: list[dict]  # episodes so far, oldest first (bounded by history_limit): strategy, status, objectives, error
    tried: set[str]  # Strategy.key() of every strategy already run or refused
    episodes_left: int
    seconds_left: float
    co2_grams_so_far: float = 0.0
    skill_recommendations: list[dict] = field(default_factory=list)
    overrides: dict[str, dict] = field(default_factory=dict)
    reward: RewardSettings = field(default_factory=RewardSettings)
    goals: Goals = field(default_factory=Goals)  # the run's constraints; history entries say which were met
    pending: list[Strategy] = field(default_factory=list)  # proposed for this batch, not measured yet (in tried)

    def step(self, method: str, chosen: dict[str, Any] | None = None) -> Step:
        """A step of ``method``: its defaults, then ``chosen``, then the user's overrides (which always win)."""
        params = self.methods[method].validated({**(chosen or {}), **self.overrides.get(method, {})})
        return Step(method=method, params=params)


def chainable(entry: dict) -> bool:
    """Whether PyTorch-side steps can start from a history entry's checkpoint: a successful episode that did not end
    in a runtime's deployed file (a GGUF or ONNX export is served, never loaded back into PyTorch)."""
    from ..methods import REGISTRY

    return entry["status"] == "success" and not any(
        getattr(REGISTRY.get(s["method"]), "final", False) for s in entry["strategy"]["steps"])


class Policy(Protocol):
    name: str

    def decide(self, view: PolicyView) -> Strategy: ...


def propose(policy: Policy, view: PolicyView, k: int) -> list[Strategy]:
    """Up to ``k`` strategies to run at once, each different from every tried or pending one; a single "end"
    strategy when the policy has nothing left. A policy with its own ``propose`` (one LLM answer with K decisions,
    one PBT generation) answers itself; any other is asked K times, each time told what the batch already holds
    (in ``tried`` and ``pending``), which is the rule policy's top K and the random policy's K draws. With k=1 this
    is exactly ``decide``."""
    if hasattr(policy, "propose"):
        return policy.propose(view, k)
    out: list[Strategy] = []
    for _ in range(k):
        st = policy.decide(with_pending(view, out))
        if st.action == "end" or st.key() in view.tried | {s.key() for s in out}:
            return out or [st]
        out.append(st)
    return out


def with_pending(view: PolicyView, batch: list[Strategy]) -> PolicyView:
    """The view a policy decides the next member of a batch in: the batch so far is pending and counts as tried."""
    if not batch:
        return view
    return replace(view, tried=view.tried | {s.key() for s in batch}, pending=[*view.pending, *batch])


def candidate_steps(view: PolicyView) -> list[Step]:
    """Every single-step configuration of the available methods that fits this model and is not yet tried:
    choices and grids enumerated, other parameters at their defaults, then the user's overrides."""
    out = []
    for name, m in sorted(view.methods.items()):
        if not m.standalone:
            continue
        choice = [p for p in m.params if p.options() is not None and p.name not in view.overrides.get(name, {})]
        for combo in itertools.product(*(p.options() for p in choice)):
            step = view.step(name, dict(zip((p.name for p in choice), combo)))
            if m.check(step.params, view.model_config) is None and step not in out:
                out.append(step)
    return [s for s in out if single(m_action(view, s), s).key() not in view.tried]


SURE = 0.3  # the confidence at which the skill memory's "wrecked" drops a method: two prior entries on a model of
# this family and size (on any task)


def learned(view: PolicyView) -> dict[tuple[str, int], float]:
    """Each (method, bits) family's learned reward in the skill memory: its mean reward (clipped to [-1, 1]) times
    its confidence."""
    return {(r["method"], r["bits"]): max(-1.0, min(1.0, r["mean_reward"])) * r["confidence"]
            for r in view.skill_recommendations}


def wrecked_methods(view: PolicyView) -> set[str]:
    """The methods whose family wrecked most models like this one in the skill memory (the shipped prior's ASVD on a
    135M model): wrecked_rate over one half, at confidence SURE or more."""
    return {r["method"] for r in view.skill_recommendations
            if r.get("wrecked_rate", 0.0) > 0.5 and r.get("verdict_confidence", r["confidence"]) >= SURE}


def m_action(view: PolicyView, step: Step) -> str:
    return view.methods[step.method].action


def single(action: str, step: Step, reasoning: str = "", policy: str = "") -> Strategy:
    return Strategy(action=action, steps=[step], reasoning=reasoning, policy=policy)
