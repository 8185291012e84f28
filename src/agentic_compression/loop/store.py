"""The experiment folder: what a run writes there and how a resume reads it back. The Experiment (experiment.py)
decides and measures; this module alone knows the folder's layout, its lock, and which files are acf's own.

    config.json  model_spec.json  state.sqlite  progress.json  final_results.json  pareto_frontier.json
    baseline/results.json (+ reference.json)    episode_NNN/results.json    statistics/    .work/
"""
from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..files import read_json, write_json
from ..models import stats_cache
from ..schemas import Episode, EvaluationResult
from .episodes import EPISODE_FILES, now, remove_own

STATE_DB = "state.sqlite"  # the LangGraph checkpoints: the loop's state after every node
PROGRESS = "progress.json"  # where the loop is now (episode, node, action): read by the CLI and the API
CANCEL = "cancel"  # a file whose presence stops the loop at its next decision
FAILED = "failed.json"  # why a run stopped with an error, and when (kept for the API; removed by a resume)
SUMMARY = "final_results.json"
FRONTIER = "pareto_frontier.json"
# what a run writes at the top of its folder: all that a failed brand-new run may remove (never anything else)
OWN_FILES = ("config.json", "model_spec.json", "baseline", PROGRESS, STATE_DB, f"{STATE_DB}-wal", f"{STATE_DB}-shm",
             ".work", FAILED, stats_cache.FOLDER)


def finished(exp_dir: Path) -> bool:
    """The experiment's loop ran to its end (final_results.json says complete)."""
    final = exp_dir / SUMMARY
    return final.is_file() and bool(read_json(final, "the experiment's summary").get("complete"))


class ExperimentBusy(UserError):
    """Another acf process holds the experiment's lock."""


