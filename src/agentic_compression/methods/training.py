"""Recovery by training, on the calibration half of the text (never on evaluation text):

- lora: LoRA adapters (peft) trained with the causal-LM loss; merged into the weights when they are plain floats
  (sparsity masks re-applied after merging), kept as an adapter beside a quantized base;
- qlora: the model loaded as bitsandbytes NF4, then LoRA on top (the QLoRA recipe);
- distill: logit distillation (KL at a temperature) from the uncompressed base model into the current model's
  float weights, sparsity masks kept.
All three are recovery steps: offered in pipelines after a compressing step, not alone."""
from __future__ import annotations

import torch
from torch import nn

from .. import formats
from ..models.architecture import of_model
from .base import Context, Method, Param, register

_TRAIN = (Param(name="steps", low=1, high=5000, default=30, help="optimizer steps"),
          Param(name="lr", low=1e-6, high=1e-2, default=2e-4),
          Param(name="batch_size", low=1, high=64, default=4),
          Param(name="seq_len", low=16, high=4096, default=128))


def _batches(ctx: Context, tokenizer, p: dict):
    windows = ctx.calibration(tokenizer, int(p["steps"]) * int(p["batch_size"]), int(p["seq_len"]))
    for i in range(0, len(windows), int(p["batch_size"])):
        yield torch.tensor(windows[i:i + int(p["batch_size"])])


def _sparsity_masks(model) -> dict[str, torch.Tensor]:
    """Zero masks of float Linear weights that are at least 10% zeros (pruned layers), to keep them pruned."""
    return {n: m.weight != 0 for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.weight.is_floating_point() and (m.weight == 0).float().mean() >= 0.1}


@torch.no_grad()
def _reapply(model, masks: dict[str, torch.Tensor]) -> None:
    for n, mask in masks.items():
        model.get_submodule(n).weight.mul_(mask)


def _quantized(model) -> bool:
    return formats.of(model).name in ("compressed-tensors", "bitsandbytes")


def train_lora(model, tokenizer, p: dict, ctx: Context):
    from peft import LoraConfig, get_peft_model

    masks = _sparsity_masks(model)
    cfg = LoraConfig(r=int(p["rank"]), lora_alpha=int(p["alpha"]), lora_dropout=0.0, target_modules="all-linear",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([q for q in peft_model.parameters() if q.requires_grad], lr=float(p["lr"]))
    peft_model.train()
    losses = []
    for batch in _batches(ctx, tokenizer, p):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    peft_model.eval()
    if not torch.isfinite(torch.tensor(losses)).all():
        raise FloatingPointError(f"LoRA training diverged (losses {losses[:3]}...)")
    ctx.measured["train_losses"] = losses
    if _quantized(model) or not p.get("merge", True):
        return peft_model  # saved as base + adapter/
    merged = peft_model.merge_and_unload()
    _reapply(merged, masks)
    return merged


_LORA = (Param(name="rank", choices=[4, 8, 16, 32], default=16),
         Param(name="alpha", choices=[8, 16, 32, 64], default=32), *_TRAIN)


@register
class LoRA(Method):
    name = "lora"
    tags = ("peft", "lora")
    action = "lora"
    requires = ("peft",)
    memory_factor = 3.0
    reduces = ()
    standalone = False
    keeps_base_weights = True
    params = (*_LORA, Param(name="merge", choices=[True, False], default=True, help="merge into float weights"))

    def apply(self, model, tokenizer, params, ctx: Context):
        return train_lora(model, tokenizer, self.resolve(params), ctx)


@register
class QLoRA(Method):
    name = "qlora"
    action = "qlora"
    produces = "bitsandbytes"
    tags = ("peft", "qlora")
    requires = ("peft", "bitsandbytes")
    memory_factor = 3.0
    reduces = ("model_size_gb",)
    params = _LORA

    @classmethod
    def bits(cls, params):
        return 4

    def apply(self, model, tokenizer, params, ctx: Context):
        from .bnb import load_quantized

        return train_lora(load_quantized(model, tokenizer, "nf4"), tokenizer, self.resolve(params), ctx)


@register
class Distill(Method):
    name = "distill"
    tags = ("distillation",)
    action = "distillation"
    requires = ()
    memory_factor = 4.0
    reduces = ()
    standalone = False
    params = (Param(name="temperature", low=0.5, high=10.0, default=2.0), *_TRAIN[:1],
              Param(name="lr", low=1e-7, high=1e-3, default=2e-5), *_TRAIN[2:])

    @classmethod
    def supports(cls, arch):  # trains every floating-point weight of the blocks, whatever their type
        return None if arch.layers else f"a {arch.family} model has no decoder blocks acf can find"

    def apply(self, model, tokenizer, params, ctx: Context):
        from ..models import load

        p = self.resolve(params)
        if _quantized(model):
            raise ValueError("distillation trains float weights: apply it before quantization in the pipeline")
        teacher_path = ctx.extras.get("teacher")
        if teacher_path is None:
            raise ValueError("distillation needs the base model as teacher (ctx.extras['teacher'])")
        teacher, _ = load(teacher_path)
        masks = _sparsity_masks(model)
        # the decoder blocks learn; the (tied) embedding and head stay as the base model's
        blocks = of_model(model).layers + "."
        params_ = [q for n, q in model.named_parameters() if q.is_floating_point() and n.startswith(blocks)]
        for q in model.parameters():
            q.requires_grad_(False)
        for q in params_:
            q.requires_grad_(True)
        opt = torch.optim.AdamW(params_, lr=float(p["lr"]), weight_decay=0.0)
        t = float(p["temperature"])
        model.train()
        losses = []
        for batch in _batches(ctx, tokenizer, p):
            with torch.no_grad():
                target = torch.log_softmax(teacher(input_ids=batch).logits / t, -1)
            logp = torch.log_softmax(model(input_ids=batch).logits / t, -1)
            loss = nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean") * t * t / batch.shape[1]
            loss.backward()
            opt.step()
            opt.zero_grad()
            _reapply(model, masks)
            losses.append(float(loss))
        model.eval()
        for q in params_:
            q.requires_grad_(False)
        if not torch.isfinite(torch.tensor(losses)).all():
            raise FloatingPointError(f"distillation diverged (losses {losses[:3]}...)")
        ctx.measured["train_losses"] = losses
        return model
