"""Checkpoint formats on the PyTorch side. Each one owns how a model in it is recognised (in memory and in a saved
folder), saved and loaded back; a method declares the format it produces (``Method.produces``), and a target names
the formats it serves (``Target.runs``). A new format is one module here (base.py: the interface) plus its tests.

- ``dense`` (dense.py): transformers' own safetensors, structured pruning's smaller model included;
- ``compressed-tensors`` (compressed_tensors.py): llm-compressor's packed weights, scales and recipe;
- ``bitsandbytes`` (bitsandbytes.py): INT8 / NF4 / FP4 weights, which transformers quantizes at load;
- ``low-rank`` (low_rank.py): ASVD's factor pairs and the map of which modules hold them;
- an adapter (adapter.py): LoRA weights (peft) kept beside a base in any of the formats above, and loaded onto it;
- ``other`` (other.py): a base quantized by a library acf does not write (GPTQ/AWQ from the Hub), loaded by
  transformers as its config says.

The runtimes' own files (GGUF, ONNX) belong to their targets (targets/), which export to them."""
from __future__ import annotations

import importlib
import pkgutil
import shutil
from pathlib import Path

from ..registry import FORMATS
from .base import Format, quant_method, register

__all__ = ["FORMATS", "Format", "bits_per_weight", "describe", "load", "logical_params", "of", "quant_method",
           "register", "save", "stored_as"]


def of(model) -> Format:
    """The format a model in memory is in (under a LoRA adapter, its base's). Two at once has no checkpoint that
    reloads, so it is an error."""
    from .adapter import base_of

    base = base_of(model)
    found = [f for f in FORMATS.values() if f.name != "dense" and f.holds(base)]
    if len(found) > 1:
        raise ValueError(f"the model is {' and '.join(f.name for f in found)} at once, which no checkpoint format "
                         "reloads: apply one of them only")
    return found[0] if found else FORMATS["dense"]


def stored_as(folder: Path) -> Format:
    """The one format a saved folder is in."""
    found = [f for f in FORMATS.values() if f.stored(Path(folder))]
    if len(found) != 1:
        raise ValueError(f"{folder} is claimed by {len(found)} formats ({', '.join(f.name for f in found)}), not one")
    return found[0]


def save(model, tokenizer, out: Path, source: Path | None = None) -> None:
    """Save ``model`` in the format it is in now, whichever step put it there, with its tokenizer, and its LoRA
    adapter (peft, unmerged) beside it. ``source``: a checkpoint the base model is an unchanged copy of (a quantized
    model reloaded between pipeline steps); it is copied byte for byte, since re-saving unpacked weights would store
    them as float32."""
    from . import adapter

    out = Path(out)
    model = adapter.save(model, out)
    if source is not None:  # an earlier adapter is not part of the base
        shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(adapter.ADAPTER_DIR))
    else:
        of(model).save(model, out)
    tokenizer.save_pretrained(out)


def load(folder: Path, device: str = "cpu"):
    """A saved checkpoint in whichever format it is, its adapter loaded onto it, in eval mode."""
    from . import adapter

    model = stored_as(folder).load(Path(folder), device)
    adapter.load(model, Path(folder))
    model.eval()
    return model


_QUANT_AUX = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "input_scale", "input_zero_point")


def logical_params(model) -> int:
    """Weights the network computes with: a packed weight (compressed-tensors, bitsandbytes 4-bit) counts as its
    unpacked shape; scales and zero points (quantization metadata) are not parameters. Tied tensors count once."""
    import math

    total, seen = 0, set()
    for mod in model.modules():
        tensors = dict(mod.named_parameters(recurse=False))
        if hasattr(mod, "weight_packed"):
            total += math.prod(int(v) for v in mod.weight_shape.tolist())
            tensors.pop("weight_packed", None)
        for name, t in tensors.items():
            if id(t) not in seen and not name.endswith(_QUANT_AUX):
                seen.add(id(t))
                shape = getattr(getattr(t, "quant_state", None), "shape", None)  # bitsandbytes 4-bit: packed
                total += math.prod(shape) if shape is not None else t.numel()
    return total


def bits_per_weight(folder: Path, params: int) -> float:
    """Stored bits per logical weight: the bytes of the weight files (scales, zero points and adapter included)
    over the parameters the network computes with."""
    stored = sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors"))
    return 8 * stored / params if params else 0.0


def describe(folder: Path, params: int) -> dict:
    """The format facts a result records: the format, whether an adapter rides on it, the real bits per weight."""
    from .adapter import ADAPTER_DIR

    return {"format": stored_as(folder).name, "adapter": (Path(folder) / ADAPTER_DIR).is_dir(),
            "bits_per_weight": round(bits_per_weight(folder, params), 3)}


# each module registers its format (a new format is one file); the built-in ones first, in the order listed above
from . import low_rank, compressed_tensors, bitsandbytes, dense, other  # noqa: E402,F401,I001

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
