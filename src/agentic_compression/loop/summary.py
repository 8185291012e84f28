"""The run's summary, written after every episode and at the end (final_results.json and frontier.json, through
store.py): what the frontier holds, the reference and each target's baseline, the goals' verdict, the recommended
candidate and how it compares with the closest preset, and every episode's numbers."""
from __future__ import annotations

import time

from .. import goals, objectives
from ..schemas import Episode, EpisodeStatus
from . import presets


def allocation(e: Episode) -> dict | None:
    """A mixed-precision episode's per-layer sensitivities and the formats allocated (methods/mixed.py): measured in
    a PyTorch step, or in the llamacpp export (gguf.avg_bits)."""
    for s in e.step_log:
        if "mixed" in s.get("measured", {}):
            return s["measured"]["mixed"]
    return e.result.runtime.get("mixed") if e.result else None


def history_entry(ep: Episode, improved: bool) -> dict:
    ok = ep.result is not None
    return {"episode_id": ep.episode_id, "strategy": ep.strategy.model_dump(), "status": ep.status.value,
            "objectives": ep.result.objectives() if ok else None, "error": ep.error,
            "relative": ep.result.relative if ok else None, "entered_frontier": improved,
            **({"feasible": ep.feasible, "infeasible_because": ep.infeasible_because,
                "goal_violations": ep.goal_violations} if ep.feasible is not None else {})}


def goal_summary(exp) -> dict | None:
    """Feasible candidates, the best feasible per objective and the recommended one (goals.py); None without
    goals."""
    if not exp.cfg.goals.active() or exp.baseline is None:
        return None
    measured = {"baseline": exp.baseline} | {e.episode_id: e.result for e in exp.episodes if e.result}
    return goals.pick(measured, exp.baseline, exp.cfg.goals)


def reference_summary(exp) -> dict | None:
    """The transformers fp32 model beside each target's baseline: its own numbers, and each baseline's decode
    time as a ratio to it, timed side by side (a candidate's is that times its ratio to its target's baseline)."""
    if exp.reference is None or not exp.baselines:
        return None
    out = {"result": exp.reference.model_dump(), "targets": {}}
    for name, b in exp.baselines.items():
        pair = b.latency.get("paired") or {}
        out["targets"][name] = {
            "latency_ratio": pair.get("ratio", 1.0), "latency_ci": pair.get("ci"),
            "size_ratio": b.size_bytes / exp.reference.size_bytes,
            "memory_ratio": b.memory_gb / exp.reference.memory_gb if exp.reference.memory_gb > 0 else None}
    return out


def recommended(exp, goals_said: dict | None) -> str | None:
    """The candidate a run recommends deploying: with goals, their pick (``goals_said``, goal_summary's:
    feasible, the smallest, then the fastest); else the compressed frontier member with the highest reward (what
    `acf export --best` writes)."""
    if exp.cfg.goals.active():
        return (goals_said or {}).get("recommended")
    best = exp.frontier.balanced(compressed=True)
    return best.episode_id if best else None


def versus_preset(exp, pick: str | None) -> str | None:
    """How the recommended candidate compares with the closest preset of its target."""
    ep = next((e for e in exp.episodes if e.episode_id == pick and e.result), None)
    near = ep and presets.closest(ep.result, ep.result.runtime.get("target", ""), exp.presets)
    return presets.comparison(ep.episode_id, ep.result, near) if near else None


def write_summary(exp, state: dict, complete: bool) -> dict:
    frontier = {
        "objectives": {o.name: o.goal for o in objectives.SPECS},
        "hypervolume": exp.frontier.hypervolume(), "reference_point": "accuracy 0; each cost at "
        f"{exp.frontier.ref_factor}x the baseline (objectives normalised by the baseline)",
        "noise_tolerance": exp.frontier.tolerance,
        "solutions": [s.model_dump() for s in exp.frontier.solutions]}
    goals_said = goal_summary(exp)
    balanced, pick = exp.frontier.balanced(), recommended(exp, goals_said)
    summary = {
        "complete": complete, "experiment": exp.dir.name, "model": exp.cfg.model,
        "model_path": str(exp.model_path), "dataset": exp.cfg.dataset,
        "termination_reason": state.get("termination_reason"),
        "episodes_run": len(exp.episodes),
        "episodes_failed": sum(e.status == EpisodeStatus.failed for e in exp.episodes),
        "episodes_pruned": sum(e.status == EpisodeStatus.pruned for e in exp.episodes),
        "elapsed_seconds": time.monotonic() - exp.t0,
        "co2_grams_total": state.get("co2_grams_total"),
        "baseline": exp.baseline.model_dump() if exp.baseline else None,
        "targets": list(exp.targets), "reference": reference_summary(exp),
        "baselines": {n: {"checkpoint": str(exp.baseline_checkpoint(n)), "objectives": r.objectives(),
                          "runtime": r.runtime} for n, r in exp.baselines.items()},
        "pareto_frontier": [s.episode_id for s in exp.frontier.solutions],
        "balanced": balanced.episode_id if balanced else None, "recommended": pick,
        "hypervolume_history": exp.hv_history,
        "presets": presets.summary(exp.presets),
        "versus_preset": versus_preset(exp, pick),
        "refused": state.get("refused", []),
        "goals": goals_said,
        "coordinator_messages": [getattr(m, "content", m) for m in state.get("messages", [])],
        "episodes": [{"episode_id": e.episode_id, "status": e.status.value,
                      "steps": [s.model_dump() for s in e.strategy.steps], "reasoning": e.strategy.reasoning,
                      "objectives": e.result.objectives() if e.result else None,
                      "accuracy_stderr": e.result.accuracy_stderr if e.result else None,
                      "accuracy_n": e.result.accuracy_n if e.result else None,
                      "perplexity": e.result.perplexity if e.result else None,
                      "kld": e.result.kld_detail or None if e.result else None,
                      "relative": e.result.relative if e.result else None,
                      "intervals": e.result.intervals if e.result else None, "error": e.error,
                      "feasible": e.feasible, "infeasible_because": e.infeasible_because,
                      "checkpoint": e.checkpoint, "compress_seconds": e.compress_seconds,
                      "runtime": e.result.runtime if e.result else None, "mixed": allocation(e)}
                     for e in exp.episodes],
    }
    exp.store.write_summary(frontier, summary)
    return summary