class FolderLock:
    """An exclusive flock on the experiment folder itself (no lock file is written), held until close(); the OS
    releases a dead process's lock. Two runs with the same name, or a run and a resume, never share a folder."""

    def __init__(self, path: Path):
        self.fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise ExperimentBusy(f"experiment folder {path} is in use by another acf process",
                                 "wait for it to finish, or choose another --experiment name") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ExperimentStore:
    """One experiment folder, locked for as long as this object is open."""

    def __init__(self, folder: Path, lock: FolderLock, created: bool):
        self.dir, self._lock = folder, lock
        self.created = created  # this process made the folder: only then may a failed run remove it
        self.work_dir = folder / ".work"  # acf's scratch space (evaluation requests, task YAML)
        self.baseline_dir = folder / "baseline"
        self.state_db = folder / STATE_DB

    @classmethod
    def create(cls, folder: Path) -> ExperimentStore:
        """Make the folder (or take an empty one) under the lock: check-then-create would race a second run."""
        created = False
        try:
            folder.mkdir()
            created = True
        except FileExistsError:
            if folder.is_symlink() or not folder.is_dir():
                raise UserError(f"{folder} exists and is not a folder", "choose another --experiment name") from None
        lock = FolderLock(folder)
        if any(folder.iterdir()):
            lock.close()
            raise UserError(f"experiment folder {folder} already exists and is not empty",
                            "choose another --experiment name, or 'acf resume' it (nothing there was changed)")
        return cls(folder, lock, created)

    @classmethod
    def open(cls, folder: Path) -> ExperimentStore:
        """An existing experiment's folder, to resume it."""
        return cls(folder, FolderLock(folder), created=False)

    def release(self) -> None:
        """Let go of the folder's lock (a run or resume does when it returns or raises)."""
        self._lock.close()

    def discard(self) -> None:
        """A brand-new run that failed: remove what it wrote, and its folder if this process made it and nothing
        else is left. Never used on a resumed experiment."""
        self.release()
        remove_own(self.dir, OWN_FILES)
        if self.created and not any(self.dir.iterdir()):
            self.dir.rmdir()

    def write_config(self, cfg) -> None:
        """The run's options (a RunConfig): what makes the folder resumable."""
        write_json(self.dir / "config.json", json.loads(cfg.model_dump_json()))

    def write_spec(self, spec) -> None:
        write_json(self.dir / "model_spec.json", spec.model_dump())

    def clear_failure(self) -> None:
        """A resume starts over from the reason an earlier attempt stopped."""
        (self.dir / FAILED).unlink(missing_ok=True)

    def progress(self, node: str, episode: int, max_episodes: int, **extra) -> None:
        write_json(self.dir / PROGRESS, {"node": node, "episode": episode, "max_episodes": max_episodes,
                                         "updated": now(), **extra})

    def cancelled(self) -> bool:
        return (self.dir / CANCEL).exists()

    def set_aside(self, name: str) -> None:
        """Keep a file the loop cannot use under another name, instead of deleting it."""
        src = self.dir / name
        if src.exists():
            os.replace(src, self.dir / f"{name}.unusable-{datetime.now():%Y%m%d-%H%M%S}")
        for extra in (f"{name}-wal", f"{name}-shm"):
            (self.dir / extra).unlink(missing_ok=True)

    # ---- episodes ----
    def episode_dir(self, index: int) -> Path:
        return self.dir / f"episode_{index:03d}"

    def finished_episodes(self) -> int:
        """How many episodes finished, counted from episode_000; refuses a gap (a later finished episode after an
        unfinished one), which no resume could continue without losing one of them."""
        found = sorted(int(d.name.split("_")[1]) for d in self.dir.glob("episode_[0-9][0-9][0-9]")
                       if (d / "results.json").is_file())
        if found != list(range(len(found))):
            gap = next(i for i in range(len(found) + 1) if i not in found)
            raise UserError(f"{self.episode_dir(gap).name} has no results.json, but a later episode finished",
                            f"restore {self.episode_dir(gap).name}/results.json, or move the later episodes out of "
                            f"{self.dir}")
        return len(found)

    def read_episode(self, index: int) -> tuple[Episode, bool]:
        """A finished episode, and whether it entered the frontier when it finished."""
        path = self.episode_dir(index) / "results.json"
        raw = read_json(path, "an episode's results")
        try:
            ep = Episode(**{k: v for k, v in raw.items() if k != "entered_frontier"})
        except Exception as e:
            raise UserError(f"{path} is not an episode's results ({type(e).__name__})",
                            "restore the file, or move that episode out of the experiment") from None
        return ep, bool(raw.get("entered_frontier"))

    def write_episode(self, ep: Episode, entered: bool) -> None:
        write_json(self.episode_dir(ep.index) / "results.json", {**ep.model_dump(), "entered_frontier": entered})

    def clear_unfinished(self, finished: int, keep: set[int] = frozenset()) -> None:
        """Clear what a killed attempt at an episode after the ``finished`` ones left (acf's own files only:
        episodes.EPISODE_FILES), except in the episodes of a batch that resumes (``keep``). The running episode's
        folder stays: a killed evaluation needs its checkpoint; a killed step clears it itself."""
        for d in self.dir.glob("episode_*"):
            index = int(d.name[8:]) if d.name[8:].isdigit() else -1
            if index > finished and index not in keep:
                remove_own(d, EPISODE_FILES)

    def prior_elapsed(self) -> float:
        """The wall-clock seconds an earlier run of this experiment had used (its last summary)."""
        prior = self.dir / SUMMARY
        return read_json(prior, "the experiment's summary").get("elapsed_seconds", 0.0) if prior.is_file() else 0.0

    # ---- the baseline ----
    def has_baseline(self) -> bool:
        return (self.baseline_dir / "results.json").is_file()

    def write_baseline(self, checkpoint: Path, result: EvaluationResult, problems: list[str],
                       others: dict[str, tuple[Path, EvaluationResult]]) -> None:
        """The first target's baseline with its sanity check; every other target's beside it."""
        self.baseline_dir.mkdir(exist_ok=True)
        other = {n: {"checkpoint": str(c), "result": r.model_dump()} for n, (c, r) in others.items()}
        write_json(self.baseline_dir / "results.json",
                   {"checkpoint": str(checkpoint), "result": result.model_dump(),
                    "sanity": {"problems": problems, "forced": bool(problems)},
                    **({"other_targets": other} if other else {})})

    def read_baseline(self) -> tuple[EvaluationResult, dict[str, EvaluationResult], EvaluationResult | None]:
        """(the first target's baseline, each other target's, the transformers reference when it was measured)."""
        path = self.baseline_dir / "results.json"
        raw = read_json(path, "the baseline's results")
        try:
            first = EvaluationResult(**raw["result"])
            others = {n: EvaluationResult(**r["result"]) for n, r in raw.get("other_targets", {}).items()}
        except Exception as e:
            raise UserError(f"{path} is not a baseline result ({type(e).__name__})",
                            "move the baseline folder away: the resume measures it again") from None
        ref = self.baseline_dir / "reference.json"
        reference = EvaluationResult(**read_json(ref, "the transformers baseline's results")["result"]) \
            if ref.is_file() else None
        return first, others, reference

    def write_reference(self, checkpoint: Path, result: EvaluationResult) -> None:
        self.baseline_dir.mkdir(exist_ok=True)
        write_json(self.baseline_dir / "reference.json", {"checkpoint": str(checkpoint), "result": result.model_dump()})

    # ---- the summary ----
    def write_summary(self, frontier: dict, summary: dict) -> None:
        write_json(self.dir / FRONTIER, frontier)
        write_json(self.dir / SUMMARY, summary)


def record_failure(exp_dir: Path, e: BaseException) -> str:
    """Why an experiment stopped with an error, and when, kept in its folder (failed.json) for the API."""
    error = f"{type(e).__name__}: {e}"[:2000]
    if exp_dir.is_dir():
        write_json(exp_dir / FAILED, {"error": error, "failed_at": datetime.now(timezone.utc).isoformat()})
    return error
