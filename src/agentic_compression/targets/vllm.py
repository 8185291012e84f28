"""vLLM on a CUDA GPU: the PyTorch-side checkpoints it serves as they are saved (dense, and compressed-tensors from
GPTQ, AWQ, AutoRound, RTN W8A8 and 2:4 sparsity, which run on its low-bit kernels) measured as vLLM serves them:
- latency per output token: the engine stepped one token at a time (``Stepper``), so evaluation.measure times
  and pairs it exactly as it times every other runtime;
- throughput: output tokens per second with a fixed batch of requests in flight (``Stepper.throughput``);
- perplexity from vLLM's prompt log-probabilities over the same windows as everywhere else;
- accuracy through lm-eval's own ``vllm`` model;
- memory: the GPU memory every process of the evaluation holds (NVML), with the KV cache sized for the timed
  request only, so that weights and activations are what differ between candidates.

NOT YET RUN ON A GPU. vLLM is not installed on CPU machines (it would pull a CUDA torch), so the target reports
itself unavailable there. The tests cover it up to the engine call (tests/test_targets.py)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from .base import Target, register

MEMORY_FRACTION = 0.4  # of the GPU, per engine: a candidate and the baseline it is timed beside share one GPU
THROUGHPUT_BATCH = 16  # requests in flight at once for the throughput figure


def greedy(max_tokens: int, prompt_logprobs: int | None = None):
    """The request every latency and perplexity call makes: greedy, exactly ``max_tokens`` tokens (no early EOS)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=prompt_logprobs,
                          detokenize=False)


class Stepper:
    """vLLM's engine called like a transformers model by evaluation.measure's Decode: a call without
    ``past_key_values`` adds a greedy request for the prompt and steps the engine until the request's first token
    (prefill); every later call is engine steps until its next token (one decode step). The token the engine chose
    is returned as ``next_token``. The engine is synchronous and may run its core in a process of its own, so it is
    timed by the wall clock: ``device`` is the host, where the ids it is handed live."""

    def __init__(self, folder: Path, settings, max_tokens: int, memory_fraction: float = MEMORY_FRACTION):
        import torch
        from vllm import LLM

        self.path, self.max_tokens, self.device = folder, max_tokens, torch.device("cpu")
        self.llm = LLM(model=str(folder), tokenizer=str(folder), dtype="auto", seed=settings.seed,
                       max_model_len=max(settings.ppl_window, settings.prompt_tokens + max_tokens + 8),
                       gpu_memory_utilization=memory_fraction, enable_prefix_caching=False)
        self.engine, self.request, self.count, self.tokens = self.llm.llm_engine, None, 0, 0

    def _next_token(self) -> int:
        while True:
            for out in self.engine.step():
                if out.request_id == self.request and len(out.outputs[0].token_ids) > self.tokens:
                    self.tokens = len(out.outputs[0].token_ids)
                    return out.outputs[0].token_ids[-1]
            if not self.engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM finished request {self.request} after {self.tokens} tokens")

    def __call__(self, input_ids, past_key_values: int | None = None, **_):
        import torch
        from vllm.inputs import TokensPrompt

        if past_key_values is None:  # a new generation: the previous one (if unfinished) is dropped
            if self.request is not None and self.engine.has_unfinished_requests():
                self.engine.abort_request([self.request])
            self.count += 1
            self.request, self.tokens = f"acf-{self.count}", 0
            self.engine.add_request(self.request, TokensPrompt(prompt_token_ids=input_ids[0].tolist()),
                                    greedy(self.max_tokens))
        token = self._next_token()
        return SimpleNamespace(next_token=torch.tensor([[token]]),
                               past_key_values=(past_key_values or 0) + input_ids.shape[-1])

    def throughput(self, prompt: list[int], new_tokens: int, batch: int) -> dict:
        """Output tokens per second with ``batch`` copies of the prompt in flight at once (vLLM's continuous
        batching), each greedy for exactly ``new_tokens`` tokens: the serving figure a GPU is sized by. Wall clock
        from the first request added to the last token."""
        from vllm.inputs import TokensPrompt

        if self.request is not None and self.engine.has_unfinished_requests():
            self.engine.abort_request([self.request])
        ids, got = [f"acf-batch-{self.count}-{i}" for i in range(batch)], {}
        self.count += 1
        t0 = time.perf_counter()
        for rid in ids:
            self.engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt)), greedy(new_tokens))
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.request_id in ids:
                    got[out.request_id] = len(out.outputs[0].token_ids)
        seconds = time.perf_counter() - t0
        tokens = sum(got.values())
        return {"batch": batch, "new_tokens": new_tokens, "output_tokens": tokens, "seconds": seconds,
                "tokens_per_s": tokens / seconds}

    def prompt_nll(self, ids: list[int], scored: int) -> float:
        """The summed negative log-likelihood of the last ``scored`` tokens of ``ids`` given what precedes them."""
        from vllm.inputs import TokensPrompt

        (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], greedy(1, prompt_logprobs=0),
                                   use_tqdm=False)
        return prompt_nll(ids, out.prompt_logprobs, scored)

    def close(self) -> None:
        import gc

        import torch

        self.engine = self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def prompt_nll(ids: list[int], prompt_logprobs: list, scored: int) -> float:
    """From vLLM's prompt log-probabilities (None for the first token, then per position a {token id: Logprob}
    holding at least the actual token): the summed negative log-likelihood of the last ``scored`` tokens."""
    total = 0.0
    for pos in range(len(ids) - scored, len(ids)):
        entry = prompt_logprobs[pos][ids[pos]]
        total -= entry.logprob if hasattr(entry, "logprob") else float(entry)
    return total


