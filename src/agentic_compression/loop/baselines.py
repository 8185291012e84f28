"""The baselines a run measures before its first episode: the transformers fp32 model the practitioner starts
from (the reference), and each target's own uncompressed export timed beside it; the first target's baseline
normalises the frontier. Reloaded from the folder on resume."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import console, models
from ..errors import UserError
from ..evaluation import EvaluationError, Evaluator, sanity
from ..schemas import ParetoSolution, Strategy


def make_evaluators(exp) -> None:
    tok = models.load_tokenizer(exp.model_path)  # the model itself is loaded in the evaluation process
    exp.work_dir.mkdir(exist_ok=True)
    exp.evaluators = {n: Evaluator(exp.cfg.eval.model_copy(update={"target": n}), exp.cfg.data_dir, tok,
                                   exp.work_dir) for n in exp.targets}
    exp.evaluator = exp.evaluators[exp.target.name]


def evaluate_reference(exp) -> None:
    """The transformers fp32 model the practitioner starts from, measured in full: each other target's own
    baseline (its f32 export) is timed beside it, so "N x faster than what you started from" is a ratio
    measured side by side, and every target's latencies share its scale."""
    ev = exp.evaluators.get("transformers") or Evaluator(
        exp.cfg.eval.model_copy(update={"target": "transformers"}), exp.cfg.data_dir,
        models.load_tokenizer(exp.model_path), exp.work_dir)
    exp.reference = ev.evaluate(exp.model_path)
    exp.store.write_reference(exp.model_path, exp.reference)


def export_baseline(exp, t) -> Path:
    ckpt = exp.baseline_checkpoint(t.name)
    if not (ckpt / "acf_format.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)  # a killed export's leftovers (acf's own folder)
        try:
            t.export(exp.model_path, ckpt)
        except RuntimeError as e:
            raise UserError(f"{exp.cfg.model} could not be exported to {t.name}: {e}",
                            "leave that target out, or report the converter's message") from None
    return ckpt


def evaluate_baseline(exp) -> None:
    console.route(exp.store.baseline_dir / console.LOG)  # other libraries' output, off the terminal
    make_evaluators(exp)
    try:
        if set(exp.targets) != {"transformers"}:
            evaluate_reference(exp)
        for name, t in exp.targets.items():
            ev = exp.evaluators[name]
            if name == "transformers":
                if exp.reference is None:
                    exp.reference = ev.evaluate(exp.model_path)
                exp.baselines[name] = exp.reference
                continue
            ckpt = export_baseline(exp, t) if t.exports else exp.model_path
            ev.pair_first_with(exp.model_path, "transformers", exp.reference)
            exp.baselines[name] = ev.evaluate(ckpt)
        exp.baseline = exp.baselines[exp.target.name]
    except EvaluationError as e:  # the model itself does not load or run: the user's input, one line
        last = (str(e).strip().splitlines() or [""])[-1][:300]
        raise UserError(f"the baseline {exp.model_path} could not be measured: {last}",
                        "check that the model loads with transformers, or choose another --model") from None
    if set(exp.targets) == {"transformers"}:
        exp.reference = None  # the baseline itself
    broken = sanity.problems(exp.baseline)
    if broken and not exp.cfg.force:
        raise UserError(f"the baseline {exp.model_path} looks broken: {'; '.join(broken)}",
                        "check the model's conversion and tokenizer, or pass --force to compress it anyway")
    exp.store.write_baseline(exp.baseline_checkpoint(exp.target.name), exp.baseline, broken,
                              {n: (exp.baseline_checkpoint(n), r) for n, r in exp.baselines.items()
                               if n != exp.target.name})
    add_baseline(exp)


def reload_baseline(exp) -> None:
    exp.baseline, others, exp.reference = exp.store.read_baseline()
    make_evaluators(exp)
    exp.baselines = {exp.target.name: exp.baseline, **others}
    for name, result in exp.baselines.items():
        exp.evaluators[name].set_baseline(result, exp.baseline_checkpoint(name))
    add_baseline(exp)


def add_baseline(exp) -> None:
    """The first target's baseline normalises the frontier; every other target's joins it as a candidate."""
    exp.frontier.baseline = exp.baseline.objectives()
    for name, result in exp.baselines.items():
        first = name == exp.target.name
        exp.frontier.add(ParetoSolution(
            episode_id="baseline" if first else f"baseline-{name}", objectives=result.objectives(),
            intervals=result.intervals, checkpoint=str(exp.baseline_checkpoint(name)),
            strategy=Strategy(action="pipeline", reasoning=f"uncompressed baseline in {name}")))
    exp.record_hv("baseline")
