"""One episode's work, wherever it runs: compress (the strategy's steps, then the target's export) and evaluate (a
fresh measuring process). With ``--parallel 1`` the loop's worker and evaluation nodes call ``compress`` and
``evaluate`` in the driver, one episode after another. With ``--parallel K`` each episode is one Ray task running
both (``run_batch``):

- the cluster is an embedded local one (``ray.init()`` in the driver) unless ``--ray-address`` (or
  ``ACF_RAY_ADDRESS``, which an ``acf worker`` experiment reads) names a running one;
- a task asks for its resources: one GPU with ``--device cuda``, else ``--threads`` CPUs (1 when unset). It runs in
  a worker process of its own (``max_calls=1``), and its measurements in a fresh process below that, as before;
- a task writes into the experiment folder itself. On a cluster of several machines, ``--output-dir`` must be a
  shared filesystem (NFS, a cloud bucket mounted with FUSE) at the same path on every node, as Ray Tune's
  ``storage_path`` is; a task that cannot write there fails its episode, saying so;
- a worker process or node that dies makes Ray run the task again, at most ``--episode-retries`` times; then the
  episode fails with Ray's reason. A finished task leaves ``outcome.json`` in its episode folder, so a driver
  killed later keeps it: the resumed run re-runs only the episodes that had none.

The driver alone decides, and updates the frontier, history, skill memory and checkpointed state, in episode order.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import console, data
from ..errors import UserError
from ..evaluation import Evaluator, Pruned
from ..evaluation.measure import Energy
from ..files import read_json, write_json
from ..methods import Context
from ..schemas import Strategy
from .workers import apply_strategy

log = logging.getLogger("acf.episodes")

STRATEGY_SCHEMA = 1  # strategy.json's layout: schemas.Strategy's fields; raise it when they change meaning
OUTCOME = "outcome.json"  # a Ray task's finished work (the driver records it as results.json)
ATTEMPTS = "attempts.jsonl"  # one line per start of a Ray task on this episode: its process, node and time
WORK_FILES = ("checkpoint", "strategy.json", OUTCOME)  # what an attempt makes, cleared before the next one
EPISODE_FILES = (*WORK_FILES, ATTEMPTS)  # what a killed, unfinished episode leaves


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def remove_own(folder: Path, names: tuple[str, ...]) -> None:
    """Remove the entries of ``folder`` that acf writes (``names``); anything else a user put there stays."""
    for n in names:
        p = folder / n
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


@dataclass
class Calibration:
    """The experiment's seeded calibration windows, one set per (n, seq_len): a plain object, so it travels to a
    Ray task (each process keeps its own cache)."""

    data_dir: Path
    seed: int
    source: str

    def __post_init__(self):
        self._cache: dict[tuple[int, int], list[list[int]]] = {}

    def __call__(self, tokenizer, n: int, seq_len: int) -> list[list[int]]:
        if (n, seq_len) not in self._cache:
            self._cache[n, seq_len] = data.calibration_samples(tokenizer, self.data_dir, n, seq_len, self.seed,
                                                              self.source)
        return self._cache[n, seq_len]


@dataclass
class EpisodeJob:
    """Everything one episode needs, with absolute paths: built by the driver, run there or in a Ray task."""

    index: int
    strategy: Strategy
    ep_dir: Path
    base: Path  # the model, or the checkpoint of the episode the strategy chains on
    target: str
    threads: int | None
    ctx: Context
    evaluator: Evaluator
    country: str
    prune: dict[str, float] | None = None  # an episode's limits (Experiment.prune_limits); a preset is never pruned


def compress(job: EpisodeJob) -> dict:
    """Apply the strategy into ``ep_dir/checkpoint``: the loop-state update of the worker node."""
    from ..targets import get

    job.ep_dir.mkdir(exist_ok=True)
    remove_own(job.ep_dir, WORK_FILES)  # what a killed attempt at this episode left
    console.route(job.ep_dir / console.LOG)
    write_json(job.ep_dir / "strategy.json", {"schema_version": STRATEGY_SCHEMA, **job.strategy.model_dump()})
    started, t = now(), time.perf_counter()
    with Energy(job.country) as energy:
        res = apply_strategy(job.strategy, job.base, job.ep_dir / "checkpoint", job.ctx, job.threads,
                             get(job.target))
    return {"compressed_model_path": str(res.checkpoint) if res.checkpoint else None,
            "current_error": res.error, "failed_step": res.failed_step, "current_result": None,
            "compress_info": {"seconds": time.perf_counter() - t, "energy": energy.result, "steps": res.steps,
                              "started_at": started, "target": job.target,
                              **({"export": res.export} if res.export else {})}}


def evaluate(evaluator: Evaluator, checkpoint: Path, prune: dict[str, float] | None = None) -> dict:
    """Measure a checkpoint: the loop-state update of the evaluation node. A failure is recorded: the episode fails
    and stays out of the frontier; so does a candidate pruned after its first tokens (``pruned``: their numbers)."""
    try:
        result = evaluator.evaluate(checkpoint, prune)
    except Pruned as e:
        return {"current_error": f"pruned: {e}", "current_result": None, "pruned": e.partial}
    except Exception as e:
        return {"current_error": f"evaluation failed: {type(e).__name__}: {e}", "current_result": None}
    return {"current_result": result.model_dump()}


def run_episode(job: EpisodeJob) -> dict:
    """Compress, then evaluate: the two nodes' updates merged, with the attempt's worker, kept in ``outcome.json``
    before it is returned."""
    key = job.strategy.key()
    attempts = job.ep_dir / ATTEMPTS
    try:
        job.ep_dir.mkdir(exist_ok=True)
        with open(attempts, "a") as f:
            f.write(json.dumps({"key": key, "pid": os.getpid(), "node": socket.gethostname(), "at": now()}) + "\n")
    except OSError as e:
        return failed(job, f"the worker on {socket.gethostname()} cannot write the experiment folder {job.ep_dir} "
                           f"({e.strerror}): on a cluster, --output-dir must be a filesystem every node shares")
    with console.OutputRouter() as router:  # this worker's library output goes to the episode's log
        router.route(job.ep_dir / console.LOG)
        out = compress(job)
        if not out["current_error"]:
            out.update(evaluate(job.evaluator, Path(out["compressed_model_path"]), job.prune))
    lines = [json.loads(s) for s in attempts.read_text().splitlines() if s.strip()]
    out["compress_info"]["finished_at"] = now()
    out["compress_info"]["worker"] = {"pid": os.getpid(), "node": socket.gethostname(),
                                      "attempt": sum(a["key"] == key for a in lines)}
    write_json(job.ep_dir / OUTCOME, {"key": key, **out})
    return out


def failed(job: EpisodeJob, error: str) -> dict:
    """An episode whose task never finished: it fails with the reason."""
    return {"compressed_model_path": None, "current_error": error, "failed_step": None, "current_result": None,
            "compress_info": {"seconds": 0.0, "energy": {}, "steps": [], "started_at": now(), "target": job.target,
                              "finished_at": now()}}


def finished_outcome(ep_dir: Path, strategy: Strategy) -> dict | None:
    """The outcome a task left for this strategy in ``ep_dir`` (a driver killed after it finished), else None."""
    path = ep_dir / OUTCOME
    if not path.is_file():
        return None
    raw = read_json(path, "an episode's outcome")
    return {k: v for k, v in raw.items() if k != "key"} if raw.get("key") == strategy.key() else None


RAY_PROCESSES = "ray_processes.json"  # the embedded cluster's processes: reaped when the run ends, or after a crash
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": the node's address is 127.0.0.1 (ray_constants)


def connect(address: str | None, folder: Path | None = None):
    """Ray, joined at ``address`` (else ACF_RAY_ADDRESS) or started here: an embedded local cluster of this
    machine's CPUs and GPUs, on 127.0.0.1 only and without a dashboard, whose processes are listed in ``folder``
    (an experiment's; the survivors of a run killed before it could stop them are reaped first, there and in the
    other experiments beside it)."""
    import ray

    address = address or os.environ.get("ACF_RAY_ADDRESS")
    if not ray.is_initialized():
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            if on_loopback(address):  # a cluster on this machine: reached at 127.0.0.1, as it was asked
                loopback_only()
            ray.init(address=address, **quiet)
        else:
            if folder is not None:
                for other in folder.parent.glob(f"*/{RAY_PROCESSES}"):
                    reap(other.parent)
            loopback_only()
            ray.init(address="local", **quiet)  # a new cluster, never one a `ray start` left on this machine
    if folder is not None and not address:
        record(folder)
    return ray


def host_port(address: str) -> tuple[str, str]:
    """A Ray address's host (brackets of an IPv6 one removed) and port: "ray://h:10001" -> ("h", "10001")."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), port


