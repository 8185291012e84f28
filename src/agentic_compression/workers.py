"""Workers: apply a strategy's steps with the registered methods and save one real checkpoint.
A step that raises makes the whole strategy fail, recording which step and why; nothing is ever faked."""
from __future__ import annotations

import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .methods import Context, get
from .methods.base import ct_quantized, save_model
from .models import load, unpack_compressed
from .schemas import Strategy


@dataclass
class WorkResult:
    checkpoint: Path | None
    error: str | None = None
    failed_step: int | None = None
    # per step: ran / skipped, and the probe facts its condition was decided on
    steps: list[dict] = field(default_factory=list)


def base_of(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def unpack(model, tok, source: Path):
    """transformers unpacks compressed-tensors weights on the first forward; ``source`` is the checkpoint the
    model is an unchanged copy of, so a step that leaves the base weights alone (LoRA) can keep it byte for byte
    instead of re-saving unpacked weights as fp32."""
    unpack_compressed(model)
    model._acf_source = source
    return model


def roundtrip(model, tok, scratch: Path):
    """Save and reload through transformers so the next step (LoRA) sees float weights on the quantization grid."""
    stage = Path(tempfile.mkdtemp(dir=scratch, prefix=".stage-"))
    save_model(model, tok, stage)
    return unpack(load(stage)[0], tok, stage)


def apply_strategy(strategy: Strategy, base: Path, out: Path, ctx: Context, threads: int | None = None) -> WorkResult:
    """Load ``base`` from disk, apply each step in order, save to ``out``. On failure ``out`` is removed."""
    from .pipelines import holds, validate

    if not strategy.steps:
        return WorkResult(None, "the strategy has no steps", 0)
    if invalid := validate(strategy):
        return WorkResult(None, invalid[1], invalid[0])
    step_i, log = 0, []
    try:
        model, tok = load(base, threads)
        if ct_quantized(model):  # chained on a compressed-tensors checkpoint
            model = unpack(model, tok, Path(base))
        for step_i, step in enumerate(strategy.steps):
            if step.condition:
                if ctx.probe is None:
                    raise ValueError("conditional step but no probe to decide it")
                facts = ctx.probe(model, tok)
                if not holds(step.condition, facts):
                    log.append({"step": step_i, "method": step.method, "ran": False, "facts": facts})
                    continue
                log.append({"step": step_i, "method": step.method, "ran": True, "facts": facts})
            else:
                log.append({"step": step_i, "method": step.method, "ran": True})
            if step_i and ct_quantized(model):  # only a save + reload gives peft/training float Linears
                model = roundtrip(model, tok, out.parent)
            method = get(step.method)()
            model = method.apply(model, tok, dict(step.params), ctx)
            if not method.keeps_base_weights:
                base_of(model)._acf_source = None  # the weights changed: the copy is stale
        save_model(model, tok, out)
        return WorkResult(out, steps=log)
    except Exception as e:  # recorded on the episode as its error; the episode is 'failed'
        shutil.rmtree(out, ignore_errors=True)
        tb = traceback.format_exc(limit=-3)
        return WorkResult(None, f"step {step_i} ({strategy.steps[step_i].method}) failed: "
                                f"{type(e).__name__}: {e}\n{tb}", step_i, log)
    finally:
        for stage in out.parent.glob(".stage-*"):
            shutil.rmtree(stage, ignore_errors=True)
