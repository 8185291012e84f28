"""Calibration statistics computed once per experiment: what a calibration pass measures that a later episode can
reuse is stored in the experiment folder (``statistics/``), keyed by the weights it was measured on (a digest of
every tensor), the calibration windows and the settings:
- each block Linear's input activation sums (|x| and x^2 per channel: ASVD's scales, Wanda's norms, structured
  pruning's channel and head scores), ``input_stats``;
- mixed precision's per-layer sensitivities (methods/mixed.py, and llama.cpp's per-tensor ones);
- llama.cpp's importance matrix, a file (``cached_file``).
A second episode on the same model (another ASVD rank, another Wanda sparsity or pruning ratio, another bit budget)
measures nothing again. SparseGPT, AWQ and GPTQ collect their statistics inside llm-compressor, which offers no way
to hand them in: those are computed each time."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..files import write_json

T = TypeVar("T")
FOLDER = "statistics"


def weights_digest(model) -> str:
    """SHA-256 over every parameter and buffer, by name: the checkpoint a statistic was measured on, whatever
    earlier steps of the strategy did to it."""
    return tensors_digest({**dict(model.named_parameters()), **dict(model.named_buffers())})


def tensors_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over named tensors: their names and the bytes of their values."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return h.hexdigest()


def cached(folder: Path | None, kind: str, key: dict[str, Any], compute: Callable[[], T],
           tensors: bool = False) -> tuple[T, bool]:
    """``compute()``'s value (JSON, or with ``tensors`` a dict of tensors saved by torch), from ``folder`` when an
    earlier call stored it under the same key; returns (value, reused). With no folder (a method run outside an
    experiment) it always computes. A torn or unreadable file is computed again and rewritten."""
    if folder is None:
        return compute(), False
    key = json.loads(json.dumps(key, default=str))
    path = folder / f"{kind}-{_digest(key)}.{'pt' if tensors else 'json'}"
    try:
        if tensors:
            import torch

            stored = torch.load(path, weights_only=True)
        else:
            stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["value"], True
    except Exception:  # missing, torn or foreign: measured again
        pass
    value = compute()
    folder.mkdir(parents=True, exist_ok=True)
    if tensors:
        import torch

        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save({"kind": kind, "key": key, "value": value}, tmp)
        os.replace(tmp, path)
    else:
        write_json(path, {"kind": kind, "key": key, "value": value})
    return value, False


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_file(folder: Path, kind: str, key: dict[str, Any], suffix: str, make: Callable[[Path], None]
                ) -> tuple[Path, bool]:
    """A file that ``make(path)`` writes (a tool's output), kept in ``folder`` under a name holding its key's digest;
    returns (path, reused). It is made under a temporary name with the same suffix and renamed when complete, so a
    killed run leaves no torn file under the name."""
    path = folder / f"{kind}-{_digest(key)}{suffix}"
    if path.is_file():
        return path, True
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, False


def windows_digest(samples: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(samples).encode()).hexdigest()


def input_stats(model, samples: list[list[int]], folder: Path | None) -> dict[str, dict[str, Any]]:
    """Per block Linear (architecture.block_linears' names), over the calibration tokens: ``abs_sum`` and ``sq_sum``,
    the sums of |x| and of x^2 of each input channel, and ``tokens``. One forward pass serves every method that
    weighs weights by their inputs, once per weights and windows."""
    from .architecture import of_model

    def compute():
        import torch

        linears = of_model(model).block_linears(model)
        out = {n: {"abs_sum": torch.zeros(m.in_features), "sq_sum": torch.zeros(m.in_features),
                   "tokens": torch.tensor(0)} for n, m in linears.items()}

        def hook(name):
            def accumulate(module, args):  # returns None: a pre-hook's return value would replace the input
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                out[name]["abs_sum"].add_(x.abs().sum(0))
                out[name]["sq_sum"].add_(x.pow(2).sum(0))
                out[name]["tokens"] += x.shape[0]
            return accumulate

        forward_with_hooks(model, samples, [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()])
        return out

    key = {"weights": weights_digest(model), "windows": windows_digest(samples), "stats": "abs_sum, sq_sum"}
    return cached(folder, "inputs", key, compute, tensors=True)[0]


def forward_with_hooks(model, samples: list[list[int]], handles: list) -> None:
    """Run the calibration windows through the model with hooks registered (``handles``), then remove them."""
    import torch

    try:
        with torch.no_grad():
            for s in samples:
                model(input_ids=torch.tensor([s]))
    finally:
        for h in handles:
            h.remove()
