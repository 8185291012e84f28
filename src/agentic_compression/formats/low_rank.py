"""Low-rank: each factorised Linear W is two smaller ones, down (in -> r) and up (r -> out) (ASVD, methods/asvd.py).
The checkpoint holds the factors and ``acf_lowrank.json`` (which modules, which ranks); loading rebuilds the
architecture from config.json and that map, then loads the factors."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .base import Format, register

LOWRANK_FILE = "acf_lowrank.json"


class LowRankLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.up(self.down(x))


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def ranks(model) -> dict[str, int]:
    """module name -> rank, for every factorised Linear."""
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


@register
class LowRank(Format):
    name = "low-rank"

    def holds(self, model) -> bool:
        return bool(ranks(model))

    def stored(self, folder: Path) -> bool:
        return (Path(folder) / LOWRANK_FILE).is_file()

    def save(self, model, out: Path) -> None:
        model.save_pretrained(out)
        (Path(out) / LOWRANK_FILE).write_text(json.dumps({"format": "acf-lowrank-v1", "ranks": ranks(model)}))

    def load(self, folder: Path, device: str = "cpu"):
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
        for n, r in json.loads((folder / LOWRANK_FILE).read_text())["ranks"].items():
            lin = model.get_submodule(n)
            set_module(model, n, LowRankLinear(lin.in_features, lin.out_features, r, lin.bias is not None))
        state = {}
        for f in sorted(folder.glob("*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ValueError(f"low-rank checkpoint {folder} does not match its map: missing {missing}, "
                             f"unexpected {unexpected}")
        model.tie_weights()
        return model.to(device)
