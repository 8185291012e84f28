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
from ..objectives import RELATIVE, ratio
from ..schemas import EvaluationResult
from . import zygote
from .protocol import EvalRequest, Measured, Pruned, evaluator_for


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
        if settings.target == "auto" or "," in settings.target:
            raise ValueError(f"an Evaluator measures in one target, not '{settings.target}' (targets.resolve)")
        self.s = settings
        self.work_dir = work_dir
        require_device(settings.device)
        include = work_dir / "tasks"  # the local benchmarks' lm-eval YAML
        tasks = [evaluator_for(n).task(n, settings, data_dir, include) for n in benchmarks.names(settings.benchmark)]
        ids = tokenizer(read_text(data_dir, settings.ppl_text), add_special_tokens=False)["input_ids"]
        if len(ids) < settings.ppl_tokens:
            raise UserError(f"perplexity text {settings.ppl_text} has {len(ids)} tokens, fewer than --ppl-tokens "
                            f"{settings.ppl_tokens}", "lower --ppl-tokens or give a longer text")
        self.request = EvalRequest(settings=settings, include_path=str(include) if include.is_dir() else None,
                                   tasks=tasks, ppl_ids=ids[: settings.ppl_tokens],
                                   prompt_ids=ids[: settings.prompt_tokens], bos_id=bos_id(tokenizer))
        self.request_key = self.request.key()
        self.baseline: EvaluationResult | None = None
        self.baseline_checkpoint: Path | None = None  # timed in turn with every later candidate (paired latency)
        self.baseline_fp: str | None = None
        self.baseline_target: str | None = None  # the runtime it is loaded in (None: this evaluator's own)
        self.reference: EvaluationResult | None = None  # transformers fp32, which the baseline was timed beside

    def evaluate(self, checkpoint: Path, prune: dict[str, float] | None = None) -> EvaluationResult:
        """The checkpoint measured in a fresh process (or its cached result). With ``prune`` (measure.hopeless's
        limits), a candidate whose first measure.SLICE tokens already put it far past one raises measure.Pruned:
        no benchmark is run, nothing is cached."""
        t0 = time.perf_counter()
        # hashing the checkpoint costs a read of every byte: only when the cache is on. A candidate's latency is
        # paired with the baseline's, so its entry names the baseline it was timed against.
        fp = fingerprint(checkpoint) if self.s.cache else None
        vs = f"-vs{self.baseline_fp[:12]}" if fp and self.baseline_fp and fp != self.baseline_fp else ""
        entry = cache_dir() / f"{fp[:32]}-{self.request_key}{vs}.json" if fp else None
        raw = None
        if entry is not None and entry.is_file():
            try:
                raw = Measured.model_validate_json(entry.read_text())
            except (OSError, ValueError):  # a damaged or older entry is measured again and rewritten
                raw = None
        if raw is None:
            if prune and self._judge_slice(checkpoint, prune, t0):
                prune = None  # not hopeless: the evaluation process measures it in full
            raw = self._measure(checkpoint, fp, prune)
            raw.measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if entry is not None:
                entry.parent.mkdir(parents=True, exist_ok=True)
                write_json(entry, raw.model_dump(exclude_none=True))
        else:
            raw.cached_from = str(entry)
        result = self._result(raw, time.perf_counter() - t0)
        if self.baseline is None:
            self.set_baseline(result, checkpoint, fp)
        result.relative = relative(result, self.baseline)
        return result

    def set_baseline(self, result: EvaluationResult, checkpoint: Path, fp: str | None = None) -> None:
        self.baseline, self.baseline_checkpoint, self.baseline_target = result, checkpoint, None
        self.baseline_fp = fp or (fingerprint(checkpoint) if self.s.cache else None)

    def pair_first_with(self, checkpoint: Path, target: str, reference: EvaluationResult | None = None) -> None:
        """Time the next evaluation (this target's own baseline) beside ``checkpoint`` running in ``target``: the
        transformers fp32 model a practitioner starts from, so "N x faster" is a ratio measured side by side. With
        its ``reference`` result, the baseline's latency is that ratio times the reference's, the scale every
        target of an experiment then shares."""
        self.baseline_checkpoint, self.baseline_target, self.reference = checkpoint, target, reference
        self.baseline_fp = fingerprint(checkpoint) if self.s.cache else None

    def log_probs_store(self, checkpoint: Path, target: str, fp: str | None) -> Path:
        """Where a baseline's next-token log-probabilities on the perplexity windows are stored, the reference of
        the KL divergence (evaluation.measure.StoredLogProbs): named for the runtime, the checkpoint (its
        fingerprint, else its path), the windows and the device, so that every target's evaluator finds the
        transformers reference; in the experiment's scratch space, deleted with it when the run ends."""
        r, s = self.request, self.s
        what = [fp or str(checkpoint.resolve()), r.ppl_ids, s.ppl_window, s.ppl_stride, r.bos_id, s.device]
        return self.work_dir / "reference" / f"{target}-{hashlib.sha256(repr(what).encode()).hexdigest()[:16]}"

    def _judge_slice(self, checkpoint: Path, prune: dict[str, float], t0: float) -> bool:
        """A candidate's first measure.SLICE scored tokens, scored in this process against the baseline's stored
        log-probabilities and judged by ``prune``'s limits before an evaluation process is started: a hopeless one
        raises Pruned having cost its load and the slice, not the process's start and the paired latency, which
        come first there (the memory peak is read before any scoring). True when the slice was judged and the
        candidate goes on to its full evaluation (which scores the slice again, a few seconds); False where the
        evaluation process judges it: a runtime that scores its own windows (vLLM), a GPU (the run's process
        holds no CUDA memory of a candidate), no stored reference."""
        from .. import targets
        from . import measure

        target = targets.get(self.s.target)
        base = self.baseline_target or self.s.target
        if (target.perplexity is not None or not (target.full_logits and targets.get(base).full_logits)
                or self.s.device != "cpu" or self.baseline_checkpoint is None):
            return False
        store = measure.StoredLogProbs(self.log_probs_store(self.baseline_checkpoint, base, self.baseline_fp))
        if not store.complete():
            return False
        t = time.perf_counter()
        model = target.scoring(target.load(checkpoint, self.s), self.s)
        loaded = time.perf_counter() - t
        try:
            measure.perplexity(model, self.request.ppl_ids, self.s.ppl_window, self.s.ppl_stride,
                               self.request.bos_id, store.reader(), prune=prune, upto=measure.SLICE)
        except Pruned as e:
            phases = {"load": loaded, "perplexity_kld": time.perf_counter() - t - loaded}
            raise Pruned(str(e), {**e.partial, "judged": "in the run's process, before an evaluation process",
                                  "phases": phases, "eval_seconds": time.perf_counter() - t0}) from None
        finally:
            getattr(model, "close", lambda: None)()
        return True

    def _measure(self, checkpoint: Path, fp: str | None = None, prune: dict | None = None) -> Measured:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
            base = str(self.baseline_checkpoint) if self.baseline_checkpoint else None
            req.write_text(self.request.model_copy(update={
                "checkpoint": str(checkpoint), "baseline_checkpoint": base, "baseline_target": self.baseline_target,
                # the baseline's log-probabilities are read (or stored by the first to score them); a baseline
                # stores its own, for the candidates that follow it
                "reference_logprobs": base and str(self.log_probs_store(
                    self.baseline_checkpoint, self.baseline_target or self.s.target, self.baseline_fp)),
                "keep_logprobs": str(self.log_probs_store(checkpoint, self.s.target, fp))
                if self.baseline is None else None, "prune": prune}).model_dump_json())
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
                   "HF_DATASETS_OFFLINE": "0" if self.s.source == "hub" else "1",
                   "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            code, out = self._run_worker(env, req, res, Path(tmp) / "log.txt")
            log_text(out)  # into the episode's log.txt when the CLI routes output
            if code is None:
                raise EvaluationError(f"evaluation exceeded {self.s.timeout_s}s")
            if code != 0 or not res.exists():
                raise EvaluationError(f"evaluation process failed (exit {code}):\n{out[-3000:]}")
            text = res.read_text()
            if text.startswith('{"pruned"'):
                pruned = json.loads(text)["pruned"]
                raise Pruned(pruned.pop("reason"), {**pruned, "eval_seconds": time.perf_counter() - t0})
            return Measured.model_validate_json(text)

    def _run_worker(self, env: dict, req: Path, res: Path, log: Path) -> tuple[int | None, str]:
        """worker.py's measurement in a process of its own: forked from a zygote that has made the imports, or,
        where none can be used, started for it. Its exit code (None: past the timeout, killed) and its output."""
        try:
            code = zygote.run(env, str(req), str(res), str(log), self.s.timeout_s)
            return code, log.read_text(errors="replace") if log.exists() else ""
        except zygote.Gone:
            pass
        try:
            proc = subprocess.run([sys.executable, "-m", "agentic_compression.evaluation.worker", str(req), str(res)],
                                  capture_output=True, text=True, env=env, timeout=self.s.timeout_s,
                                  preexec_fn=zygote.die_with_parent)
        except subprocess.TimeoutExpired:
            return None, ""
        return proc.returncode, proc.stdout + proc.stderr

    def _result(self, raw: Measured, seconds: float) -> EvaluationResult:
        acc, lat, mem = raw.accuracy, raw.latency, raw.memory
        detail = {**acc, **raw.model_dump(include={"measured_at", "cached_from"}, exclude_none=True)}
        latency_ms, intervals = paired(lat, self.baseline or self.reference)
        en = energy_per_1k_tokens(raw.energy, latency_ms)
        if en["source"] == "estimated":  # a function of the latency: it must not decide what the latency did not
            intervals["co2_grams"] = None
        kld = raw.kld or {}
        if kld.get("stderr"):  # the baseline itself (0 by definition) is a point
            half = 1.96 * kld["stderr"]
            intervals["kld"] = [max(kld["mean"] - half, 0.0), kld["mean"] + half]
        return EvaluationResult(
            accuracy=acc["value"], accuracy_stderr=acc["stderr"], accuracy_n=acc["n"],
            benchmark=self.s.benchmark, accuracy_detail=detail,
            perplexity=raw.perplexity["perplexity"], perplexity_tokens=raw.perplexity["tokens"],
            latency_ms=latency_ms, latency=lat, memory_gb=mem["model_peak_bytes"] / 1e9, memory=mem,
            model_size_gb=raw.size_bytes / 1e9, size_bytes=raw.size_bytes, num_params=raw.num_params,
            runtime=raw.runtime,
            co2_grams=en["per_1k_tokens_co2_grams"], energy_kwh=en["per_1k_tokens_kwh"], energy=en,
            kld=kld.get("mean"), kld_detail=kld,
            intervals=intervals, eval_seconds=seconds, eval_phases=raw.phases)


