"""Resuming a run that stopped: the baseline and finished episodes reloaded from the folder, the loop restarted
after its last checkpointed node, or its state rebuilt from the episodes' results.json when state.sqlite is
missing, unreadable or behind them."""
from __future__ import annotations

import logging

from . import baselines
from .recording import solution
from .store import STATE_DB

log = logging.getLogger("acf.experiment")


def resume(exp) -> dict:
    exp.store.clear_failure()
    done = exp.store.finished_episodes()
    if exp.store.has_baseline():
        baselines.reload_baseline(exp)
    else:  # it stopped before the baseline was measured (episodes, if any, are kept and reloaded)
        exp.store.write_spec(exp.spec)
        baselines.evaluate_baseline(exp)
    exp.measure_presets()
    values = checkpointed_values(exp)
    resumable = values is not None and values.get("current_episode", -1) == done
    # a batch in flight (--parallel): its episodes' folders keep what finished tasks left (outcome.json)
    reload(exp, done, keep={i["index"] for i in values.get("batch") or []} if resumable else set())
    if resumable:
        # values include nodes that finished after the last checkpoint: LangGraph applies their saved writes
        # without running them again (a loop that had already ended just returns its final state)
        return exp.loop(None)
    exp.store.set_aside(STATE_DB)
    return exp.loop(exp.fresh_state(exp.episodes))


def checkpointed_values(exp) -> dict | None:
    """The loop's checkpointed state, or None when state.sqlite is missing, empty or unreadable."""
    if not exp.store.state_db.is_file():
        return None
    try:
        graph, config = exp.graph()
        return graph.get_state(config).values or None
    except Exception as e:  # a corrupt or foreign file: the caller rebuilds from the episodes' results
        log.warning("%s is unreadable (%s: %s); rebuilding the loop's state from the episodes' results.json",
                    exp.store.state_db, type(e).__name__, e)
        return None


def reload(exp, finished: int, keep: set[int] = frozenset()) -> None:
    """Rebuild the in-memory episodes and frontier from the results.json of ``finished`` episodes, and clear
    what a killed attempt at a later one left (except in a resuming batch's episodes, ``keep``)."""
    for i in range(finished):
        ep, entered = exp.store.read_episode(i)
        exp.episodes.append(ep)
        exp.entered[ep.episode_id] = entered
        if ep.result is not None:
            exp.frontier.add(solution(ep))
        exp.record_hv(ep.episode_id)
    exp.store.clear_unfinished(finished, keep)
    exp.t0 -= exp.store.prior_elapsed()  # the wall-clock budget counts the time before the crash
