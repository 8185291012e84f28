"""A process that has imported what an evaluation needs (torch, transformers' auto classes, lm-eval, codecarbon: about
5 s on two cores) and forks one child per evaluation. Each evaluation is still a process of its own: its address
space, threads and runtimes start in the child, and the child resets its memory high-water mark (VmHWM) before
anything is measured, so its peak is its own; it only skips the imports.

Protocol, one JSON line each way: the run writes {"request", "result", "log"}; the zygote forks, answers {"pid"},
waits for the child (whose stdout and stderr go to "log") and answers {"exit"}. The zygote ends when its stdin
closes (the run ended or died), killing a child still running. Where a zygote cannot be used (a kernel that cannot
reset a process's VmHWM or populate its page tables, a zygote that failed to start or died), the evaluation runs in
a process started for it alone (evaluation.Evaluator._run_worker)."""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading

_IDLE: list["Zygote"] = []  # at most one per run process: a zygote holds about 0.5 GB of imported code
_LOCK = threading.Lock()


class Gone(RuntimeError):
    """The zygote ended before it answered: the caller measures in a plain process instead."""


class Zygote:
    def __init__(self, env: dict[str, str], key: tuple):
        self.key = key  # its environment and working directory: another needs a zygote of its own
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, bufsize=0)
        self.buf = b""

    def _line(self, timeout: float | None) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise Gone("the evaluation zygote ended")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, request: str, result: str, log: str, timeout: float) -> int | None:
        """The child's exit code, or None when it ran past ``timeout`` seconds (it is killed)."""
        try:
            self.proc.stdin.write((json.dumps({"request": request, "result": result, "log": log}) + "\n").encode())
        except OSError:
            raise Gone("the evaluation zygote ended") from None
        started = self._line(timeout)  # the first request waits for the imports too
        if started is None:
            self.proc.kill()
            return None
        pid, done = started["pid"], self._line(timeout)
        if done is None:
            os.kill(pid, signal.SIGKILL)
            self._line(None)
            return None
        return done["exit"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def run(env: dict[str, str], request: str, result: str, log: str, timeout: float) -> int | None:
    """Measure in a zygote with this environment and directory (the idle one, or a new one; an idle zygote of
    another environment is closed first). Raises Gone when the zygote cannot be used."""
    try:
        key = (tuple(sorted(env.items())), os.getcwd())
    except OSError:  # a working directory that was deleted
        raise Gone("no working directory") from None
    with _LOCK:
        mine = next((z for z in _IDLE if z.key == key and z.proc.poll() is None), None)
        for z in list(_IDLE):
            _IDLE.remove(z)
            if z is not mine:
                z.close()
    z = mine or Zygote(env, key)
    try:
        code = z.run(request, result, log, timeout)
    except Gone:
        z.close()
        raise
    with _LOCK:
        _IDLE.append(z)
    return code


def close_all() -> None:
    """End the idle zygotes (at exit; a test or a service may call it sooner)."""
    with _LOCK:
        while _IDLE:
            _IDLE.pop().close()


atexit.register(close_all)


def die_with_parent() -> None:
    """In a measuring process, before it starts: end it when the process that asked for it dies (a Ray worker
    killed mid-episode, the zygote), instead of leaving it measuring for nobody. Linux only; elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


MADV_POPULATE_READ = 22  # Linux 5.14+


def _madvise():
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def _file_mapping(parts: list[str]) -> bool:
    """A readable mapping of a file, from a /proc/PID/maps line split into its fields."""
    return len(parts) >= 6 and parts[1].startswith("r") and parts[5].startswith("/")


def _can_measure_as_a_fresh_process() -> bool:
    """Whether a forked child can reset its memory high-water mark and map in the zygote's code pages (both are
    needed for its peak to be a fresh process's): checked once, in the zygote, on itself."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/maps") as maps:
            first = next(p for p in map(str.split, maps) if _file_mapping(p))
        return _madvise()(int(first[0].split("-")[0], 16), os.sysconf("SC_PAGE_SIZE"), MADV_POPULATE_READ) == 0
    except (OSError, StopIteration, AttributeError):
        return False


def _map_in_as_the_zygote(pid: int) -> None:
    """A fork copies no page-table entry of a file mapping: the child would fault in the code pages the imports
    had touched (tens of MB of torch and transformers) while it measures, and count them as the model's memory. So
    the pages present in the zygote (its pagemap) are mapped in here first, as a process that made the imports
    itself has them."""
    import numpy as np

    madvise, page = _madvise(), os.sysconf("SC_PAGE_SIZE")
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            parts = line.split()
            if not _file_mapping(parts):
                continue  # anonymous memory was copied by the fork
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            pagemap.seek(lo // page * 8)
            present = np.frombuffer(pagemap.read((hi - lo) // page * 8), "<u8") >> np.uint64(63)
            edges = np.flatnonzero(np.diff(np.concatenate(([0], present.astype(np.int8), [0]))))
            for a, b in zip(edges[::2], edges[1::2]):
                madvise(lo + int(a) * page, int(b - a) * page, MADV_POPULATE_READ)


def _child(job: dict) -> None:
    """In the forked child: die with the zygote, write to the log, forget the zygote's memory peak, measure."""
    die_with_parent()
    code = 1
    try:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(0)
        _map_in_as_the_zygote(os.getppid())
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := current RSS
            f.write("5")
        from pathlib import Path

        from .worker import main

        main(Path(job["request"]), Path(job["result"]))
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _preload() -> None:
    """What every evaluation imports (their first import, not the runtimes' state: nothing here starts a model)."""
    import codecarbon  # noqa: F401
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (the auto classes: about 3 s)

    from .. import models, targets  # noqa: F401
    from . import measure, protocol, worker  # noqa: F401


def main() -> None:
    if not _can_measure_as_a_fresh_process():
        return  # the run reads the end of this process's output: it measures in plain processes instead
    _preload()
    out = sys.stdout.buffer
    while line := sys.stdin.buffer.readline():  # one request at a time; nothing is sent while a child runs
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job)
        out.write((json.dumps({"pid": pid}) + "\n").encode())
        out.flush()
        while True:  # the child's end, or the run's (stdin closed): then the child is killed
            if select.select([0], [], [], 0.5)[0] and not os.read(0, 1):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        out.write((json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n").encode())
        out.flush()


if __name__ == "__main__":
    main()