def paired(lat: dict, baseline: EvaluationResult | None) -> tuple[float, dict]:
    """The latency objective and its interval: the candidate's paired ratio to the baseline (timed in turn with it,
    measure.paired_latency) times the baseline's own first median, so a machine that was slower while this
    candidate was measured slowed its baseline rounds too and cancels out. Without a pairing (the baseline itself,
    or an older cached result) the raw median, with no interval."""
    raw = lat["decode_ms_per_token"]["median"]
    p = lat.get("paired")
    if not p or baseline is None:
        return raw, {}
    base = baseline.latency_ms
    return p["ratio"] * base, {"latency_ms": [p["ci"][0] * base, p["ci"][1] * base] if p.get("ci") else None}


def rapl_readable() -> bool:
    return any(os.access(f, os.R_OK) for f in Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"))


def energy_per_1k_tokens(eval_energy: dict, latency_ms: float) -> dict:
    """Energy and CO2 per 1,000 generated tokens, the unit deployers compare: the mean power codecarbon attributed
    to the evaluation, times the time 1,000 tokens take at this (paired) latency, at the evaluation's grid
    intensity. Where RAPL is readable the power was measured; otherwise it is codecarbon's power model (a TDP
    share) and the energy is labelled estimated, a function of the latency that never decides dominance."""
    kwh, seconds = eval_energy["energy_kwh"], eval_energy.get("duration_s") or 0.0
    power_w = kwh * 3.6e6 / seconds if seconds > 0 else 0.0
    per_1k_kwh = power_w * latency_ms / 3.6e6  # W x (latency_ms / 1000 s per token x 1000 tokens) -> kWh
    intensity = eval_energy["co2_grams"] / kwh if kwh > 0 else 0.0  # g per kWh
    eval_side = {k: v for k, v in eval_energy.items() if k not in ("co2_grams", "energy_kwh")}
    return {**eval_side, "eval_co2_grams": eval_energy["co2_grams"], "eval_energy_kwh": kwh, "mean_power_w": power_w,
            "grid_g_per_kwh": intensity, "per_1k_tokens_kwh": per_1k_kwh,
            "per_1k_tokens_co2_grams": per_1k_kwh * intensity,
            "source": "measured" if rapl_readable() else "estimated"}


def relative(result: EvaluationResult, baseline: EvaluationResult) -> dict[str, float]:
    """Each objective, perplexity, parameter count and benchmark score divided by the baseline's, and the control
    workload's time (``machine_speed``: above 1, the machine was slower than when the baseline was timed)."""
    keys = list(RELATIVE) + ["perplexity", "num_params"]  # KL divergence is read as it is (the baseline's is 0)
    out = {k: ratio(getattr(result, k), getattr(baseline, k)) for k in keys if getattr(baseline, k)}
    if result.latency.get("control_ms") and baseline.latency.get("control_ms"):  # older cached results lack it
        out["machine_speed"] = result.latency["control_ms"] / baseline.latency["control_ms"]
    mine, base = result.accuracy_detail.get("benchmarks", {}), baseline.accuracy_detail.get("benchmarks", {})
    for name, b in base.items():
        if name in mine and b["value"]:
            out[f"accuracy:{name}"] = mine[name]["value"] / b["value"]
    return out
