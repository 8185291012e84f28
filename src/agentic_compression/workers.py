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
    export: dict | None = None  # what a target's export measured (conversion check, bits per weight)


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


def apply_strategy(strategy: Strategy, base: Path, out: Path, ctx: Context, threads: int | None = None,
                   target=None) -> WorkResult:
    """Load ``base`` from disk, apply each step in order, save to ``out``; on a target other than transformers,
    export the result to it (with the strategy's last step when it is that target's own file-level method). On
    failure ``out`` is removed."""
    from .pipelines import holds, validate
    from .targets import get as get_target

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
    try:
        model = None
        if torch_steps:
            model, tok = load(base, threads)
            if ct_quantized(model):  # chained on a compressed-tensors checkpoint
                model = unpack(model, tok, Path(base))
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
            if step_i and ct_quantized(model):  # only a save + reload gives peft/training float Linears
                model = roundtrip(model, tok, out.parent)
            method = get(step.method)()
            ctx.measured.clear()
            model = method.apply(model, tok, dict(step.params), ctx)
            if ctx.measured:
                log[-1]["measured"] = dict(ctx.measured)
            if not method.keeps_base_weights:
                base_of(model)._acf_source = None  # the weights changed: the copy is stale
        if not target.exports:  # the runtime serves the PyTorch-side checkpoint as it is saved
            save_model(model, tok, out)
        else:  # a runtime of its own: the PyTorch side's result (or the base itself) is exported to it
            dense = Path(base)
            if model is not None:
                dense = Path(tempfile.mkdtemp(dir=out.parent, prefix=".stage-"))
                save_model(merged(model), tok, dense)
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
    import json

    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return "quantization_config" not in cfg and not (folder / "acf_lowrank.json").is_file()


def merged(model):
    """LoRA adapters merged into the weights: a runtime of its own serves one dense file."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
