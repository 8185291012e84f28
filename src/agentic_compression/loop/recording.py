"""What the loop records when an episode ends: the episode (goals judged), the frontier and its dominance, the
hypervolume, the model card, results.json, the history the policies read, the skill memory, the summary."""
from __future__ import annotations

from pathlib import Path

from .. import goals
from ..card import write_card
from ..reward import reward
from ..schemas import Episode, EpisodeStatus, EvaluationResult, ParetoSolution, Strategy
from . import episodes
from .state import CompressionState
from .summary import history_entry, write_summary


def solution(ep: Episode) -> ParetoSolution:
    return ParetoSolution(episode_id=ep.episode_id, strategy=ep.strategy, objectives=ep.result.objectives(),
                          intervals=ep.result.intervals, checkpoint=ep.checkpoint)


def record(exp, state: CompressionState) -> dict:
    idx, info = state["current_episode"], state["compress_info"]
    strategy = Strategy(**state["current_strategy"])
    ok = state.get("current_result") is not None and not state.get("current_error")
    ep = Episode(
        episode_id=f"episode_{idx:03d}", index=idx, strategy=strategy,
        status=EpisodeStatus.success if ok else EpisodeStatus.pruned if state.get("pruned") else
        EpisodeStatus.failed,
        result=EvaluationResult(**state["current_result"]) if ok else None,
        error=None if ok else state.get("current_error"), failed_step=state.get("failed_step"),
        pruned=None if ok else state.get("pruned"),
        checkpoint=state.get("compressed_model_path") if ok else None,
        compress_seconds=info["seconds"], compress_energy=info["energy"], step_log=info["steps"],
        started_at=info["started_at"], finished_at=info.get("finished_at") or episodes.now(),
        worker=info.get("worker"))
    if ok and exp.cfg.goals.active():
        ep.infeasible_because = goals.judge(ep.result, exp.baseline, exp.cfg.goals)
        ep.goal_violations = goals.violations(ep.result, exp.baseline, exp.cfg.goals)
        ep.feasible = not ep.infeasible_because
    exp.episodes.append(ep)
    improved = False
    if ok:
        improved = exp.frontier.add(solution(ep))
    evaluated = {"baseline": exp.baseline.objectives()} | {
        e.episode_id: e.result.objectives() for e in exp.episodes if e.result}
    exp.frontier.record_dominance(evaluated, {e.episode_id: e.result.intervals for e in exp.episodes
                                              if e.result})
    exp.record_hv(ep.episode_id)
    if ok:  # before results.json: a finished episode's checkpoint always carries its card
        write_card(Path(ep.checkpoint), ep=ep, baseline=exp.baseline, base_model=exp.spec.model_name,
                   calibration=exp.cfg.calibration.source, dataset=exp.cfg.dataset)
    exp.store.write_episode(ep, improved)
    history = (state["history"] + [history_entry(ep, improved)])[-exp.cfg.history_limit:]
    co2 = state.get("co2_grams_total", 0.0) + (ep.result.eval_co2_grams if ok else 0.0) + \
        ep.compress_energy.get("co2_grams", 0.0)
    update = {"history": history, "current_episode": idx + 1,
              "consecutive_no_improvement": 0 if improved else state["consecutive_no_improvement"] + 1,
              "co2_grams_total": co2, "current_strategy": None, "pruned": None}
    if exp.skills:
        base, measured = exp.baseline.objectives(), ep.result.objectives() if ok else None
        exp.skills.record(exp.skill_ctx, strategy.model_dump(), ok, measured, base,
                          reward(measured, base, exp.cfg.reward), ep.error)
        update["skill_recommendations"] = exp.recommendations()
    write_summary(exp, {**state, **update}, complete=False)
    return update


def record_batch(exp, state: CompressionState) -> dict:
    """Record the batch's episodes one by one in episode order, exactly as ``record`` records one."""
    merged: dict = dict(state)
    update: dict = {}
    for item, outcome in zip(state["batch"], state["outcomes"]):
        merged.update({"current_episode": item["index"], "current_strategy": item["strategy"], **outcome})
        update.update(record(exp, merged))
        merged.update(update)
    return {**update, "batch": [], "outcomes": []}
