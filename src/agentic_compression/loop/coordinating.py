"""The coordinator node: the stop rules, then the policy's next strategy (``--parallel K``: up to K), each new and
never refused by the resource check or the target."""
from __future__ import annotations

import time

from .. import goals, targets
from ..policies import PolicyView, propose
from ..schemas import Strategy
from . import resources
from .state import CompressionState


def decide(exp, state: CompressionState) -> dict:
    """Decide the next strategy (``--parallel K``: up to K at once), each one new, never refused by the
    resource check; or end the loop."""
    reason = stop_reason(exp, state)
    if reason:
        return {"should_terminate": True, "termination_reason": reason, "next_action": "end"}
    refused = list(state.get("refused", []))
    tried = {Strategy(**h["strategy"]).key() for h in state["history"]} | {r["key"] for r in refused}
    tried |= {e.strategy.key() for e in exp.episodes}
    k = min(exp.cfg.parallel, exp.cfg.max_episodes - state["current_episode"])
    batch: list[Strategy] = []
    newly_refused, end = 0, None
    while len(batch) < k and end is None:  # ends: every proposal is new (tried grows), or the policy says end
        view = PolicyView(
            spec=exp.spec, model_config=exp.model_config, methods=exp.available_methods(),
            baseline=exp.baseline, frontier=exp.frontier.summary(), history=state["history"],
            tried=set(tried), episodes_left=exp.cfg.max_episodes - state["current_episode"] - len(batch),
            seconds_left=exp.cfg.budget_hours * 3600 - (time.monotonic() - exp.t0),
            co2_grams_so_far=state.get("co2_grams_total", 0.0),
            skill_recommendations=state.get("skill_recommendations", []), overrides=exp.cfg.method_overrides,
            reward=exp.cfg.reward, goals=exp.cfg.goals, pending=list(batch))
        for strategy in propose(exp.policy, view, k - len(batch)):
            if strategy.action == "end":
                end = f"policy ended the search: {strategy.reasoning}"
                if newly_refused:
                    end = (f"no strategy fits: {newly_refused} refused by the resource check or the target "
                           f"(last: {refused[-1]['reason']}); {end}")
                break
            if strategy.key() in tried:
                end = f"policy {exp.policy.name} repeated a strategy it had tried"
                break
            tried.add(strategy.key())
            why_not = resources.check(strategy, exp.spec) or targets.refused(exp.targets, strategy)
            if why_not is None:
                batch.append(strategy)
            else:
                refused.append({"key": strategy.key(), "strategy": strategy.model_dump(), "reason": why_not})
                newly_refused += 1
    if not batch:
        return {"should_terminate": True, "next_action": "end", "refused": refused, "termination_reason": end}
    first = state["current_episode"]
    exp.progress("work", first, action=batch[0].action, steps=[st.method for st in batch[0].steps],
                 policy=batch[0].policy, **({"batch": len(batch)} if exp.cfg.parallel > 1 else {}))
    messages = [{"role": "assistant", "content": f"[{st.policy}] {st.action}: {[s.method for s in st.steps]} - "
                 f"{st.reasoning}"} for st in batch]
    if exp.cfg.parallel > 1:
        return {"batch": [{"index": first + i, "strategy": st.model_dump()} for i, st in enumerate(batch)],
                "next_action": "episodes", "refused": refused, "messages": messages}
    strategy = batch[0]
    return {"current_strategy": strategy.model_dump(), "next_action": strategy.action, "refused": refused,
            "messages": messages}


def stop_reason(exp, state: CompressionState) -> str | None:
    if exp.store.cancelled():
        return "cancelled by request"
    if state["current_episode"] >= exp.cfg.max_episodes:
        return f"max_episodes reached ({exp.cfg.max_episodes})"
    elapsed = time.monotonic() - exp.t0
    if elapsed >= exp.cfg.budget_hours * 3600:
        return f"time budget exceeded ({elapsed / 3600:.3f} h >= {exp.cfg.budget_hours} h)"
    if state["consecutive_no_improvement"] >= exp.cfg.patience:
        return f"converged: {exp.cfg.patience} consecutive episodes without frontier improvement"
    g = exp.cfg.goals
    if g.stop_when_met and g.active():
        done = next((e for e in exp.episodes if e.result and goals.met(e.result, exp.baseline, g)), None)
        if done is not None:
            return (f"goal met: {done.episode_id} is feasible" + (f" at {done.result.relative['model_size_gb']:.3f}"
                    f"x the baseline's size (target {g.target_size_ratio:g}x)" if g.target_size_ratio else ""))
    return None
