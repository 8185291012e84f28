"""Multi-step strategies: the seed's pipeline templates and conditional steps.

A condition is ``<metric> <op> <number>`` over a cheap probe of the model as it is at that step, measured on a
held-out slice of the *calibration* half of the text (never evaluation text):
- ``ppl_ratio``: probe perplexity now / the base model's on the same tokens.
Example: ``ppl_ratio > 1.05`` runs LoRA recovery only when the earlier steps cost more than 5% perplexity."""
from __future__ import annotations

import operator
import re
from typing import Any, Callable

from ..methods import get
from ..schemas import Step, Strategy

_COND = re.compile(r"^\s*(ppl_ratio)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
METRICS = ("ppl_ratio",)


def parse_condition(text: str) -> tuple[str, Callable[[float, float], bool], float]:
    m = _COND.match(text)
    if not m:
        raise ValueError(f"condition {text!r} is not '<metric> <op> <number>' with metric in {METRICS} "
                         "and op in > >= < <=")
    return m.group(1), _OPS[m.group(2)], float(m.group(3))


def holds(text: str, facts: dict[str, float]) -> bool:
    metric, op, value = parse_condition(text)
    return op(facts[metric], value)


AUTO = "auto"  # a group size chosen per model (fit_group_size)

TEMPLATES: dict[str, list[Step]] = {
    "quick_eval": [Step(method="rtn", params={"scheme": "W4A16", "group_size": AUTO})],
    "accuracy_focus": [Step(method="gptq", params={"scheme": "W8A16", "group_size": AUTO})],
    "balanced_quality": [
        Step(method="gptq", params={"scheme": "W4A16", "group_size": AUTO}),
        Step(method="lora", params={"steps": 30}, condition="ppl_ratio > 1.05"),
    ],
    "aggressive_compression": [
        Step(method="structured", params={"granularity": "mlp", "ratio": 0.2}),
        Step(method="distill", params={"steps": 30}, condition="ppl_ratio > 1.1"),
        Step(method="gptq", params={"scheme": "W4A16", "group_size": AUTO}),
    ],
}


def fit_group_size(method: str, params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``group_size: "auto"`` -> the largest of 128, 64, 32 that divides every Linear width of this model, else
    per-channel; the method's default when nothing fits (another parameter is wrong: its check then says which)."""
    if params.get("group_size") != AUTO:
        return params
    fits = [g for g in (128, 64, 32, None) if get(method).check({**params, "group_size": g}, config) is None]
    return {**params, "group_size": fits[0] if fits else get(method).defaults()["group_size"]}


def instantiate(name: str, config: dict[str, Any], available: dict, overrides: dict | None = None) -> Strategy | None:
    """The template as a concrete strategy for this model, or None when a method is unavailable here or no
    parameters fit (the reason is not an error: the template just does not apply)."""
    steps = []
    for st in TEMPLATES[name]:
        if st.method not in available:
            return None
        params = fit_group_size(st.method, {**st.params, **(overrides or {}).get(st.method, {})}, config)
        if get(st.method).check(params, config) is not None:
            return None
        steps.append(Step(method=st.method, params=params, condition=st.condition))
    return Strategy(action="pipeline", steps=steps, reasoning=f"template {name}")


def validate(strategy: Strategy, target=None) -> tuple[int, str] | None:
    """(step index, why) when a strategy cannot run as written (unknown method, bad condition, a format the target
    does not run, a target's file-level step before the end), else None."""
    for i, st in enumerate(strategy.steps):
        try:
            m = get(st.method)
            if st.condition:
                parse_condition(st.condition)
        except (KeyError, ValueError) as e:
            return i, f"step {i}: {e}"
        if m.final and i != len(strategy.steps) - 1:
            return i, f"step {i}: {st.method} writes the deployed file, so it must be the last step"
        if target is not None and not target.offers(m):
            return i, (f"step {i}: {st.method} produces {m.produces} checkpoints, which the {target.name} target does "
                       f"not run (it runs {', '.join(sorted(target.runs))})")
    return target.refuses(strategy.steps) if target is not None else None


class Probe:
    """The facts conditions are decided on, on the end of the run's calibration text (--calibration; never
    evaluation text); the base model's side is measured once and cached."""

    def __init__(self, data_dir, base_path, source: str = "wikitext2-first-half", tokens: int = 1024):
        self.data_dir, self.base_path, self.source, self.tokens = data_dir, base_path, source, tokens
        self._base: float | None = None

    def _ppl(self, model, tokenizer) -> float:
        from ..data import read_text
        from ..evaluation import bos_id
        from ..evaluation.measure import perplexity

        ids = tokenizer(read_text(self.data_dir, self.source)[-20000:], add_special_tokens=False)["input_ids"]
        return perplexity(model, ids[-self.tokens:], 512, 512, bos_id(tokenizer))["perplexity"]

    def __call__(self, model, tokenizer) -> dict[str, float]:
        if self._base is None:
            from ..models import load

            self._base = self._ppl(*load(self.base_path))
        return {"ppl_ratio": self._ppl(model, tokenizer) / self._base}
