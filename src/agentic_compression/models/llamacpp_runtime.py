"""llama.cpp (llama-cpp-python) as the runtime a GGUF file is measured in: the source of truth a conversion to
safetensors is checked against, and a perplexity on exactly the windows acf scores.

``LlamaCpp`` is called like a transformers model (``model(input_ids=...).logits``), so evaluation.measure's
perplexity runs on it unchanged."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from ..errors import UserError
from .threads import default_threads

# the conversion check's text: plain English prose with numbers and punctuation, about 300 tokens (written for acf)
CHECK_TEXT = (
    "The lighthouse on the northern cape was built in 1874, after two ships were lost on the reef within a single "
    "winter. Its keeper, a former schoolteacher named Elsa Marrow, kept a log of every vessel that passed, the "
    "weather at dawn and dusk, and the price of lamp oil, which rose from nine pence to fourteen pence a gallon over "
    "her thirty-one years of service. The log survives in the county archive. Historians have used it to estimate "
    "how shipping changed when the railway reached the harbour town in 1896: the number of coastal sailing vessels "
    "fell by more than half within a decade, while steamers, larger and fewer, kept to deeper water. Marrow's "
    "entries are short and exact. On 3 March 1881 she wrote that a storm had torn the roof from the oil store, "
    "that she had carried forty cans up the tower by hand, and that the light had not failed. Visitors today can "
    "climb the same 112 steps. From the gallery, on a clear day, the hills of the far shore are visible, some "
    "twenty miles across the water, and the reef shows as a pale line where the waves break. The light itself was "
    "automated in 1962, and a solar panel now charges the batteries that power it through the night."
)
# the types llama.cpp stores a weight matrix in that a per-tensor allocation chooses from (targets/gguf_types.py)
TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K")


def tools_dir() -> Path:
    """Where setup.sh unpacks llama.cpp's converter and builds its tools (ACF_LLAMA_CPP_DIR elsewhere)."""
    return Path(os.environ.get("ACF_LLAMA_CPP_DIR", Path(sys.prefix) / "share" / "llama.cpp"))


def tool(name: str) -> Path | None:
    """A llama.cpp command-line tool setup.sh built (llama-quantize, llama-imatrix), or None."""
    p = tools_dir() / "bin" / name
    return p if p.is_file() and os.access(p, os.X_OK) else None


def converter_missing() -> str | None:
    """Why a model cannot be converted to GGUF here, or None."""
    if not (tools_dir() / "convert_hf_to_gguf.py").is_file():
        return f"llama.cpp's converter is not in {tools_dir()} (setup.sh unpacks it there; or set ACF_LLAMA_CPP_DIR)"
    return None


PPL_TOLERANCE = 0.05  # relative perplexity difference allowed between the converted model and llama.cpp
KL_TOLERANCE = 0.05  # mean KL divergence (nats per token) allowed between their next-token distributions


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def shared_prefix(held, ids: list[int]) -> int:
    """How many leading tokens of ``ids`` a runtime's cache holding ``held`` can keep: those equal to ``held``'s, up
    to all but the last of ``ids`` (whose logits are asked for, so it is evaluated)."""
    common = 0
    for a, b in zip(held, ids[:-1]):
        if a != b:
            break
        common += 1
    return common


class LlamaCpp:
    """A GGUF model in llama.cpp, called like a transformers model. Two modes:
    - scoring (``logits_all=True``): the logits of every position of the sequence given, for perplexity and lm-eval;
      a sequence that starts like the one before reuses its KV cache for the common prefix (``logits``);
    - serving (``logits_all=False``): only the last position's logits, as a server computes them, and the KV cache
      carried from one call to the next (``past_key_values`` is the number of cached tokens), so that
      evaluation.measure's Decode times llama.cpp exactly as it times a transformers model."""

    def __init__(self, gguf: Path, n_ctx: int = 1024, threads: int | None = None, logits_all: bool = True):
        import torch

        if not available():
            raise UserError(f"running {gguf.name} needs llama.cpp, and llama-cpp-python is not installed",
                            "run setup.sh, or: pip install llama-cpp-python==0.3.36 (it builds from source, ~10 min)")
        from llama_cpp import Llama

        self.device, self.logits_all, self.path = torch.device("cpu"), logits_all, gguf
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all, verbose=False,
                         n_threads=default_threads(threads), n_threads_batch=default_threads(threads))

    def tokenize(self, text: str) -> list[int]:
        """Token ids as llama.cpp makes them, with BOS where the GGUF's vocabulary asks for one."""
        return self.llm.tokenize(text.encode(), add_bos=True, special=False)

    def __call__(self, input_ids, past_key_values: int | None = None, logits_to_keep: int = 0, **_):
        """Serving mode: the last position's logits. Scoring mode: every position's, or with ``logits_to_keep``
        (transformers' argument) only the last that many, the output head computed for those alone."""
        import numpy as np
        import torch

        ids = input_ids[0].tolist()
        self.llm.n_tokens = past_key_values or 0  # the cache holds these; what follows is evaluated
        if self.logits_all:
            first = max(len(ids) - logits_to_keep, 0) if logits_to_keep else 0
            self._eval(ids, first)
            logits = np.array(self.llm.scores[self.llm.n_tokens - len(ids) + first: self.llm.n_tokens])
        else:
            self.llm.eval(ids)
            logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(1, self.llm.n_vocab())).copy()
        return SimpleNamespace(logits=torch.from_numpy(logits)[None], past_key_values=self.llm.n_tokens)

    def logits(self, ids: list[int], first: int = 0):
        """Scoring mode: the logits of positions ``first``.. of ``ids`` (numpy, a view), evaluating only what
        follows the longest prefix it shares with the tokens already in the cache (lm-eval's choices share their
        context) and computing the output head for the positions asked for alone."""
        common = min(shared_prefix(self.llm.input_ids[: self.llm.n_tokens], ids), first)
        self.llm.n_tokens = common
        self._eval(ids[common:], first - common)
        return self.llm.scores[first: len(ids)]

    def _eval(self, tokens: list[int], first: int) -> None:
        """llama-cpp-python's ``Llama.eval`` after the cached tokens, asking llama.cpp for the logits of
        ``tokens[first:]`` only (a batch's per-token output flags); they are written to ``scores`` at their
        positions, and no other row of ``scores`` is read before it is written again."""
        import numpy as np

        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        for i in range(0, len(tokens), llm.n_batch):
            chunk, past = tokens[i: i + llm.n_batch], llm.n_tokens
            start = max(first - i, 0)  # the chunk's first position with an output; the rest follow it
            llm._batch.set_batch(batch=chunk, n_past=past, logits_all=False)
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = j >= start
            llm._ctx.decode(llm._batch)
            llm.input_ids[past: past + len(chunk)] = chunk
            if start < len(chunk):  # the outputs, in batch order
                llm.scores[past + start: past + len(chunk)] = np.ctypeslib.as_array(
                    llm._ctx.get_logits(), shape=(len(chunk) - start, llm._n_vocab))
            llm.n_tokens += len(chunk)

    def close(self) -> None:
        self.llm.close()


