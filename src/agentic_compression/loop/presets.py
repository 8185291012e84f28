"""The community's presets beside every frontier: what a practitioner would pick by hand in a minute (llama.cpp
Q4_K_M and Q8_0 without an importance matrix, ONNX Runtime GenAI's int4 with its builder's defaults, GPTQ W4A16 at
the largest group size the model's widths allow). Each target declares its own as data (``Target.presets``).

Every run measures them once, after the baselines, exactly as it measures a candidate (the same export, the same
evaluation, cached like any checkpoint), in ``presets/<target>-<name>/``. They are the yardstick, not the search's
finds: they stay out of the frontier and the episode count, are shown as reference rows, and the run's last lines
say how the recommended candidate compares with the closest one (``comparison``). A preset that fails is recorded
with its error; a method that is unavailable here is recorded as such, never replaced."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ..schemas import EvaluationResult, Step, Strategy

RESULTS = "results.json"


class Preset(BaseModel):
    target: str
    name: str
    strategy: Strategy
    status: Literal["success", "failed", "unavailable"]
    result: EvaluationResult | None = None
    error: str | None = None
    checkpoint: str | None = None

    @property
    def id(self) -> str:
        return f"preset:{self.target}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.result.runtime.get('runtime', self.target) if self.result else self.target} {self.name}"


def declared(targets: dict, model_config: dict, available: dict) -> list[tuple[str, str, Strategy | str]]:
    """(target, name, the preset's strategy, or why it cannot run here) for each experiment target's presets."""
    out = []
    for tname, t in targets.items():
        for name, steps in t.presets.items():
            made, why = [], None
            for raw in steps:
                step, why = _resolve(Step(**raw), model_config, available)
                if why:
                    break
                made.append(step)
            out.append((tname, name, why or Strategy(action="quantization", steps=made, policy="preset",
                                                     reasoning=f"the community preset {name} on {tname}")))
    return out


def _resolve(step: Step, model_config: dict, available: dict) -> tuple[Step, str | None]:
    """The step with each "largest" parameter set to the largest of its choices the model allows, or why the
    method cannot run here."""
    m = available.get(step.method)
    if m is None:
        return step, f"{step.method} is not available here (acf methods says why)"
    params = dict(step.params)
    for p in m.params:
        if params.get(p.name) == "largest":
            fits = [c for c in sorted((c for c in p.choices if isinstance(c, int)), reverse=True)
                    if m.check({**params, p.name: c}, model_config) is None]
            if not fits:
                return step, f"no {step.method}.{p.name} of {p.choices} fits this model"
            params[p.name] = fits[0]
    why = m.check(params, model_config)
    return step.model_copy(update={"params": params}), why


def read(folder: Path) -> Preset | None:
    from ..files import read_json

    f = folder / RESULTS
    return Preset(**read_json(f, "a preset's results")) if f.is_file() else None


def closest(result: EvaluationResult, target: str, presets: list[Preset]) -> Preset | None:
    """The measured preset of the same target nearest in size (on a log scale): what the candidate replaces."""
    same = [p for p in presets if p.result is not None and p.target == target]
    return min(same, key=lambda p: abs(math.log(result.size_bytes / p.result.size_bytes)), default=None)


def comparison(episode_id: str, result: EvaluationResult, preset: Preset) -> str:
    """'episode_003: 0.42x the KLD of llama.cpp Q4_K_M at 0.97x its size and 1.02x its latency' (each a ratio of the
    two measurements; the latencies are each paired with the same baseline)."""
    p = preset.result
    parts = []
    if result.kld is not None and p.kld:
        parts.append(f"{result.kld / p.kld:.2f}x the KLD of {preset.label} ({result.kld:.4f} vs {p.kld:.4f})")
    else:
        parts.append(f"accuracy {result.accuracy:.3f} vs {p.accuracy:.3f} of {preset.label}")
    parts.append(f"at {result.size_bytes / p.size_bytes:.2f}x its size")
    parts.append(f"{result.latency_ms / p.latency_ms:.2f}x its latency")
    return f"{episode_id}: {parts[0]} {parts[1]} and {parts[2]}"


def measure_all(exp) -> list[Preset]:
    """Each of the experiment's targets' presets, measured once as a candidate is (export, evaluation beside the
    target's baseline), or read back from ``presets/`` where an earlier attempt of this run measured it."""
    from ..files import write_json
    from . import episodes

    out = []
    for target, name, strategy in declared(exp.targets, exp.model_config, exp.available_methods()):
        folder = exp.dir / "presets" / f"{target}-{name.replace(' ', '_')}"
        if (done := read(folder)) is not None:
            out.append(done)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(strategy, str):
            p = Preset(target=target, name=name, strategy=Strategy(action="quantization", policy="preset"),
                       status="unavailable", error=strategy)
        else:
            exp.progress("preset", 0, preset=name, target=target)
            work = episodes.compress(exp.job(-1, strategy, folder, target))
            if not work["current_error"]:
                work.update(episodes.evaluate(exp.evaluators[target], Path(work["compressed_model_path"])))
            ok = work.get("current_result") is not None and not work.get("current_error")
            p = Preset(target=target, name=name, strategy=strategy, status="success" if ok else "failed",
                       result=EvaluationResult(**work["current_result"]) if ok else None,
                       error=work.get("current_error"), checkpoint=work["compressed_model_path"] if ok else None)
        write_json(folder / RESULTS, p.model_dump())
        out.append(p)
    return out


def summary(presets: list[Preset]) -> list[dict]:
    """What final_results.json keeps of each preset: the reference rows of the report."""
    return [{"id": p.id, "target": p.target, "name": p.name, "label": p.label, "status": p.status,
             "steps": [s.model_dump() for s in p.strategy.steps], "error": p.error, "checkpoint": p.checkpoint,
             "objectives": p.result.objectives() if p.result else None,
             "accuracy_stderr": p.result.accuracy_stderr if p.result else None,
             "accuracy_n": p.result.accuracy_n if p.result else None,
             "perplexity": p.result.perplexity if p.result else None,
             "kld": p.result.kld_detail or None if p.result else None,
             "runtime": p.result.runtime if p.result else None} for p in presets]
