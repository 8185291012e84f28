"""How many threads a runtime is given when the run asks for none: OMP_NUM_THREADS where it is set (what torch
reads, so every runtime of a process agrees with torch), else the CPUs this process may run on (its affinity:
taskset, a container's cpuset), not every CPU of the machine. Two processes that each start a thread per CPU on the
same cores crowd each other out: llama.cpp scoring took 4.5x as long as with one thread each (two at once on a
2-core AMD EPYC, 2026-12-07, bench/scoring.py)."""
from __future__ import annotations

import os


def default_threads(asked: int | None = None) -> int:
    if asked:
        return asked
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity off Linux
        return os.cpu_count() or 1
