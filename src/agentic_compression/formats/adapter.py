"""An adapter on a base: LoRA weights (peft, unmerged) saved in ``adapter/`` beside a base checkpoint in any format,
and loaded onto it. QLoRA keeps its NF4 base this way, and LoRA on a compressed-tensors base keeps the base's
packed bytes."""
from __future__ import annotations

from pathlib import Path

ADAPTER_DIR = "adapter"


def base_of(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def save(model, out: Path):
    """Write the adapter of a peft model to ``out/adapter`` and return the base without it (any other model as
    it is)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    model.save_pretrained(Path(out) / ADAPTER_DIR)  # before unload(), which strips the adapter layers
    return model.unload()


def load(model, folder: Path) -> None:
    """Load ``folder``'s adapter onto ``model`` when it has one."""
    from .compressed_tensors import unpack

    if (folder / ADAPTER_DIR / "adapter_config.json").exists():
        if any(hasattr(m, "weight_packed") for m in model.modules()):
            unpack(model)  # peft needs the float weight
        model.load_adapter(str(folder / ADAPTER_DIR))
