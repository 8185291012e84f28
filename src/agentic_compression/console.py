"""A calm terminal for `acf run` / `acf resume`: acf's own progress on the screen, every other library's output in
log files.

- ``OutputRouter`` points file descriptors 1 and 2 (so Python's stdout/stderr, logging, warnings, tqdm and C
  libraries alike) into a pipe that a thread copies into the current log file: ``baseline/log.txt`` while the
  baseline is measured, ``episode_NNN/log.txt`` during an episode. With ``verbose`` it copies to the terminal too.
  acf's own lines go to a duplicate of the original stderr, which the router leaves alone.
- ``RunConsole`` follows the experiment folder (progress.json, the results files) and prints one line for the
  baseline and one per finished episode, under a live status line with a progress bar over the episodes when the
  output is a terminal, and plain lines without control codes when it is not (CI, pipes).
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from .objectives import SPECS, stderr

LOG = "log.txt"
PENDING_CAP = 1 << 20  # bytes of output kept from before the first log file (the tail)
_router: "OutputRouter | None" = None


def route(path: Path) -> None:
    """Send library output to ``path`` from now on (a no-op unless `acf run`/`acf resume` installed a router)."""
    if _router is not None:
        _router.route(path)


def log_text(text: str) -> None:
    """Append another process's captured output (the evaluation's) to the current log, when routing."""
    if _router is not None and text:
        _router.write(text.encode(errors="replace"))


class OutputRouter:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._lock = threading.Lock()
        self._log = None
        self._pending = bytearray()  # output before the first log exists (a GGUF conversion): kept for it
        self.terminal: TextIO | None = None  # acf's own lines: the original stderr, while routing

    def __enter__(self) -> "OutputRouter":
        global _router
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self._reader = threading.Thread(target=self._copy, args=(r,), daemon=True, name="acf-log-router")
        self._reader.start()
        _router = self
        return self

    def __exit__(self, *exc) -> None:
        global _router
        _router = None
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)  # the pipe's last writers close: the copying thread sees its end
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._reader.join(timeout=10)
        with self._lock:
            if self._log:
                self._log.close()
                self._log = None
        self.terminal.close()

    def route(self, path: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._log:
                self._log.close()
            self._log = open(path, "ab")
            self._log.write(self._pending)
            self._pending.clear()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._log:
                self._log.write(data)
                self._log.flush()
            else:
                self._pending += data
                del self._pending[:-PENDING_CAP]
        if self.verbose:
            self.terminal.write(data.decode(errors="replace"))
            self.terminal.flush()

    def _copy(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            for chunk in iter(lambda: pipe.read(1 << 16), b""):
                self.write(chunk)


def _steps(steps: list[dict]) -> str:
    return " -> ".join(f"{s['method']}({', '.join(f'{k}={v}' for k, v in s['params'].items())})" for s in steps)


def baseline_line(result: dict) -> str:
    """Every declared objective's value (with its standard error where it has one) and the perplexity."""
    r, parts = result, []
    for o in SPECS:
        if r.get(o.name) is not None:
            n = f" (n={r['accuracy_n']})" if o.name == "accuracy" else ""
            parts.append(f"{o.word} {o.shown(r[o.name], stderr(r, o.name))}{' ' + o.unit if o.unit else ''}{n}")
    if r.get("perplexity"):
        parts.append(f"ppl {r['perplexity']:.2f}")
    return "baseline     " + "  ".join(parts)


def episode_line(ep: dict) -> str:
    """The strategy, then each objective with a standard error as its value, and the others as ratios to the
    baseline."""
    head = f"{ep['episode_id']}  {ep['status']:<7}  {_steps(ep['strategy']['steps'])}"
    if ep["status"] != "success":
        return f"{head}  {(ep.get('error') or '').strip().splitlines()[0][:160] if ep.get('error') else ''}"
    r, rel, parts = ep["result"], ep["result"].get("relative") or {}, []
    for o in SPECS:
        if r.get(o.name) is None:
            continue
        if (err := stderr(r, o.name)) is not None:
            parts.append(f"{o.word} {o.shown(r[o.name], err)}")
        elif o.name in rel:
            parts.append(f"{o.word} {rel[o.name]:.2f}x")
    return f"{head}  {'  '.join(parts)}  frontier: {'yes' if ep.get('entered_frontier') else 'no'}"


class RunConsole:
    """Follows an experiment folder and shows acf's own progress (see the module's docstring)."""

    def __init__(self, exp_dir: Path, out: TextIO, max_episodes: int):
        from rich.console import Console

        self.dir, self.max = exp_dir, max_episodes
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.shown: set[str] = set()
        self._stop = threading.Event()

    def __enter__(self) -> "RunConsole":
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                 disable=not self.console.is_terminal, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)  # those belong to the log
        self.task = self.progress.add_task("measuring the baseline", total=self.max)
        self.progress.start()
        self.thread = threading.Thread(target=self._follow, daemon=True, name="acf-console")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        self.poll()  # the last lines
        self.progress.stop()

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def poll(self) -> None:
        if "baseline" not in self.shown and (b := self._read(self.dir / "baseline" / "results.json")):
            self.shown.add("baseline")
            self.console.print(baseline_line(b["result"]), markup=False)
        for path in sorted(self.dir.glob("episode_*/results.json")):
            if path.parent.name not in self.shown and (ep := self._read(path)):
                self.shown.add(path.parent.name)
                self.console.print(episode_line(ep), markup=False)
        p = self._read(self.dir / "progress.json") or {}
        done = len(self.shown - {"baseline"})
        what = f"{p.get('node', '')} {p.get('action', '')} {' + '.join(p.get('steps') or [])}".strip()
        desc = f"episode {p.get('episode', done) + 1}: {what}" if p else "measuring the baseline"
        self.progress.update(self.task, completed=done, description=desc)
