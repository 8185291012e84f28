"""bitsandbytes: INT8 (LLM.int8) and 4-bit NF4/FP4 weights. transformers quantizes them at load, from the
BitsAndBytesConfig the saved config carries (methods/bnb.py)."""
from __future__ import annotations

from .base import Format, register


@register
class BitsAndBytes(Format):
    name = "bitsandbytes"

    def holds(self, model) -> bool:
        return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