def on_loopback(address: str) -> bool:
    return host_port(address)[0] in ("127.0.0.1", "localhost", "::1")


def loopback_only() -> None:
    """The node's address is the loopback, which every server of a cluster started here then binds (Ray takes the
    machine's network address, even for 127.0.0.1, and its GCS and raylet listen on all interfaces): Ray's switch
    for a single-machine cluster, read by this process and by the processes it starts."""
    from ray._private import ray_constants

    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _ours() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]


def _is_ray(proc) -> bool:
    import psutil

    try:
        return "ray" in " ".join(proc.cmdline()).lower()
    except psutil.Error:
        return False


def record(folder: Path) -> None:
    """Add the embedded cluster's processes now alive (GCS, raylet, its agents, workers) to ``folder``'s list, with
    the driver (this process): pid and start time each, so that a pid the system reused for another program is
    never taken for one of them."""
    import psutil

    path = folder / RAY_PROCESSES
    listed = read_json(path, "the run's Ray processes").get("processes", []) if path.is_file() else []
    known = {(p["pid"], p["started"]) for p in listed}
    for proc in _ours():
        try:
            known.add((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    me = psutil.Process()
    write_json(path, {"driver": {"pid": me.pid, "started": me.create_time()},
                      "processes": [{"pid": pid, "started": t} for pid, t in sorted(known)]})


def _alive(entry: dict):
    """The process an entry names, if it still runs (the same pid and start time), else None."""
    import psutil

    try:
        proc = psutil.Process(int(entry["pid"]))
        return proc if abs(proc.create_time() - float(entry["started"])) < 1e-3 else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def reap(folder: Path, own: bool = False) -> int:
    """Kill the Ray processes ``folder``'s list names that still run, then drop the list: a run's own at its end
    (``own``), else only when the run that listed them is gone (a concurrent run's cluster is left alone).
    Returns how many were killed."""
    import psutil

    path = folder / RAY_PROCESSES
    if not path.is_file():
        return 0
    try:
        listed = read_json(path, "the run's Ray processes")
    except UserError:
        return 0  # a damaged list: nothing can be matched safely, so nothing is killed
    if not own and _alive(listed.get("driver") or {}) is not None:
        return 0
    killed = 0
    for entry in listed.get("processes", []):
        if (proc := _alive(entry)) is not None and _is_ray(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    path.unlink(missing_ok=True)
    return killed


def disconnect(folder: Path | None = None) -> None:
    """Leave Ray at the end of a run: an embedded cluster stops (and any of its processes that outlive the shutdown
    are reaped), a joined one stays up for others."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    if folder is not None:
        reap(folder, own=True)


def run_batch(jobs: list[EpisodeJob], address: str | None, retries: int, gpu: bool,
              done: Callable[[int, dict], None] = lambda i, o: None, folder: Path | None = None) -> dict[int, dict]:
    """Run each job as a Ray task, all at once within the cluster's resources; ``done(index, outcome)`` as each
    finishes. Returns index -> outcome. ``folder``: the experiment's, where an embedded cluster's processes are
    listed."""
    if not jobs:
        return {}
    ray = connect(address, folder)
    from ray.exceptions import RayError

    task = ray.remote(num_cpus=0 if gpu else (jobs[0].threads or 1), num_gpus=1 if gpu else 0, max_calls=1,
                      max_retries=retries, retry_exceptions=False)(run_episode)
    refs = {task.remote(job): job for job in jobs}
    out, waiting = {}, list(refs)
    embedded = folder is not None and not (address or os.environ.get("ACF_RAY_ADDRESS"))
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=None if not embedded else 5.0)
        if embedded:
            record(folder)  # the agents and workers started since (a crash of this driver leaves them behind)
        if not ready:
            continue
        job = refs[ready[0]]
        try:
            out[job.index] = ray.get(ready[0])
        except RayError as e:  # the worker or its node died more than --episode-retries times
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            out[job.index] = failed(job, f"the episode's task failed after {retries} retries: {type(e).__name__}: "
                                         f"{why}")
        done(job.index, out[job.index])
    return out
