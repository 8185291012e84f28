"""A decoder's structure, read from the model itself, never from Llama's module names: where its blocks are, which
child of a block is the attention and which the MLP, which module is the output head and whether it shares the
embedding's weight, and the input widths of its Linear layers. Methods that name modules (structured pruning, ASVD,
the group-size rule, the head every quantizer leaves alone) ask this, and say why they do not apply when a family
lacks what they need (fused q/k/v projections, GPT-2's Conv1D, no decoder blocks)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from torch import nn

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # separate projections: heads can be sliced
MLP = ("up_proj", "down_proj")  # gate_proj too where the MLP is gated (Llama, Qwen2, Mistral, Gemma)


@dataclass(frozen=True)
class Architecture:
    family: str
    layers: str | None  # dotted path of the ModuleList of decoder blocks ("model.layers")
    n_layers: int
    attention: str | None  # the block's child with separate q/k/v/o projections ("self_attn"), None if fused
    mlp: str | None  # the block's child with up/down projections ("mlp"), None if fused or absent
    head: str | None  # the output projection ("lm_head")
    tied: bool  # the head's weight is the input embedding's
    widths: tuple[int, ...]  # input widths of every Linear in the blocks (what a group size must divide)
    embedding_share: float  # fraction of the parameters in the input embedding (Gemma 3 270M: 0.63)
    linear: bool  # the blocks' projections are nn.Linear (GPT-2's Conv1D is not)
    notes: tuple[str, ...] = field(default=())  # what a practitioner should know about this family

    def block_linears(self, model, part: str | None = None) -> dict[str, nn.Linear]:
        """Every Linear inside the decoder blocks, by full name; ``part`` "attention" or "mlp" keeps that child's."""
        if self.layers is None:
            return {}
        child = {None: None, "attention": self.attention, "mlp": self.mlp}[part]
        if part is not None and child is None:
            return {}
        blocks = model.get_submodule(self.layers)
        return {f"{self.layers}.{n}": m for n, m in blocks.named_modules()
                if isinstance(m, nn.Linear) and (child is None or n.split(".")[1:2] == [child])}

    def blocks(self, model) -> nn.ModuleList:
        if self.layers is None:
            raise ValueError(f"a {self.family} model has no list of decoder blocks acf can find")
        return model.get_submodule(self.layers)

    def ignore(self) -> list[str]:
        """Module names every weight quantizer and pruner leaves alone: the output head (tied to the embedding in
        most small models, where quantizing it would quantize the embedding too)."""
        return [self.head] if self.head else []


def _child_with(block: nn.Module, names: tuple[str, ...]) -> str | None:
    for n, m in block.named_children():
        if all(isinstance(getattr(m, x, None), nn.Module) for x in names):
            return n
    return None


def of_model(model) -> Architecture:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)
             and len({type(b) for b in m}) == 1 and any(isinstance(x, nn.Module) for x in m[0].children())]
    # the blocks transformers itself keeps whole (_no_split_modules), else the outermost list: a mixture of experts
    # holds longer lists of experts inside each block
    split = set(getattr(model, "_no_split_modules", None) or ())
    name, blocks = min(lists, key=lambda x: (type(x[1][0]).__name__ not in split, x[0].count("."), -len(x[1])),
                       default=(None, None))
    block = blocks[0] if blocks is not None else None
    attention = _child_with(block, ATTENTION) if block is not None else None
    mlp = _child_with(block, MLP) if block is not None else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = next((n for n, m in model.named_modules() if m is out), None) if out is not None else None
    tied = out is not None and emb is not None and out.weight is emb.weight
    total = sum(p.numel() for p in model.parameters())
    inner = blocks.modules() if blocks is not None else ()
    projections = [m for m in inner if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    cfg = getattr(model, "config", None)
    notes = []
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "layer_types", None):
        notes.append(f"sliding-window attention in {sum(t != 'full_attention' for t in cfg.layer_types)} of "
                     f"{len(cfg.layer_types)} layers")
    if attention and any(hasattr(block.get_submodule(attention), x) for x in ("q_norm", "k_norm")):
        notes.append("q/k norms")
    share = emb.weight.numel() / total if emb is not None and total else 0.0
    if share > 0.4:
        notes.append(f"the embedding holds {share:.0%} of the weights, and {'the tied head' if tied else 'it'} "
                     "stays unquantized")
    return Architecture(
        family=getattr(cfg, "model_type", type(model).__name__), layers=name,
        n_layers=len(blocks) if blocks is not None else 0, attention=attention, mlp=mlp, head=head, tied=tied,
        widths=tuple(sorted({m.in_features for m in projections if isinstance(m, nn.Linear)})),
        embedding_share=round(share, 4),
        linear=bool(projections) and all(isinstance(m, nn.Linear) for m in projections),
        notes=tuple(notes))


@lru_cache(maxsize=16)
def _of_config_json(text: str) -> Architecture:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads(text)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):  # the structure without the weights: instant for any size
        model = AutoModelForCausalLM.from_config(config)
    return of_model(model)


def of_config(config: dict) -> Architecture | None:
    """The architecture a Hugging Face config describes (a model built on the meta device), or None when the config
    names no model type transformers can build."""
    if not isinstance(config.get("model_type"), str):
        return None
    try:
        return _of_config_json(json.dumps(config, sort_keys=True, default=str))
    except (ValueError, KeyError, TypeError, ImportError):  # an unknown or custom model type: nothing to read
        return None
