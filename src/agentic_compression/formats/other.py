"""A checkpoint quantized by a library acf does not write (GPTQ or AWQ from the Hub, FP8, ...): transformers loads it
as its config says, as any format's default load does. No acf method produces it, so no model in memory is in it;
it is only ever a base an experiment starts from."""
from __future__ import annotations

from pathlib import Path

from ..registry import FORMATS
from .base import Format, quant_method, register


@register
class Other(Format):
    name = "other"

    def holds(self, model) -> bool:
        return False

    def stored(self, folder: Path) -> bool:
        return quant_method(folder) is not None and not any(f.stored(folder) for f in FORMATS.values() if f is not self)
