"""transformers on PyTorch: every PyTorch-side format, measured as acf always has."""
from __future__ import annotations

from pathlib import Path

from .base import Target, register


@register
class Transformers(Target):
    name = "transformers"
    runtime = "transformers"
    runs = frozenset({"dense", "compressed-tensors", "bitsandbytes", "low-rank"})
    # GPTQ W4A16 (llm-compressor) at the largest group size the model's widths allow
    presets = {"GPTQ W4A16": [{"method": "gptq", "params": {"scheme": "W4A16", "group_size": "largest"}}]}
    requires = ("transformers",)
    exports = False

    def load(self, checkpoint: Path, settings):
        from ..models import load

        return load(checkpoint, device=settings.device)[0]

    def lm(self, model, tokenizer, settings, add_bos):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, add_bos_token=add_bos)

    def num_params(self, model) -> int:
        from ..formats import logical_params

        return logical_params(model)

    def describe(self, checkpoint: Path, model) -> dict:
        from .. import formats

        return formats.describe(checkpoint, self.num_params(model))
