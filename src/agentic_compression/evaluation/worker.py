"""One candidate's evaluation in a fresh process, so that its peak memory, latency and energy are its own.

Usage (internal): python -m agentic_compression.evaluation.worker REQUEST.json RESULT.json, or ``main`` in a child
forked from zygote.py (the imports made once; the child's memory high-water mark reset before it starts)
Order matters: runtime RSS is read after the tokenizer is loaded and before the checkpoint is; the peak (VmHWM, or on
a GPU the CUDA allocator's peak) is read after load + latency and before lm-eval, whose own buffers would otherwise
count as the model's. The checkpoint is loaded by its target (targets/): transformers, llama.cpp, ONNX Runtime
GenAI."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import psutil


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark. VmHWM belongs to the address space created at exec; getrusage's
    ru_maxrss would also carry the parent's peak across fork + exec, so it is only the fallback off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(request: Path, result: Path) -> None:
    import torch
    import transformers  # noqa: F401  (part of the runtime, not of the model)

    from .. import targets
    from ..models import load_tokenizer
    from . import measure
    from .protocol import EvalRequest, Measured, evaluators

    req = EvalRequest.model_validate_json(request.read_text())
    s = req.settings
    target = targets.get(s.target)
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    cuda = s.device == "cuda"
    if cuda:
        torch.cuda.init()  # the context is the runtime's, not the model's
        torch.cuda.reset_peak_memory_stats()
    ckpt = Path(req.checkpoint)
    tok = load_tokenizer(ckpt)  # the tokenizer (and the code it imports: about 290 MB) is not the model's memory
    rss_runtime = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    model = target.load(ckpt, s)
    load_s = time.perf_counter() - t0
    rss_loaded = psutil.Process().memory_info().rss

    bos = req.bos_id  # the tokenizer starts every text with BOS: so do the prompt and each window
    prompt = ([bos] if bos is not None else []) + req.prompt_ids[: s.prompt_tokens - (bos is not None)]
    base_ckpt = req.baseline_checkpoint
    # the baseline may run in another runtime: a target's own baseline is timed beside transformers fp32
    base_target = targets.get(req.baseline_target or s.target)
    pair = bool(base_ckpt) and (Path(base_ckpt).resolve() != ckpt.resolve() or base_target is not target)
    before = measure.control_ms(model.device)
    # paired: one run of the candidate alone, so the memory peak holds its inference (KV cache, activations) and
    # not the baseline's; its timing runs are then the paired ones
    phases = {"load": load_s}
    t_lat = time.perf_counter()
    lat = measure.latency(model, prompt, s.decode_tokens, 0 if pair else s.warmup, 1 if pair else s.repeats)
    control = (before + measure.control_ms(model.device)) / 2
    peak = peak_rss_bytes()
    if pair:
        t1 = time.perf_counter()
        baseline = base_target.load(Path(base_ckpt), s)
        load_s = time.perf_counter() - t1
        lat = measure.paired_latency(model, baseline, prompt, s.decode_tokens, s.warmup, s.repeats)
        # what pairing adds to the evaluation: the baseline's load and its own timed steps
        lat["paired"].update(baseline_load_s=load_s, extra_s=load_s + lat["paired"]["baseline_busy_s"])
        lat["paired"]["baseline_runtime"] = base_target.runtime
        getattr(baseline, "close", lambda: None)()
        del baseline
    lat["control_ms"] = control
    phases["latency"] = time.perf_counter() - t_lat
    if (tp := target.throughput(model, prompt, s)) is not None:
        lat["throughput"] = tp
    # on a GPU the model's memory is the allocator's peak since before loading (weights, KV cache, activations)
    memory = {"peak_rss_bytes": peak, "runtime_rss_bytes": rss_runtime, "loaded_rss_bytes": rss_loaded,
              "model_peak_bytes": peak - rss_runtime, "source": "VmHWM - runtime RSS"}
    if cuda:
        memory.update(model_peak_bytes=torch.cuda.max_memory_allocated(), source="torch.cuda.max_memory_allocated",
                      cuda_reserved_peak_bytes=torch.cuda.max_memory_reserved(),
                      cuda_device=torch.cuda.get_device_name())
    memory.update(target.memory(model) or {})

    with measure.Energy(s.country_iso_code) as energy:
        t_ppl = time.perf_counter()
        model = target.scoring(model, s)
        reference, kld = None, None
        if pair and target.full_logits and base_target.full_logits:  # KL divergence to the baseline, same windows
            stored = measure.StoredLogProbs(Path(req.reference_logprobs)) if req.reference_logprobs else None
            reference = stored.reader() if stored and stored.complete() else measure.Reference(
                base_target.scoring(base_target.load(Path(base_ckpt), s), s), stored and stored.path)
        keep = Path(req.keep_logprobs) if req.keep_logprobs and target.full_logits else None
        if keep and measure.StoredLogProbs(keep).complete():
            keep = None
        try:
            ids = req.ppl_ids[: s.ppl_tokens]
            ppl = target.perplexity(model, ids, s, bos, reference, keep, req.prune) if target.perplexity else \
                measure.perplexity(model, ids, s.ppl_window, s.ppl_stride, bos, reference, keep, req.prune)
        except measure.Pruned as e:  # the slice showed enough: no benchmark, no result to cache
            if isinstance(reference, measure.Reference):
                reference.close(complete=False)  # a baseline's store half written is not the baseline's
            phases["perplexity_kld"] = time.perf_counter() - t_ppl
            result.write_text(json.dumps({"pruned": {"reason": str(e), **e.partial, "phases": phases,
                                                     "latency": lat, "memory": memory}}))
            return
        phases["perplexity_kld"] = time.perf_counter() - t_ppl
        t_acc = time.perf_counter()
        if reference is not None:
            reference.close()
            kld = {**ppl.pop("kld"), "reference_runtime": base_target.runtime,
                   "reference_read": "scored here" if isinstance(reference, measure.Reference) else "stored"}
            del reference
        elif not pair:  # the baseline itself: its distributions are the reference
            kld = {"mean": 0.0, "stderr": 0.0, "n": ppl["tokens"], "reference": "itself (the baseline)"}
        kinds, per = evaluators(), {}
        for kind in kinds:  # each kind of benchmark scores its own tasks (all of lm-eval's in one call)
            mine = [t for t in req.tasks if next(k for k in kinds if k.claims(t.name)) is kind]
            if mine:
                per.update(kind.score(model, tok, mine, req, target))
        acc = measure.aggregate(per)
        phases["benchmarks"] = time.perf_counter() - t_acc

    out = Measured(
        accuracy=acc, perplexity=ppl, kld=kld, latency=lat, energy=energy.result,
        memory={**memory, "load_seconds": load_s, "threads": torch.get_num_threads(), "device": s.device},
        size_bytes=target.size_bytes(ckpt), num_params=target.num_params(model), phases=phases,
        runtime={"target": target.name, "runtime": target.runtime, "version": target.version(),
                 **target.describe(ckpt, model)})
    result.write_text(out.model_dump_json(indent=1, exclude_none=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
