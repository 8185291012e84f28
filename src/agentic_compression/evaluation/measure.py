"""Measurements on a loaded model: latency, perplexity, benchmark accuracy (lm-eval), energy (codecarbon)."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .protocol import Pruned


def _spread(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2], "min": xs[0], "max": xs[-1], "n": len(xs)}


class Clock:
    """Milliseconds between start() and ms(): perf_counter on the CPU; on CUDA, events recorded on the stream, so
    the time is the device's and no host synchronisation sits inside the timed work. Models timed side by side of
    which some are not CUDA modules (vLLM's engine, which answers on the host) share perf_counter, with the CUDA
    device synchronised at both ends when one of them is on it."""

    def __init__(self, *devices: torch.device):
        self.cuda = all(d.type == "cuda" for d in devices)
        self.sync = not self.cuda and any(d.type == "cuda" for d in devices)

    def start(self):
        if not self.cuda:
            if self.sync:
                torch.cuda.synchronize()
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def ms(self, t0) -> float:
        if not self.cuda:
            if self.sync:
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        e.synchronize()
        return t0.elapsed_time(e)


def greedy(out) -> torch.Tensor:
    """The next token: the argmax of the last position's logits, or the token a runtime that decodes by itself
    (vLLM, greedy) chose."""
    nxt = getattr(out, "next_token", None)
    return nxt if nxt is not None else out.logits[:, -1:].argmax(-1)


class Decode:
    """One greedy generation with the KV cache, advanced a step at a time, so that several models can be timed in
    turn step by step."""

    def __init__(self, model, prompt_ids: list[int], clock: Clock):
        self.model, self.clock = model, clock
        self.ids = torch.tensor([prompt_ids], device=model.device)

    def prefill(self) -> float:
        t0 = self.clock.start()
        out = self.model(input_ids=self.ids, use_cache=True)
        ms = self.clock.ms(t0)
        self.past, self.nxt = out.past_key_values, greedy(out)
        self.generated = [int(self.nxt)]
        return ms

    def step(self) -> float:
        t0 = self.clock.start()
        out = self.model(input_ids=self.nxt, past_key_values=self.past, use_cache=True)
        self.past, self.nxt = out.past_key_values, greedy(out)
        ms = self.clock.ms(t0)
        self.generated.append(int(self.nxt))
        return ms


@torch.no_grad()
def timed_runs(models: list, prompt_ids: list[int], decode_tokens: int, warmup: int,
               repeats: int) -> list[dict[str, Any]]:
    """Prefill time of the prompt and per-token greedy decode time with the KV cache, for each model: warm-up runs
    are discarded, then ``repeats`` runs; medians and quartiles in milliseconds (CUDA events on a GPU). With several
    models, they are timed in turn step by step (each prefill, then each model's first decode step, and so on), the
    order reversed every other run: a machine whose speed changes over seconds slows every model alike."""
    clock = Clock(*(m.device for m in models))
    prefill, decode, medians, run_steps = ([[] for _ in models] for _ in range(4))
    busy = [0.0] * len(models)  # ms each model was timed, warm-up included
    gens = []
    for run in range(warmup + repeats):
        order = list(range(len(models)))[:: 1 if run % 2 == 0 else -1]
        gens = [Decode(m, prompt_ids, clock) for m in models]
        p = {i: gens[i].prefill() for i in order}
        steps = [[] for _ in models]
        for _ in range(decode_tokens):
            for i in order:
                steps[i].append(gens[i].step())
        for i in range(len(models)):
            busy[i] += p[i] + sum(steps[i])
        if run >= warmup:
            for i in range(len(models)):
                prefill[i].append(p[i])
                decode[i].extend(steps[i])
                medians[i].append(statistics.median(steps[i]))
                run_steps[i].append(steps[i])
    out = []
    for i in range(len(models)):
        d = _spread(decode[i])
        out.append({"prefill_ms": _spread(prefill[i]), "decode_ms_per_token": d, "prompt_tokens": len(prompt_ids),
                    "decode_tokens": decode_tokens, "warmup": warmup, "repeats": repeats,
                    "generated": gens[i].generated, "run_medians": medians[i], "run_steps": run_steps[i],
                    "busy_s": busy[i] / 1e3,
                    "decode_tokens_per_s": 1e3 / d["median"], "timer": "cuda events" if clock.cuda else "perf_counter"})
    return out


def latency(model, prompt_ids: list[int], decode_tokens: int, warmup: int, repeats: int) -> dict[str, Any]:
    """One model's prefill and decode times (timed_runs)."""
    return timed_runs([model], prompt_ids, decode_tokens, warmup, repeats)[0]


def paired_latency(model, baseline, prompt_ids: list[int], decode_tokens: int, warmup: int,
                   repeats: int) -> dict[str, Any]:
    """The candidate's latency timed in turn with the baseline's, step by step, in one process, window and thread
    setting, on the same prompt and decode length (timed_runs); its ``paired`` entry is the ratio of each run's
    median decode step to the baseline's in that run, over the run's quieter half of step pairs (quiet_half),
    combined over the runs (pair_stats)."""
    cand, base = timed_runs([model, baseline], prompt_ids, decode_tokens, warmup, repeats)
    rounds = [quiet_half(c, b) for c, b in zip(cand["run_steps"], base["run_steps"])]
    return {**cand, "paired": {**pair_stats(rounds), "baseline_busy_s": base["busy_s"],
                               "baseline_run_steps": base["run_steps"]},
            "baseline_in_pairing": {k: base[k] for k in ("prefill_ms", "decode_ms_per_token")}}


PAIRING = "quiet-half"  # how a paired ratio is estimated (part of the eval cache's key: results of another differ)


def quiet_half(cand: list[float], base: list[float]) -> tuple[float, float]:
    """One run's decode steps of the candidate and the baseline, paired step by step -> the two medians over the
    half of the pairs that were quickest together (each step relative to its model's median, so the slower model
    does not choose alone). A load that comes and goes reaches some pairs and not others, and it need not slow the
    two models' kernels alike (bitsandbytes' NF4 under contention slowed less than torch's fp32 matmuls); the pairs
    it did not reach say what the models cost. On a quiet machine the halves differ by jitter only."""
    mc, mb = statistics.median(cand), statistics.median(base)
    pairs = sorted(zip(cand, base), key=lambda p: p[0] / mc + p[1] / mb)[: max(1, (len(cand) + 1) // 2)]
    return statistics.median(c for c, _ in pairs), statistics.median(b for _, b in pairs)


def pair_stats(rounds: list[tuple[float, float]], level: float = 0.95) -> dict[str, Any]:
    """Paired (candidate ms, baseline ms) rounds -> the candidate's time as a ratio to the baseline's: the geometric
    mean of the per-round ratios, with a Student-t confidence interval on their logarithms (ratios multiply, and
    their logs are near-normal). One round gives no interval (None): it cannot tell anything apart."""
    from scipy.stats import t as student_t

    logs = [math.log(c / b) for c, b in rounds]
    n, mean = len(logs), statistics.fmean(logs)
    half = student_t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(logs) / math.sqrt(n) if n > 1 else None
    ci = [math.exp(mean - half), math.exp(mean + half)] if half is not None else None
    return {"ratio": math.exp(mean), "ci": ci, "level": level, "n": n,
            "candidate_ms": statistics.median(c for c, _ in rounds),
            "baseline_ms": statistics.median(b for _, b in rounds), "rounds": [list(x) for x in rounds],
            "order": "step by step, reversed every other run", "steps": "the quieter half of each run's pairs"}


CONTROL_SHAPE = (1024, 4096)  # fp32, 16 MB: out of cache, so memory-bound like a decode step


@torch.no_grad()
def control_ms(device: torch.device, repeats: int = 100) -> float:
    """Median time of a fixed workload that is the same for every candidate (one matrix-vector product of
    CONTROL_SHAPE, a decode step's kind of work), timed beside each latency measurement. Its ratio to the
    baseline's shows whether the machine itself got slower or faster between two measurements (CPU steal,
    frequency, neighbours), which a latency comparison cannot tell apart from the model."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(CONTROL_SHAPE, generator=g).to(device)
    x = torch.randn(1, CONTROL_SHAPE[0], generator=g).to(device)
    clock, times = Clock(device), []
    for _ in range(repeats + 5):
        t0 = clock.start()
        x @ w
        times.append(clock.ms(t0))
    return statistics.median(times[5:])


SLICE = 512  # scored tokens after which a hopeless candidate is stopped (Pruned)
PRUNE_Z = 3.0  # standard errors the slice's estimate must clear its limit by


def hopeless(kld: dict[str, Any], limits: dict[str, float]) -> str | None:
    """Why a slice's KL statistics (kl_stats, against the baseline) put the candidate far past ``limits``, or None:
    ``perplexity_ratio``, its perplexity over the baseline's on the same tokens (exp of the mean log ratio), and
    ``kld``, its mean KL divergence; each judged PRUNE_Z standard errors below the estimate, so that the noise of
    a few hundred tokens does not stop a candidate that is merely close."""
    n = kld["n"]
    mean, se = kld["mean_ln_ppl_ratio"], kld["mean_ln_ppl_ratio_stderr"]
    if (limit := limits.get("perplexity_ratio")) is not None and math.exp(mean - PRUNE_Z * se) > limit:
        return (f"perplexity {math.exp(mean):.3g}x the baseline's on the first {n} tokens (at least "
                f"{math.exp(mean - PRUNE_Z * se):.3g}x at {PRUNE_Z:g} standard errors; the limit is {limit:g}x)")
    if (limit := limits.get("kld")) is not None and kld["mean"] - PRUNE_Z * kld["stderr"] > limit:
        return (f"KL divergence {kld['mean']:.3g} nats/token on the first {n} tokens (at least "
                f"{kld['mean'] - PRUNE_Z * kld['stderr']:.3g} at {PRUNE_Z:g} standard errors; the limit is {limit:g})")
    return None


def last_logits(model, inp: torch.Tensor, n: int) -> torch.Tensor:
    """The next-token logits at the last ``n`` positions that predict a token of ``inp`` ([n, vocab], float): a
    runtime that can compute the output head for those alone (transformers' ``logits_to_keep``, llama.cpp's output
    flags) does; one that computes every position's gives its last rows."""
    return model(input_ids=inp, logits_to_keep=n + 1).logits[0, -(n + 1):-1].float()


@torch.no_grad()
def perplexity(model, ids: list[int], window: int, stride: int, bos: int | None = None,
               reference: "Reference | None" = None, keep: Path | None = None,
               prune: dict[str, float] | None = None, upto: int | None = None) -> dict[str, Any]:
    """Sliding-window perplexity (each token scored once, with up to ``window`` tokens of context). With ``bos``
    (a model whose tokenizer starts every text with it, such as Gemma) each window starts with that token, which
    is context, never scored. With ``reference`` (the baseline's log-probabilities: StoredLogProbs.reader, or
    Reference over the baseline loaded for scoring) the same windows also give, at every scored token, the KL
    divergence of this model's next-token distribution from the reference's over the full vocabulary (``kld``:
    KLDivergence.stats). With ``keep`` (the baseline scored itself) its own log-probabilities are stored there, the
    reference of every later candidate. With ``prune`` (limits, ``hopeless``) and a reference, the first SLICE
    scored tokens are judged, and a candidate already far past a limit raises Pruned. With ``upto``, the pass
    stops after the window whose scored tokens reach it (the slice alone)."""
    ctx = [] if bos is None else [bos]
    nll, count, prev_end = 0.0, 0, 0
    kld = KLDivergence() if reference is not None else None
    writer = StoredLogProbs(keep).writer() if keep is not None else None
    for begin in range(0, len(ids), stride):
        end = min(begin + window - len(ctx), len(ids))
        inp = torch.tensor([ctx + ids[begin:end]], device=model.device)
        # the tokens not scored by the previous window (the BOS and that window's tokens are context only)
        n = min(end - prev_end, inp.shape[1] - 1)
        logits, labels = last_logits(model, inp, n), inp[0, -n:]
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        if kld is not None:
            kld.add(logits.cpu(), reference.next(inp, n), labels.cpu())
        if writer is not None:
            writer.add(StoredLogProbs.rounded(logits.cpu()))
        nll, count, prev_end = nll + float(loss), count + n, end
        if prune and kld is not None and count >= SLICE and count - n < SLICE:
            if reason := hopeless(stats := kld.stats(), prune):
                raise Pruned(reason, {"tokens": count, "perplexity": math.exp(nll / count), "kld": stats})
        if end == len(ids) or (upto is not None and count >= upto):
            break
    if writer is not None:
        writer.close()
    out = {"perplexity": math.exp(nll / count), "tokens": count, "window": window, "stride": stride,
           "bos": bos is not None}
    return out | ({"kld": kld.stats()} if kld is not None else {})


KLD = "full-vocabulary-float64, reference as 16-bit log-probs over 32 nats"  # in the eval cache's key


class Rounded(NamedTuple):
    """Log-probabilities as StoredLogProbs keeps them: ``steps`` (numpy uint16 [n, vocab], each token's distance
    below the position's top log-probability) and ``top`` (float32 [n])."""

    steps: Any
    top: torch.Tensor

    @property
    def shape(self):
        return self.steps.shape

    def log_probs(self, i: int, j: int) -> torch.Tensor:
        """Positions i..j back as float64 log-probabilities, renormalised."""
        steps = torch.from_numpy(self.steps[i:j].astype("int32")).double()
        return torch.log_softmax(self.top[i:j].double()[:, None] - steps * (StoredLogProbs.SPAN /
                                                                             StoredLogProbs.STEPS), -1)


class StoredLogProbs:
    """A reference's next-token log-probabilities at the scored positions, stored once (by the baseline's own
    evaluation) and read by every candidate's, so that a candidate's KL divergence costs its own forward passes
    only. Kept, like llama.cpp's ``--kl-divergence-base``, in 16 bits a token: per position its largest
    log-probability (float32) and each token's distance below it in STEPS steps over SPAN nats (4.9e-4 nats a
    step: each log-probability within 2.4e-4 of its value; a token further below holds SPAN, at most vocabulary x
    e^-32 of probability), read back and renormalised. A folder of ``q.u16`` [positions, vocabulary], ``top.npy``
    and ``meta.json``, written under another name and renamed when complete.

    A reference scored live (Reference) is rounded the same way, so a candidate's KL divergence does not depend on
    which one it met. The rounding's error is second order: under 1e-8 nats for a model against itself, and under
    0.1% of the divergence of a quantized model (test_kld.py bounds both)."""

    SPAN, STEPS = 32.0, 65535

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def rounded(cls, logits: torch.Tensor) -> Rounded:
        lp = torch.log_softmax(logits.double(), -1)
        top = lp.max(-1).values
        steps = ((top[:, None] - lp).clamp(max=cls.SPAN) * (cls.STEPS / cls.SPAN)).round()
        return Rounded(steps.to(torch.int32).numpy().astype("uint16"), top.float())

    def complete(self) -> bool:
        return (self.path / "meta.json").is_file()

    def writer(self) -> "_Writer":
        return _Writer(self.path)

    def reader(self) -> "_Reader":
        return _Reader(self.path)


class _Writer:
    def __init__(self, path: Path):
        import os

        self.path, self.tmp = path, path.with_name(f"{path.name}.tmp{os.getpid()}")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.fh, self.tops, self.vocab = open(self.tmp / "q.u16", "wb"), [], None

    def add(self, r: Rounded) -> None:
        self.vocab = r.shape[-1]
        self.fh.write(r.steps.tobytes())
        self.tops.append(r.top)

    def close(self) -> None:
        import json
        import os

        import numpy as np

        self.fh.close()
        top = torch.cat(self.tops) if self.tops else torch.zeros(0)
        np.save(self.tmp / "top.npy", top.numpy())
        (self.tmp / "meta.json").write_text(json.dumps({"positions": len(top), "vocab": self.vocab,
                                                        "span": StoredLogProbs.SPAN, "steps": StoredLogProbs.STEPS}))
        try:
            os.replace(self.tmp, self.path)
        except OSError:  # another evaluation stored the same reference first
            self.discard()

    def discard(self) -> None:
        """An unfinished store (its pass stopped early) is removed, never renamed into place."""
        import shutil

        self.fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Reader:
    """The stored positions in the order they were written, window by window (``next``)."""

    def __init__(self, path: Path):
        import json

        import numpy as np

        meta = json.loads((path / "meta.json").read_text())
        self.q = np.memmap(path / "q.u16", dtype=np.uint16, mode="r", shape=(meta["positions"], meta["vocab"]))
        self.top, self.at = torch.from_numpy(np.load(path / "top.npy")), 0

    def next(self, inp: torch.Tensor, n: int) -> Rounded:
        if self.at + n > len(self.top):
            raise ValueError(f"the stored reference holds {len(self.top)} positions; this text scores more")
        out = Rounded(self.q[self.at:self.at + n], self.top[self.at:self.at + n])
        self.at += n
        return out

    def close(self) -> None:
        if self.at != len(self.top):
            raise ValueError(f"the stored reference holds {len(self.top)} positions; this text scored {self.at}")


class Reference:
    """The baseline loaded for scoring, as a reference: its log-probabilities at the scored positions of each
    window, rounded as StoredLogProbs keeps them (and stored there too, with ``keep``)."""

    def __init__(self, model, keep: Path | None = None):
        self.model, self.writer = model, StoredLogProbs(keep).writer() if keep is not None else None

    def next(self, inp: torch.Tensor, n: int) -> Rounded:
        r = StoredLogProbs.rounded(last_logits(self.model, inp.to(self.model.device), n).cpu())
        if self.writer is not None:
            self.writer.add(r)
        return r

    def close(self, complete: bool = True) -> None:
        """``complete``: every window was scored, so what was written is stored; else it is discarded."""
        if self.writer is not None:
            self.writer.close() if complete else self.writer.discard()
        getattr(self.model, "close", lambda: None)()


class KLDivergence:
    """Per scored token, the candidate's next-token distribution Q against the reference's P (the baseline's),
    over the whole vocabulary, in float64: KL(P || Q) = sum_v P(v) (ln P(v) - ln Q(v)), whether the two top tokens
    agree, and Δp = Q(actual next token) - P(actual next token). ``stats`` summarises them as llama.cpp's
    ``llama-perplexity --kl-divergence`` prints them."""

    BLOCK = 128  # positions converted at a time: a 262k vocabulary in float64 is 2 MB a position

    def __init__(self):
        self.kl, self.same, self.dp, self.dlnp = [], [], [], []

    def add(self, logits: torch.Tensor, ref: "torch.Tensor | Rounded", labels: torch.Tensor) -> None:
        """Scored positions only: ``logits`` [n, vocab], the reference's logits [n, vocab] (exact) or its rounded
        log-probabilities (StoredLogProbs), ``labels`` [n], the next tokens."""
        if logits.shape != ref.shape:
            raise ValueError(f"the candidate has {logits.shape[-1]} logits a position and the reference "
                             f"{ref.shape[-1]}: KL divergence needs one vocabulary")
        for i in range(0, len(labels), self.BLOCK):
            j = i + self.BLOCK
            lq = torch.log_softmax(logits[i:j].double(), -1)
            lp = ref.log_probs(i, j) if isinstance(ref, Rounded) else torch.log_softmax(ref[i:j].double(), -1)
            y = labels[i:j, None]
            self.kl += (lp.exp() * (lp - lq)).sum(-1).clamp_min(0).tolist()  # rounding can give -1e-17
            self.same += (lq.argmax(-1) == lp.argmax(-1)).tolist()
            self.dp += (lq.gather(1, y).exp() - lp.gather(1, y).exp())[:, 0].tolist()
            self.dlnp += (lp.gather(1, y) - lq.gather(1, y))[:, 0].tolist()  # ln(PPL(Q)/PPL(P)) per token

    def stats(self) -> dict[str, Any]:
        return kl_stats(self.kl, self.same, self.dp, self.dlnp)


def kl_stats(kl: list[float], same: list[bool], dp: list[float], dlnp: list[float]) -> dict[str, Any]:
    """Mean KLD ± its standard error, its median and upper percentiles, the share of tokens whose top token is the
    reference's (± its binomial standard error), the RMS of Δp (± its delta-method error, as llama.cpp reports
    it) and the mean of ln(PPL(Q)/PPL(P)) over the same tokens."""
    n = len(kl)
    k = torch.tensor(kl, dtype=torch.float64)
    d = torch.tensor(dp, dtype=torch.float64)
    sq = torch.tensor(dlnp, dtype=torch.float64)
    se = (lambda t: float(t.std() / math.sqrt(n)) if n > 1 else 0.0)
    top = sum(same) / n
    ms = float((d ** 2).mean())
    rms = math.sqrt(ms)
    rms_se = se(d ** 2) / (2 * rms) if rms > 0 else 0.0
    q = {f"p{p:g}": float(torch.quantile(k, p / 100)) for p in (90, 95, 99, 99.9)}
    return {"mean": float(k.mean()), "stderr": se(k), "n": n, "median": float(k.median()), **q,
            "max": float(k.max()), "same_top": top, "same_top_stderr": math.sqrt(top * (1 - top) / max(n - 1, 1)),
            "delta_p_rms": rms, "delta_p_rms_stderr": rms_se, "mean_ln_ppl_ratio": float(sq.mean()),
            "mean_ln_ppl_ratio_stderr": se(sq), "reference": "the baseline's next-token distributions, full "
            "vocabulary, float64"}


def accuracy(lm, include_path: Path | None, tasks: list[dict], seed: int,
             limit: int | None = None) -> dict[str, dict]:
    """Benchmark scores through lm-eval on the in-memory model (``lm``: the target's lm-eval model over it): per
    benchmark the headline metric with its stderr and n (groups aggregated by lm-eval, weighted by size) and every
    other metric lm-eval reported. ``tasks``: {name, task, metric}."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include_path), include_defaults=False) if include_path else TaskManager()
    res = simple_evaluate(model=lm, tasks=[t["task"] for t in tasks], task_manager=tm, num_fewshot=None,
                          limit=limit, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed, bootstrap_iters=1000, log_samples=False)
    per: dict[str, Any] = {}
    for t in tasks:
        r, metric = res["results"][t["task"]], t["metric"]
        subtasks = res.get("group_subtasks", {}).get(t["task"]) or [t["task"]]
        n = sum(res["n-samples"][s]["effective"] for s in subtasks if s in res["n-samples"])
        value, stderr, source = float(r[metric]), r.get(metric.replace(",", "_stderr,")), "lm-eval"
        if not isinstance(stderr, (int, float)):  # lm-eval gives none for a group of 1-item subtasks
            stderr, source = math.sqrt(max(value * (1 - value), 0.0) / max(n - 1, 1)), "binomial"
        per[t["name"]] = {"metric": metric, "value": value, "stderr": float(stderr), "stderr_source": source,
                          "n": n, "all": {k: v for k, v in r.items() if isinstance(v, (int, float))}}
    return per


class LmEval:
    """acf's benchmarks as lm-eval tasks: local files built into lm-eval YAML (a seeded subset), or the Hub's task;
    all of an experiment's scored in one simple_evaluate call on the target's lm-eval model."""

    def claims(self, name: str) -> bool:
        return True

    def task(self, name, settings, data_dir, include):
        from .. import benchmarks
        from .protocol import Task

        b = benchmarks.get(name)
        if settings.source == "hub":
            return Task(name=name, task=b.hub_task, metric=b.metric)
        built = benchmarks.build(data_dir, name, settings.limit, settings.seed, include)
        return Task(name=name, task=built.task, metric=b.metric, items=built.n_items, digest=built.digest)

    def score(self, model, tokenizer, tasks, request, target):
        s = request.settings
        lm = target.lm(model, tokenizer, s, True if request.bos_id is not None else None)
        return accuracy(lm, Path(request.include_path) if request.include_path else None,
                        [t.model_dump(exclude_none=True) for t in tasks], s.seed,
                        limit=s.limit if s.source == "hub" else None)


def aggregate(per: dict[str, dict]) -> dict[str, Any]:
    """The accuracy objective: the mean of the benchmarks' headline scores, its stderr from theirs
    (independent item sets), and every benchmark's own entry."""
    k = len(per)
    return {"benchmarks": per, "value": sum(v["value"] for v in per.values()) / k,
            "stderr": math.sqrt(sum(v["stderr"] ** 2 for v in per.values())) / k,
            "n": sum(v["n"] for v in per.values())}


class Energy:
    """codecarbon's offline tracker around a block of work (process-attributed, no network)."""

    def __init__(self, country_iso_code: str):
        from codecarbon import OfflineEmissionsTracker

        self.tracker = OfflineEmissionsTracker(country_iso_code=country_iso_code, save_to_file=False,
                                               log_level="error", tracking_mode="process", measure_power_secs=5)
        self.result: dict[str, Any] = {}

    def __enter__(self):
        self.tracker.start()
        return self

    def __exit__(self, *exc):
        kg = self.tracker.stop()
        d = self.tracker.final_emissions_data
        self.result = {"co2_grams": float(kg) * 1e3, "energy_kwh": float(d.energy_consumed),
                       "duration_s": float(d.duration), "cpu_power_w": float(d.cpu_power),
                       "ram_power_w": float(d.ram_power), "cpu_model": d.cpu_model, "country": d.country_iso_code,
                       "tracker": "codecarbon.OfflineEmissionsTracker"}
        return False
