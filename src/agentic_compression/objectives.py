"""The objectives, each declared once: its direction, unit, label, tie tolerance and reward weight, and the one
place a value is divided by the baseline's. The frontier, the reward, the report, the policies and the summaries
read them from here, so a new objective is one entry (plus the evaluation that measures it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str  # the EvaluationResult field it is read from
    sign: int  # +1 maximised, -1 minimised
    unit: str
    label: str  # axis and column titles
    tolerance: float | None  # relative difference that ties two values; None: the run's --noise-tolerance
    weight: float  # the reward's default weight of its relative change (reward.py)
    # None: compared relative to the baseline's value. A number: the baseline's value is zero by definition (a
    # divergence from the baseline), so it is read in units of this fixed scale instead, where the others read
    # ratios to the baseline (the frontier's normalisation, the reward)
    scale: float | None = None
    short: str = ""  # its word in the console's one-line summaries (the name when empty)
    fmt: str = ".4g"  # how its values are written

    @property
    def word(self) -> str:
        return self.short or self.name

    @property
    def goal(self) -> str:
        return "max" if self.sign > 0 else "min"

    def shown(self, value: float | None, stderr: float | None = None) -> str:
        """A value as every display writes it: formatted, with its standard error when it has one ('-': none)."""
        if value is None:
            return "-"
        return f"{value:{self.fmt}}" + (f" ± {stderr:{self.fmt}}" if stderr is not None else "")


SPECS = (
    Objective("accuracy", +1, "", "accuracy (mean benchmark score)", 0.0, 2.0, short="acc", fmt=".3f"),
    Objective("latency_ms", -1, "ms/token", "decode ms/token", None, 0.5, short="latency", fmt=".1f"),
    Objective("memory_gb", -1, "GB", "peak memory GB", None, 0.5, short="memory", fmt=".3f"),
    # bytes on disk: a real difference
    Objective("model_size_gb", -1, "GB", "size on disk GB", 0.001, 1.0, short="size", fmt=".3f"),
    Objective("co2_grams", -1, "g per 1k tokens", "CO2 g per 1k tokens", None, 0.25, short="CO2", fmt=".3g"),
    # the quantization community's quality measure: mean KL divergence of the candidate's next-token distribution
    # from the baseline's, over the perplexity windows' tokens; ties are decided by its standard errors. Scale
    # 0.5 nats: the hypervolume's reference point (2 units) is 1 nat, a broken model; a reward of -5 x KLD
    Objective("kld", -1, "nats/token", "KL divergence to the baseline (nats/token)", 0.0, 2.5, scale=0.5, short="KLD",
              fmt=".4f"),
)
BY_NAME = {o.name: o for o in SPECS}
OBJECTIVES: dict[str, int] = {o.name: o.sign for o in SPECS}  # name -> +1 maximise, -1 minimise, in order
NOISE = 0.05  # the default --noise-tolerance


def tolerances(noise: float = NOISE) -> dict[str, float]:
    """Each objective's tie tolerance, the measured-noise ones at ``noise``."""
    return {o.name: noise if o.tolerance is None else o.tolerance for o in SPECS}


def ratio(value: float, baseline: float) -> float | None:
    """A value relative to the baseline's; None when the baseline's is 0 (no ratio exists)."""
    return value / baseline if baseline else None


def normalised(name: str, value: float | None, baseline: float | None) -> float | None:
    """An objective's value as the frontier and the reward compare it: relative to the baseline's, or in units of
    its fixed scale; None when it was not measured (or no ratio exists)."""
    o = BY_NAME[name]
    if value is None:
        return None
    if o.scale is not None:
        return value / o.scale
    return ratio(value, baseline) if baseline is not None else None


RELATIVE = tuple(o.name for o in SPECS if o.scale is None)  # the objectives a result also states as ratios


def stderr(result, name: str) -> float | None:
    """An objective's standard error in a result (its JSON, or an EvaluationResult): ``<name>_stderr``, or its
    ``<name>_detail``'s; None when it has none."""
    get = result.get if isinstance(result, dict) else (lambda key: getattr(result, key, None))
    if (v := get(f"{name}_stderr")) is not None:
        return v
    return (get(f"{name}_detail") or {}).get("stderr")
