"""Spec inference: how big a model is and what to try first.

Sources, in order: local config.json + safetensors headers (exact), the Hub API when online (short timeout),
the built-in table of well-known models, a regex on the name."""
from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from ..errors import UserError
from ..files import read_json, reading, within
from ..models import model_db
from ..schemas import ModelSpec

_FAMILIES = ("llama", "mistral", "mixtral", "qwen", "gemma", "phi", "gpt2", "gpt_neox", "pythia", "opt", "bloom",
             "falcon", "mpt", "starcoder", "smollm", "olmo", "deepseek", "yi", "granite")


def safetensors_params(folder: Path) -> tuple[int, str] | None:
    """Exact parameter count and dominant dtype from the safetensors headers (reads headers only). A truncated or
    damaged file (a header that does not parse, or tensors that end past the file or short of it) is a UserError
    naming it, found here before any model is loaded."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total, by_dtype = 0, {}
    for f in files:
        if not within(f, folder):
            raise UserError(f"{f} is a link to a file outside the model folder",
                            "copy the weights into the folder instead of linking them")
        with reading(f, "safetensors weights", "restore or re-download the model's weights"):
            size = f.stat().st_size
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > size - 8:  # the message quotes none of the file's bytes
                    raise ValueError(f"its first 8 bytes are no header length for a {size}-byte file: not "
                                     "safetensors weights")
                header = json.loads(fh.read(n))
            end = 0
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                count = math.prod(t["shape"])
                total += count
                by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + count
                end = max(end, int(t["data_offsets"][1]))
            if 8 + n + end != size:
                raise ValueError(f"the tensors need {8 + n + end} bytes, but the file has {size} (truncated?)")
    return total, max(by_dtype, key=by_dtype.get) if by_dtype else "unknown"


def read_config(folder: Path) -> dict:
    """A model folder's config.json: a JSON object naming its model_type, else a UserError naming the file."""
    todo = "restore the model's config.json (a Hugging Face model folder's)"
    cfg = read_json(folder / "config.json", "a model's configuration", todo)
    if not isinstance(cfg.get("model_type"), str):
        raise UserError(f"{folder / 'config.json'} names no model_type", todo)
    return cfg


def params_from_name(name: str) -> int | None:
    """'Llama-2-7b' -> 7e9, 'Qwen2-1.5B' -> 1.5e9, 'SmolLM2-135M' -> 1.35e8; mixture names like 8x7b multiply."""
    m = re.search(r"(?:(\d+)x)?(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", name.lower().rsplit("/", 1)[-1])
    if not m:
        return None
    experts = int(m.group(1) or 1)
    return int(experts * float(m.group(2)) * (1e9 if m.group(3) == "b" else 1e6))


def family_from_name(name: str) -> str:
    low = name.lower()
    return next((f for f in _FAMILIES if f in low), "unknown")


def _hub_info(name: str, timeout: float = 3.0) -> tuple[int, str] | None:
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(name, timeout=timeout, expand=["safetensors", "config"])
    except Exception:  # offline, unknown, gated: the next source answers
        return None
    total = getattr(getattr(info, "safetensors", None), "total", None)
    family = (getattr(info, "config", None) or {}).get("model_type", family_from_name(name))
    return (int(total), family) if total else None


def classify(num_params: int) -> tuple[str, list[str]]:
    """The size class (the seed's rule: small <= 3B, medium <= 15B, large) and the methods preferred for it, in the
    order they declare (``Method.size_rank``: small -> AutoRound, medium -> GPTQ/AWQ, large -> GPTQ 4-bit)."""
    from .. import methods

    size = "small" if num_params <= 3e9 else "medium" if num_params <= 15e9 else "large"
    ranked = [m for m in methods.REGISTRY.values() if size in m.size_rank]
    return size, [m.name for m in sorted(ranked, key=lambda m: m.size_rank[size])]


def infer_spec(name: str, local: Path | None = None, online: bool = False) -> ModelSpec:
    num, dtype, family, source = None, None, None, None
    if local is not None and (local / "config.json").exists():
        family = read_config(local).get("model_type")
        hit = safetensors_params(local)
        if hit:
            (num, dtype), source = hit, "local"
    if num is None and online:
        hit = _hub_info(name)
        if hit:
            (num, family), source = hit, "hub"
    if num is None:
        hit = model_db.lookup(name)
        if hit:
            (num, fam), source = hit, "database"
            family = family or fam
    if num is None:
        num, source = params_from_name(name), "regex"
    if num is None:
        raise UserError(f"cannot infer the size of '{name}': no local weights, no Hub answer, not in the table, "
                        "and no size in its name", "pass a local model folder or a Hub id while online")
    size_class, preferred = classify(num)
    fp16_gb = num * 2 / 1e9
    return ModelSpec(
        model_name=name, num_params=num, model_size_gb=round(fp16_gb, 4), dtype=dtype,
        model_family=family or family_from_name(name),
        min_memory_gb=round(fp16_gb * 1.2, 3),            # fp16 weights + activations / KV cache
        recommended_memory_gb=round(num * 4 / 1e9 * 2.5, 3),  # fp32 copy + calibration state (Hessians, caches)
        size_class=size_class, preferred_methods=preferred, source=source)
