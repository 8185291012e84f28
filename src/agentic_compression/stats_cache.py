"""Calibration statistics computed once per experiment: what a calibration pass measures that a later episode can
reuse (today: mixed precision's per-layer sensitivities) is stored in the experiment folder (``statistics/``), keyed
by the weights it was measured on (a digest of every tensor), the calibration windows and the settings. A second
mixed-precision episode at another budget, on the same model, measures nothing again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from .files import write_json

T = TypeVar("T")
FOLDER = "statistics"


def weights_digest(model) -> str:
    """SHA-256 over every parameter and buffer, by name: the checkpoint a statistic was measured on, whatever
    earlier steps of the strategy did to it."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return h.hexdigest()


def cached(folder: Path | None, kind: str, key: dict[str, Any], compute: Callable[[], T]) -> tuple[T, bool]:
    """``compute()``'s JSON value, from ``folder`` when an earlier call stored it under the same key; returns
    (value, reused). With no folder (a method run outside an experiment) it always computes. A torn or unreadable
    file is computed again and rewritten."""
    if folder is None:
        return compute(), False
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = folder / f"{kind}-{digest}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == json.loads(json.dumps(key, default=str)):
            return stored["value"], True
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    value = compute()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"kind": kind, "key": key, "value": value})
    return value, False
