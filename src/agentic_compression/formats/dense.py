"""Dense: transformers' own safetensors, no quantization and no factorised layers (structured pruning's smaller
model is dense too: its config has the smaller widths)."""
from __future__ import annotations

from pathlib import Path

from .base import Format, quant_method, register
from .low_rank import LOWRANK_FILE


@register
class Dense(Format):
    name = "dense"

    def holds(self, model) -> bool:
        return True

    def stored(self, folder: Path) -> bool:
        return quant_method(folder) is None and not (Path(folder) / LOWRANK_FILE).is_file()
