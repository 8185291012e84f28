"""The Format base class: how a checkpoint format on the PyTorch side is recognised (a model in memory: ``holds``; a
saved folder: ``stored``), saved and loaded back. Exactly one registered format claims a saved folder (``dense`` the
unquantized one, ``other`` one quantized by a library acf does not write), so recognition does not depend on the
order formats register in."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from ..registry import FORMATS


class Format:
    name: ClassVar[str]

    def holds(self, model) -> bool:
        """The model in memory is in this format."""
        raise NotImplementedError

    def stored(self, folder: Path) -> bool:
        """A saved checkpoint folder is in this format."""
        return quant_method(folder) == self.name

    def save(self, model, out: Path) -> None:
        model.save_pretrained(out)

    def load(self, folder: Path, device: str = "cpu"):
        """The model in float32 where the format allows, on ``device`` (device_map places the quantized formats that
        cannot be moved after loading)."""
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                    **({"device_map": device} if device != "cpu" else {}))


def register(cls: type[Format]) -> type[Format]:
    """Add a format (one instance); a taken name is an error (registry.py)."""
    return FORMATS.register(cls)


def quant_method(folder: Path) -> str | None:
    """What a saved config.json says its weights are quantized with (None: not quantized)."""
    f = Path(folder) / "config.json"
    cfg = json.loads(f.read_text()) if f.is_file() else {}
    return (cfg.get("quantization_config") or {}).get("quant_method")
