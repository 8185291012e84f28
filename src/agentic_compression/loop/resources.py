"""The seed's resource monitor: before an episode, compare what the strategy is expected to need with what the
machine has now; a strategy that cannot fit is refused with the reason instead of being attempted."""
from __future__ import annotations

import psutil

from ..methods import get
from ..schemas import ModelSpec, Strategy

RUNTIME_OVERHEAD_GB = 1.0  # python + torch + transformers + a second (evaluation) process


def estimate_gb(strategy: Strategy, spec: ModelSpec) -> float:
    fp32_gb = spec.num_params * 4 / 1e9
    factor = max((get(s.method).memory_factor for s in strategy.steps), default=1.0)
    return fp32_gb * factor + RUNTIME_OVERHEAD_GB


def check(strategy: Strategy, spec: ModelSpec, available_gb: float | None = None) -> str | None:
    """None when it fits, else the reason it is refused."""
    have = psutil.virtual_memory().available / 1e9 if available_gb is None else available_gb
    need = estimate_gb(strategy, spec)
    if need > have:
        return (f"needs about {need:.1f} GB of memory ({spec.num_params / 1e9:.2f}B params in fp32 x the method's "
                f"working factor + runtime), but only {have:.1f} GB is available")
    return None