def next_token_stats(ours, ref, ids: list[int]) -> dict:
    """Two models' logits over the same ids: each one's mean next-token NLL, the mean KL divergence of ``ref``'s
    next-token distribution from ``ours``, and how often their top tokens agree."""
    import torch

    lp, lq = torch.log_softmax(ours[:-1].float(), -1), torch.log_softmax(ref[:-1].float(), -1)
    nxt = torch.tensor(ids[1:])[:, None]
    return {"nll_ours": -lp.gather(1, nxt).mean().item(), "nll_ref": -lq.gather(1, nxt).mean().item(),
            "kl": (lq.exp() * (lq - lp)).sum(-1).mean().item(),
            "top1": (lp.argmax(-1) == lq.argmax(-1)).float().mean().item()}


def compare(model, tokenizer, gguf: Path, kl_tolerance: float = KL_TOLERANCE) -> dict:
    """The converted model against llama.cpp running the GGUF itself, on CHECK_TEXT: whether both tokenize it to
    the same ids, both perplexities, their ratio, the mean KL divergence of llama.cpp's next-token distribution
    from the converted model's, and how often their top tokens agree (reported, not judged: a 0.04 logit gap
    flips at any precision). ``ok`` is False, with ``why``, on any mismatch; an f32 export is held to a tighter
    ``kl_tolerance`` than a dequantized file."""
    import torch

    cpp = LlamaCpp(gguf)
    try:
        ids, theirs = tokenizer(CHECK_TEXT)["input_ids"], cpp.tokenize(CHECK_TEXT)
        out = {"tokens": len(ids), "text_chars": len(CHECK_TEXT), "ppl_tolerance": PPL_TOLERANCE,
               "kl_tolerance": kl_tolerance}
        if ids != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ids, theirs)) if a != b), min(len(ids), len(theirs)))
            return {**out, "ok": False, "why": f"the tokenizers differ from token {at} on ({len(ids)} tokens here, "
                    f"{len(theirs)} in llama.cpp; ids {ids[at:at + 4]} vs {theirs[at:at + 4]})"}
        with torch.no_grad():
            ours = model(input_ids=torch.tensor([ids])).logits[0].float()
        ref = cpp(torch.tensor([ids])).logits[0].float()
    finally:
        cpp.close()
    if ours.shape != ref.shape:
        return {**out, "ok": False, "why": f"the vocabularies differ ({ours.shape[-1]} logits here, "
                f"{ref.shape[-1]} in llama.cpp)"}
    st = next_token_stats(ours, ref, ids)
    kl, ppl_ours, ppl_ref = st["kl"], math.exp(st["nll_ours"]), math.exp(st["nll_ref"])
    out |= {"perplexity": round(ppl_ours, 4), "perplexity_llama_cpp": round(ppl_ref, 4),
            "ratio": round(ppl_ours / ppl_ref, 5), "kl": round(kl, 6), "top1_agreement": round(st["top1"], 4)}
    bad = []
    if not abs(out["ratio"] - 1) <= PPL_TOLERANCE:  # NaN fails too
        bad.append(f"perplexity {ppl_ours:.2f} here against {ppl_ref:.2f} in llama.cpp "
                   f"({out['ratio'] - 1:+.1%}, tolerance ±{PPL_TOLERANCE:.0%})")
    if not kl <= kl_tolerance:
        bad.append(f"next-token KL divergence {kl:.6f} nats (tolerance {kl_tolerance})")
    return {**out, "ok": not bad, **({"why": "; ".join(bad)} if bad else {})}
