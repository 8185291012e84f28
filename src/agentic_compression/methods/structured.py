"""Structured pruning that really removes structure (our code): MLP channels, attention key/value head groups, or
whole decoder layers. The result is a standard, smaller config (same ratio in every layer, so one config value
describes it) that any transformers runtime loads.

Scores are activation-aware, measured on calibration text (magnitude alone wrecks SmolLM2: torch-pruning's
magnitude importance took WikiText-2 perplexity to ~4,900 at 10% of MLP channels):
- MLP channel j: ||a_j||_2 * ||W_down[:, j]||_2, a_j the down-projection input (Wanda's score per channel);
- KV group g: sum over its query heads of ||o_proj input slice||_2 * ||W_o[:, slice]||_F;
- layer: 1 - cos(h_in, h_out) averaged over tokens (ShortGPT's block influence): the layers that change the
  residual stream least go first."""
from __future__ import annotations

import torch
from torch import nn

from ..models.architecture import Architecture, of_config, of_model
from ..models.stats_cache import forward_with_hooks, input_stats
from .base import Context, Method, Param, register


def _keep(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    return scores.topk(n_keep).indices.sort().values


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


@torch.no_grad()
def prune_mlp(model, arch: Architecture, inputs: dict, ratio: float) -> int:
    """``inputs``: stats_cache.input_stats of the model (the down projections' x^2 sums are used)."""
    mlps = [layer.get_submodule(arch.mlp) for layer in arch.blocks(model)]
    acts = {str(i): inputs[f"{arch.layers}.{i}.{arch.mlp}.down_proj"]["sq_sum"] for i in range(len(mlps))}
    inter = mlps[0].down_proj.in_features
    n_keep = max(8, int(round(inter * (1 - ratio) / 8)) * 8)
    for i, mlp in enumerate(mlps):
        score = acts[str(i)].sqrt() * mlp.down_proj.weight.norm(dim=0)
        keep = _keep(score, n_keep)
        if isinstance(getattr(mlp, "gate_proj", None), nn.Linear):  # gated MLPs (Llama, Qwen2, Mistral, Gemma)
            mlp.gate_proj = _slice_linear(mlp.gate_proj, rows=keep)
        mlp.up_proj = _slice_linear(mlp.up_proj, rows=keep)
        mlp.down_proj = _slice_linear(mlp.down_proj, cols=keep)
    model.config.intermediate_size = n_keep
    return n_keep


@torch.no_grad()
def prune_heads(model, arch: Architecture, inputs: dict, ratio: float) -> int:
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    group = heads // kv
    kv_keep = max(1, int(round(kv * (1 - ratio))))
    if kv_keep == kv:
        raise ValueError(f"ratio {ratio} removes no key/value head group of {kv}")
    attns = [layer.get_submodule(arch.attention) for layer in arch.blocks(model)]
    acts = {str(i): inputs[f"{arch.layers}.{i}.{arch.attention}.o_proj"]["sq_sum"] for i in range(len(attns))}
    for i, att in enumerate(attns):
        per_head = (acts[str(i)].reshape(heads, hd).sum(1).sqrt()
                    * att.o_proj.weight.reshape(-1, heads, hd).pow(2).sum((0, 2)).sqrt())
        groups = _keep(per_head.reshape(kv, group).sum(1), kv_keep)
        q_heads = (groups[:, None] * group + torch.arange(group)).flatten()
        q_idx = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
        kv_idx = (groups[:, None] * hd + torch.arange(hd)).flatten()
        att.q_proj = _slice_linear(att.q_proj, rows=q_idx)
        att.k_proj = _slice_linear(att.k_proj, rows=kv_idx)
        att.v_proj = _slice_linear(att.v_proj, rows=kv_idx)
        att.o_proj = _slice_linear(att.o_proj, cols=q_idx)
        for attr, value in (("num_heads", kv_keep * group), ("num_key_value_heads", kv_keep)):
            if hasattr(att, attr):
                setattr(att, attr, value)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = kv_keep * group, kv_keep, hd
    return kv_keep


@torch.no_grad()
def prune_layers(model, arch: Architecture, samples, ratio: float) -> list[int]:
    layers = arch.blocks(model)
    n = len(layers)
    n_drop = max(1, int(round(n * ratio)))
    if n_drop >= n:
        raise ValueError(f"ratio {ratio} would remove all {n} layers")
    influence = torch.zeros(n)

    def f(module, args, kwargs, out, i):
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = out[0] if isinstance(out, tuple) else out
        influence[i] += (1 - nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)).mean()

    forward_with_hooks(model, samples, [layer.register_forward_hook(
        lambda m, a, k, o, i=i: f(m, a, k, o, i), with_kwargs=True) for i, layer in enumerate(layers)])
    drop = set(influence.topk(n_drop, largest=False).indices.tolist())
    kept = [l for i, l in enumerate(layers) if i not in drop]
    for new_idx, layer in enumerate(kept):  # the KV cache is indexed by the attention's layer_idx
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    parent, _, child = arch.layers.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return sorted(drop)


@register
class Structured(Method):
    name = "structured"
    action = "pruning"
    produces, region = "dense", "dense-smaller"
    tags = ("pruned",)
    requires = ()
    memory_factor = 1.5
    reduces = ("model_size_gb", "memory_gb", "latency_ms")
    params = (Param(name="granularity", choices=["mlp", "head", "layer"], default="mlp"),
              Param(name="ratio", low=0.02, high=0.6, default=0.1, grid=[0.05, 0.1, 0.2],
                    help="fraction of channels / KV head groups / layers removed"),
              Param(name="num_samples", low=1, high=1024, default=16, help="calibration windows for the scores"),
              Param(name="seq_len", low=16, high=4096, default=256))

    @classmethod
    def check(cls, params, config):
        if err := super().check(params, config):
            return err
        p = cls.resolve(params)
        arch = of_config(config)
        if arch is not None and (why := _unsupported(arch, p["granularity"])):
            return why
        if p["granularity"] == "head" and config.get("num_key_value_heads"):
            kv = config["num_key_value_heads"]
            if max(1, int(round(kv * (1 - p["ratio"])))) == kv:
                return f"ratio {p['ratio']} removes no key/value head group of {kv}"
        return None

    def apply(self, model, tokenizer, params, ctx: Context):
        p = self.resolve(params)
        arch = of_model(model)
        if why := _unsupported(arch, p["granularity"]):
            raise ValueError(why)
        samples = ctx.calibration(tokenizer, int(p["num_samples"]), int(p["seq_len"]))
        if p["granularity"] == "layer":
            prune_layers(model, arch, samples, p["ratio"])
        else:  # the inputs' x^2 sums, from the experiment's statistics when measured before
            prune = prune_mlp if p["granularity"] == "mlp" else prune_heads
            prune(model, arch, input_stats(model, samples, ctx.stats), p["ratio"])
        return model

    @classmethod
    def supports(cls, arch: Architecture) -> str | None:
        return _unsupported(arch, "layer")


def _unsupported(arch: Architecture, granularity: str) -> str | None:
    """Why this granularity cannot be pruned on this architecture, or None."""
    if arch.layers is None:
        return f"a {arch.family} model has no list of decoder blocks to prune"
    if granularity == "mlp" and (arch.mlp is None or not arch.linear):
        return f"a {arch.family} block has no MLP with separate up/down Linear projections to slice"
    if granularity == "head" and (arch.attention is None or not arch.linear):
        return f"a {arch.family} block has no attention with separate q/k/v/o Linear projections to slice"
    return None
