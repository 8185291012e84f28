"""Workers: apply a strategy's steps with the registered methods and save one real checkpoint.
A step that raises makes the whole strategy fail, recording which step and why; nothing is ever faked."""
from __future__ import annotations

import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .. import formats
from ..formats.compressed_tensors import unpack
from ..methods import Context, get
from ..models import load
from ..schemas import Strategy


@dataclass
class WorkResult:
    checkpoint: Path | None
    error: str | None = None
    failed_step: int | None = None
    # per step: ran / skipped, and the probe facts its condition was decided on
    steps: list[dict] = field(default_factory=list)
    export: dict | None = None  # what a target's export measured (conversion check, bits per weight)


def roundtrip(model, tok, scratch: Path, source: Path | None):
    """Save and reload through transformers so the next step (LoRA) sees float weights on the quantization grid;
    returns the model and the checkpoint it is an unchanged copy of."""
    stage = Path(tempfile.mkdtemp(dir=scratch, prefix=".stage-"))
    formats.save(model, tok, stage, source)
    model = load(stage)[0]
    unpack(model)
    return model, stage


def _ct(model) -> bool:
    return formats.of(model).name == "compressed-tensors"


def apply_strategy(strategy: Strategy, base: Path, out: Path, ctx: Context, threads: int | None = None,
                   target=None) -> WorkResult:
    """Load ``base`` from disk, apply each step in order, save to ``out``; on a target other than transformers,
    export the result to it (with the strategy's last step when it is that target's own file-level method). On
    failure ``out`` is removed."""
    from ..policies.pipelines import holds, validate
    from ..targets import get as get_target

    target = target or get_target("transformers")
    if not strategy.steps:
        return WorkResult(None, "the strategy has no steps", 0)
    if invalid := validate(strategy, target):
        return WorkResult(None, invalid[1], invalid[0])
    if (Path(base) / "acf_format.json").is_file():  # a GGUF or ONNX export: served, never loaded back into PyTorch
        return WorkResult(None, f"the base {base} is a runtime's deployed file: chain on the model itself or on a "
                          "PyTorch checkpoint", 0)
    if target.exports and not plain(Path(base)):
        return WorkResult(None, f"the {target.name} target exports dense checkpoints, and the base {base} is stored "
                          "compressed: chain on the model itself or on a dense checkpoint", 0)
    final = strategy.steps[-1] if get(strategy.steps[-1].method).final else None
    torch_steps = strategy.steps[:-1] if final else strategy.steps
    step_i, log, export = 0, [], None
    # a checkpoint the model in hand is an unchanged copy of: saved by copying it, since transformers unpacks
    # compressed-tensors weights on the first forward and re-saving them would store float32
    source = None
    try:
        model = None
        if torch_steps:
            model, tok = load(base, threads)
            if _ct(model):  # chained on a compressed-tensors checkpoint
                unpack(model)
                source = Path(base)
        for step_i, step in enumerate(torch_steps):
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
            if step_i and _ct(model):  # only a save + reload gives peft/training float Linears
                model, source = roundtrip(model, tok, out.parent, source)
            method = get(step.method)()
            ctx.measured.clear()
            model = method.apply(model, tok, dict(step.params), ctx)
            if ctx.measured:
                log[-1]["measured"] = dict(ctx.measured)
            if not method.keeps_base_weights:
                source = None  # the weights changed: the copy is stale
        if not target.exports:  # the runtime serves the PyTorch-side checkpoint as it is saved
            formats.save(model, tok, out, source)
        else:  # a runtime of its own: the PyTorch side's result (or the base itself) is exported to it
            dense = Path(base)
            if model is not None:
                dense = Path(tempfile.mkdtemp(dir=out.parent, prefix=".stage-"))
                formats.save(merged(model), tok, dense)
            step_i = len(strategy.steps) - 1
            if final:
                log.append({"step": step_i, "method": final.method, "ran": True})
            export = target.export(dense, out, final, ctx)
        return WorkResult(out, steps=log, export=export)
    except Exception as e:  # recorded on the episode as its error; the episode is 'failed'
        shutil.rmtree(out, ignore_errors=True)
        tb = traceback.format_exc(limit=-3)
        return WorkResult(None, f"step {step_i} ({strategy.steps[step_i].method}) failed: "
                                f"{type(e).__name__}: {e}\n{tb}", step_i, log)
    finally:
        for stage in out.parent.glob(".stage-*"):
            shutil.rmtree(stage, ignore_errors=True)


def plain(folder: Path) -> bool:
    """A dense PyTorch checkpoint a runtime's converter reads as it is (no quantization, no factorised layers)."""
    return formats.stored_as(folder).name == "dense"


def merged(model):
    """LoRA adapters merged into the weights: a runtime of its own serves one dense file."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
