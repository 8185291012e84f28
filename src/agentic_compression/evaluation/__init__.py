"""The evaluation node's engine: each checkpoint is reloaded from disk and measured in a fresh process with the
same prompt, perplexity tokens and benchmark subset as every other candidate of the experiment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..config import EvalSettings
from ..data import build_task, wikitext_halves
from ..schemas import OBJECTIVES, EvaluationResult


class EvaluationError(RuntimeError):
    pass


class Evaluator:
    def __init__(self, settings: EvalSettings, data_dir: Path, tokenizer, work_dir: Path):
        self.s = settings
        self.work_dir = work_dir
        include, task = build_task(data_dir, settings.benchmark, settings.limit, settings.seed, work_dir / "tasks")
        ids = tokenizer(wikitext_halves(data_dir)[1], add_special_tokens=False)["input_ids"]
        self.request = {"settings": settings.model_dump(), "include_path": str(include), "task": task,
                        "ppl_ids": ids[: settings.ppl_tokens], "prompt_ids": ids[: settings.prompt_tokens]}
        self.baseline: EvaluationResult | None = None

    def evaluate(self, checkpoint: Path) -> EvaluationResult:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
            req.write_text(json.dumps({**self.request, "checkpoint": str(checkpoint)}))
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1",
                   "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            try:
                proc = subprocess.run([sys.executable, "-m", "agentic_compression.evaluation.worker", str(req),
                                       str(res)], capture_output=True, text=True, env=env, timeout=self.s.timeout_s)
            except subprocess.TimeoutExpired:
                raise EvaluationError(f"evaluation exceeded {self.s.timeout_s}s") from None
            if proc.returncode != 0 or not res.exists():
                raise EvaluationError(f"evaluation process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            raw = json.loads(res.read_text())
        result = self._result(raw, time.perf_counter() - t0)
        if self.baseline is None:
            self.baseline = result
        result.relative = relative(result, self.baseline)
        return result

    def _result(self, raw: dict, seconds: float) -> EvaluationResult:
        acc, lat, mem, en = raw["accuracy"], raw["latency"], raw["memory"], raw["energy"]
        return EvaluationResult(
            accuracy=acc["acc_norm"], accuracy_stderr=acc["acc_norm_stderr"], accuracy_n=acc["n"],
            benchmark=self.s.benchmark, accuracy_detail=acc,
            perplexity=raw["perplexity"]["perplexity"], perplexity_tokens=raw["perplexity"]["tokens"],
            latency_ms=lat["decode_ms_per_token"]["median"], latency=lat,
            memory_gb=mem["model_peak_bytes"] / 1e9, memory=mem,
            model_size_gb=raw["size_bytes"] / 1e9, size_bytes=raw["size_bytes"], num_params=raw["num_params"],
            co2_grams=en["co2_grams"], energy_kwh=en["energy_kwh"], energy=en, eval_seconds=seconds)


def relative(result: EvaluationResult, baseline: EvaluationResult) -> dict[str, float]:
    keys = list(OBJECTIVES) + ["perplexity", "num_params"]
    return {k: getattr(result, k) / getattr(baseline, k) for k in keys if getattr(baseline, k)}