def gpu_memory_bytes(pids: set[int]) -> int:
    """GPU memory held by the given processes, summed over every GPU (NVML)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        held = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in pids and p.usedGpuMemory:
                    held += p.usedGpuMemory
        return held
    finally:
        pynvml.nvmlShutdown()


@register
class VLLMTarget(Target):
    name = "vllm"
    runtime = "vllm"
    runs = frozenset({"dense", "compressed-tensors"})
    # GPTQ W4A16 (llm-compressor) at the largest group size the model's widths allow
    presets = {"GPTQ W4A16": [{"method": "gptq", "params": {"scheme": "W4A16", "group_size": "largest"}}]}
    requires = ("vllm",)
    exports = False
    full_logits = False  # prompt log-probabilities are the top few per position

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if not ok:
            return False, f"{why} (vLLM runs on a CUDA GPU; install it there)"
        import torch

        return (True, "") if torch.cuda.is_available() else (False, "vLLM needs a CUDA GPU, and none is visible")

    def version(self) -> str:
        from importlib.metadata import version

        return f"vllm {version('vllm')}"

    def load(self, checkpoint: Path, settings):
        return Stepper(checkpoint, settings, settings.decode_tokens + 1)

    def throughput(self, model, prompt: list[int], settings) -> dict:
        return model.throughput(prompt, settings.decode_tokens, THROUGHPUT_BATCH)

    def perplexity(self, model, ids: list[int], settings, bos: int | None, reference=None, keep=None,
                   prune=None) -> dict:
        """The same windows as evaluation.measure.perplexity, each scored by vLLM's prompt log-probabilities (the
        top few per position: no KL divergence over the vocabulary, ``full_logits`` is False)."""
        ctx = [] if bos is None else [bos]
        nll, count, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), settings.ppl_stride):
            end = min(begin + settings.ppl_window - len(ctx), len(ids))
            window, scored = ctx + ids[begin:end], end - prev_end
            nll, count, prev_end = nll + model.prompt_nll(window, scored), count + scored, end
            if end == len(ids):
                break
        return {"perplexity": math.exp(nll / count), "tokens": count, "window": settings.ppl_window,
                "stride": settings.ppl_stride, "bos": bos is not None, "source": "vllm prompt_logprobs"}

    def lm(self, model, tokenizer, settings, add_bos):
        """lm-eval's own vLLM model on the same checkpoint; the timing engine is closed first (one GPU)."""
        from lm_eval.models.vllm_causallms import VLLM

        path = model.path
        model.close()
        return VLLM(pretrained=str(path), tokenizer=str(path), batch_size="auto", seed=settings.seed,
                    add_bos_token=add_bos, gpu_memory_utilization=2 * MEMORY_FRACTION,
                    max_model_len=max(settings.ppl_window, 2048))

    def memory(self, model) -> dict:
        import psutil

        me = psutil.Process()
        pids = {me.pid, *(c.pid for c in me.children(recursive=True))}
        return {"model_peak_bytes": gpu_memory_bytes(pids), "source": "NVML, every process of this evaluation",
                "kv_cache_fraction": MEMORY_FRACTION}

    def num_params(self, model) -> int:
        from ..formats import logical_params
        from ..models import load

        return logical_params(load(model.path, device="cpu")[0])

    def describe(self, checkpoint: Path, model) -> dict:
        from .. import formats

        return {"format": formats.stored_as(checkpoint).name, "device": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
