"""compressed-tensors: llm-compressor's format (packed integer weights, scales, the recipe). transformers loads it,
vLLM serves it; transformers unpacks the weights to float on the first forward pass."""
from __future__ import annotations

from pathlib import Path

from .base import Format, register


@register
class CompressedTensors(Format):
    name = "compressed-tensors"

    def holds(self, model) -> bool:
        """A compressed-tensors quantization scheme is attached to some module (llm-compressor's oneshot)."""
        return any(hasattr(m, "quantization_scheme") for m in model.modules())

    def save(self, model, out: Path) -> None:
        model.save_pretrained(out, save_compressed=True)


def unpack(model) -> None:
    """transformers unpacks compressed-tensors weights on the first forward pass: run a one-token one."""
    import torch

    with torch.no_grad():
        model(input_ids=torch.tensor([[0]], device=model.device))
