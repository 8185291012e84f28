"""Experiments as Celery tasks on a Redis broker (`acf worker`; the API dispatches here when ACF_BROKER_URL is set).

A task names an experiment folder whose config.json the API wrote. Running it is ``Experiment.resume``: a fresh
folder starts, a folder with checkpointed state continues. ``acks_late`` with ``reject_on_worker_lost``: a worker
killed mid-task leaves the message unacknowledged, so the broker hands it to another worker, which resumes the
experiment (not a second copy: an exclusive lock on the folder makes a duplicate delivery a no-op while the first
holder is alive; the OS releases the lock of a dead worker). The solo pool runs one experiment per worker process,
which HumanEval's sandbox and the CPU need anyway.
"""
from __future__ import annotations

import os
from pathlib import Path

from celery import Celery


def broker_url() -> str | None:
    return os.environ.get("ACF_BROKER_URL")


app = Celery("acf", broker=broker_url() or "redis://127.0.0.1:6379/0")
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                task_track_started=True, broker_connection_retry_on_startup=True,
                # a message not acknowledged within this time (its worker died) is delivered again
                broker_transport_options={"visibility_timeout": int(os.environ.get("ACF_VISIBILITY_TIMEOUT", 3600))})


@app.task(name="acf.run_experiment")
def run_experiment(exp_dir: str) -> str:
    from ..loop.experiment import Experiment
    from ..loop.store import ExperimentBusy, finished, record_failure

    path = Path(exp_dir)
    if finished(path):
        return "complete"
    try:
        Experiment.resume(path)  # holds the folder's lock: a duplicate delivery finds it busy
    except ExperimentBusy:
        return "already running elsewhere"
    except Exception as e:  # kept in the folder for the API, then the task fails
        record_failure(path, e)
        raise
    return "complete"
