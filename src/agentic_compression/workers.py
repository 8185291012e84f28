"""Workers: apply a strategy's steps with the registered methods and save one real checkpoint.
A step that raises makes the whole strategy fail, recording which step and why; nothing is ever faked."""
from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

from .methods import Context, get
from .models import load
from .schemas import Strategy


@dataclass
class WorkResult:
    checkpoint: Path | None
    error: str | None = None
    failed_step: int | None = None


def apply_strategy(strategy: Strategy, base: Path, out: Path, ctx: Context, threads: int | None = None) -> WorkResult:
    """Load ``base`` from disk, apply each step in order, save to ``out``. On failure ``out`` is removed."""
    if not strategy.steps:
        return WorkResult(None, "the strategy has no steps", 0)
    step_i = 0
    try:
        model, tok = load(base, threads)
        method = None
        for step_i, step in enumerate(strategy.steps):
            if step.condition:
                raise ValueError(f"conditional steps are not supported yet (condition {step.condition!r})")
            method = get(step.method)()
            model = method.apply(model, tok, dict(step.params), ctx)
        method.save(model, tok, out)
        return WorkResult(out)
    except Exception as e:  # recorded on the episode as its error; the episode is 'failed'
        shutil.rmtree(out, ignore_errors=True)
        tb = traceback.format_exc(limit=-3)
        return WorkResult(None, f"step {step_i} ({strategy.steps[step_i].method}) failed: "
                                f"{type(e).__name__}: {e}\n{tb}", step_i)
