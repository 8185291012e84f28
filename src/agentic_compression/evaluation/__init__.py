"""The evaluation node's engine: each checkpoint is reloaded from disk and measured in a fresh process with the
same prompt, perplexity tokens and benchmark subset as every other candidate of the experiment.

Results are cached by (checkpoint fingerprint, evaluation request): a repeated candidate or a resumed experiment is
not measured twice. The cache lives in ACF_EVAL_CACHE (default ~/.cache/acf/eval), one JSON file per entry, and is
safe to delete; a cached result says so (``cached_from``)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import benchmarks
from ..config import EvalSettings
from ..console import log_text
from ..data import read_text
from ..errors import UserError
from ..files import write_json
from ..schemas import OBJECTIVES, EvaluationResult


class EvaluationError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("ACF_EVAL_CACHE", Path.home() / ".cache" / "acf" / "eval"))


def fingerprint(checkpoint: Path) -> str:
    """sha256 over every file of the checkpoint (relative path and content): the same weights, wherever they are."""
    h = hashlib.sha256()
    for f in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(checkpoint)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer starts every text with it (Gemma), else None (SmolLM2 adds none)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None


def require_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda, but torch sees no CUDA device here (CPU build, or no GPU)",
                            "measure on the CPU (--device cpu) or install a CUDA build of torch on a GPU machine")


class Evaluator:
    def __init__(self, settings: EvalSettings, data_dir: Path, tokenizer, work_dir: Path):
        self.s = settings
        self.work_dir = work_dir
        require_device(settings.device)
        tasks, include = [], None
        for name in benchmarks.names(settings.benchmark):
            if name == benchmarks.HUMANEVAL:
                tasks.append({"name": name, "task": name, "metric": "pass@1"})
                continue
            b = benchmarks.get(name)
            if settings.source == "hub":
                tasks.append({"name": name, "task": b.hub_task, "metric": b.metric})
            else:
                include = work_dir / "tasks"
                built = benchmarks.build(data_dir, name, settings.limit, settings.seed, include)
                tasks.append({"name": name, "task": built.task, "metric": b.metric, "items": built.n_items,
                              "digest": built.digest})
        ids = tokenizer(read_text(data_dir, settings.ppl_text), add_special_tokens=False)["input_ids"]
        if len(ids) < settings.ppl_tokens:
            raise UserError(f"perplexity text {settings.ppl_text} has {len(ids)} tokens, fewer than --ppl-tokens "
                            f"{settings.ppl_tokens}", "lower --ppl-tokens or give a longer text")
        self.request = {"settings": settings.model_dump(), "include_path": str(include) if include else None,
                        "tasks": tasks, "ppl_ids": ids[: settings.ppl_tokens],
                        "prompt_ids": ids[: settings.prompt_tokens], "bos_id": bos_id(tokenizer)}
        # what the measurements depend on, besides the checkpoint (paths and the cache switch excluded)
        key = {**self.request, "settings": settings.model_dump(exclude={"cache", "timeout_s"}),
               "tasks": [{k: v for k, v in t.items() if k != "task"} for t in tasks], "include_path": None}
        self.request_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.baseline: EvaluationResult | None = None

    def evaluate(self, checkpoint: Path) -> EvaluationResult:
        t0 = time.perf_counter()
        # hashing the checkpoint costs a read of every byte: only when the cache is on
        entry = cache_dir() / f"{fingerprint(checkpoint)[:32]}-{self.request_key}.json" if self.s.cache else None
        raw = None
        if entry is not None and entry.is_file():
            try:
                raw = json.loads(entry.read_text())
            except (OSError, json.JSONDecodeError):  # a damaged entry is measured again and rewritten
                raw = None
        if raw is None:
            raw = self._measure(checkpoint)
            raw["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if entry is not None:
                entry.parent.mkdir(parents=True, exist_ok=True)
                write_json(entry, raw)
        else:
            raw["cached_from"] = str(entry)
        result = self._result(raw, time.perf_counter() - t0)
        if self.baseline is None:
            self.baseline = result
        result.relative = relative(result, self.baseline)
        return result

    def _measure(self, checkpoint: Path) -> dict:
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
            req.write_text(json.dumps({**self.request, "checkpoint": str(checkpoint)}))
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
                   "HF_DATASETS_OFFLINE": "0" if self.s.source == "hub" else "1",
                   "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            try:
                proc = subprocess.run([sys.executable, "-m", "agentic_compression.evaluation.worker", str(req),
                                       str(res)], capture_output=True, text=True, env=env, timeout=self.s.timeout_s)
            except subprocess.TimeoutExpired:
                raise EvaluationError(f"evaluation exceeded {self.s.timeout_s}s") from None
            log_text(proc.stdout + proc.stderr)  # into the episode's log.txt when the CLI routes output
            if proc.returncode != 0 or not res.exists():
                raise EvaluationError(f"evaluation process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return json.loads(res.read_text())

    def _result(self, raw: dict, seconds: float) -> EvaluationResult:
        acc, lat, mem, en = raw["accuracy"], raw["latency"], raw["memory"], raw["energy"]
        detail = {**acc, **{k: raw[k] for k in ("measured_at", "cached_from") if k in raw}}
        return EvaluationResult(
            accuracy=acc["value"], accuracy_stderr=acc["stderr"], accuracy_n=acc["n"],
            benchmark=self.s.benchmark, accuracy_detail=detail,
            perplexity=raw["perplexity"]["perplexity"], perplexity_tokens=raw["perplexity"]["tokens"],
            latency_ms=lat["decode_ms_per_token"]["median"], latency=lat,
            memory_gb=mem["model_peak_bytes"] / 1e9, memory=mem,
            model_size_gb=raw["size_bytes"] / 1e9, size_bytes=raw["size_bytes"], num_params=raw["num_params"],
            co2_grams=en["co2_grams"], energy_kwh=en["energy_kwh"], energy=en, eval_seconds=seconds)


def relative(result: EvaluationResult, baseline: EvaluationResult) -> dict[str, float]:
    """Each objective, perplexity, parameter count and benchmark score divided by the baseline's, and the control
    workload's time (``machine_speed``: above 1, the machine was slower than when the baseline was timed)."""
    keys = list(OBJECTIVES) + ["perplexity", "num_params"]
    out = {k: getattr(result, k) / getattr(baseline, k) for k in keys if getattr(baseline, k)}
    if result.latency.get("control_ms") and baseline.latency.get("control_ms"):  # older cached results lack it
        out["machine_speed"] = result.latency["control_ms"] / baseline.latency["control_ms"]
    mine, base = result.accuracy_detail.get("benchmarks", {}), baseline.accuracy_detail.get("benchmarks", {})
    for name, b in base.items():
        if name in mine and b["value"]:
            out[f"accuracy:{name}"] = mine[name]["value"] / b["value"]
    return out
