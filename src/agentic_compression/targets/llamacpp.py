"""llama.cpp on the CPU (GGUF files: what Ollama and LM Studio serve).

Export: llama.cpp's own converter (convert_hf_to_gguf.py, from the llama-cpp-python source archive that setup.sh
unpacks into ``<venv>/share/llama.cpp``) writes an f32 GGUF, which is checked against the PyTorch model it came from
(llamacpp.compare: the same tokens, next-token KL below F32_KL) and then quantized by llama.cpp itself
(``llama_model_quantize``, or the ``llama-quantize`` tool where an importance matrix or per-tensor types are asked
for). Measurement: llama-cpp-python in the evaluation process, serving mode for latency and memory, scoring mode
for perplexity and lm-eval (``RuntimeLM``, over llama.cpp's logits with the checkpoint's own tokenizer, which the export
check proved tokenizes as the GGUF does)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from ..models.gguf_file import read_header
from ..models.llamacpp_runtime import TYPES, converter_missing, tool, tools_dir
from ..models.threads import default_threads
from .base import Target, clean_tokenizer, copy_side_files, register

GGUF = "model.gguf"
FORMAT_FILE = "acf_format.json"
IMATRIX = ".imatrix.gguf"  # an importance matrix made outside an experiment, removed with the f32 file
F32_KL = 1e-3  # next-token KL (nats) allowed between an f32 export and the PyTorch model (seen: 1e-6)


@contextlib.contextmanager
def staged(dense: Path, parent: Path):
    """The checkpoint as a GGUF writer must read it: a byte-level BPE tokenizer that claims byte fallback (how
    transformers writes one it rebuilt from a GGUF) would be taken for a SentencePiece vocabulary, and llama.cpp
    aborts on the file. Yields a copy of the folder with the tokenizer cleaned (targets.byte_level_cleaned), the
    weights linked, not copied."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=".stage-gguf-") as tmp:
        stage = Path(tmp)
        for f in dense.iterdir():
            if f.is_file():
                (stage / f.name).symlink_to(f.resolve())
        clean_tokenizer(stage)
        yield stage


def convert(dense: Path, out: Path) -> None:
    """HF folder -> f32 GGUF with llama.cpp's converter (on the staged folder)."""
    with staged(dense, out.parent) as stage:
        proc = subprocess.run([sys.executable, str(tools_dir() / "convert_hf_to_gguf.py"), str(stage),
                               "--outtype", "f32", "--outfile", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"llama.cpp's converter failed (exit {proc.returncode}): {' | '.join(last)}")


def quantize(f32: Path, out: Path, qtype: str, imatrix: Path | None = None, threads: int | None = None,
             tensor_types: dict[str, str] | None = None) -> None:
    """llama.cpp's own quantizer: through the library, or through its tool where an importance matrix or per-tensor
    types (``{"blk.0.ffn_down": "q8_0"}``: a tensor name or pattern -> a ggml type) are asked for."""
    if imatrix is not None or tensor_types:
        exe = tool("llama-quantize")
        if exe is None:
            raise RuntimeError("an importance matrix or per-tensor types need llama.cpp's llama-quantize (setup.sh "
                               "builds it)")
        cmd = [str(exe), *(["--imatrix", str(imatrix)] if imatrix else [])]
        for name, ggml_type in (tensor_types or {}).items():
            cmd += ["--tensor-type", f"{name}={ggml_type}"]
        proc = subprocess.run([*cmd, str(f32), str(out), qtype, str(default_threads(threads))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-quantize failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return
    import ctypes

    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    p.nthread = default_threads(threads)
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {qtype} failed (return code {rc})")


def importance_matrix(f32: Path, text: str, out: Path, ctx_len: int, threads: int | None = None) -> None:
    """llama.cpp's importance matrix (llama-imatrix): the mean squared activations entering each weight matrix,
    over the experiment's calibration text."""
    exe = tool("llama-imatrix")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=out.parent, delete=False) as fh:
        fh.write(text)
    try:
        proc = subprocess.run([str(exe), "-m", str(f32), "-f", fh.name, "-o", str(out), "-c", str(ctx_len),
                               "-t", str(default_threads(threads)), "--no-ppl"], capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"llama-imatrix failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")


def autoround(dense: Path, texts: list[str], seq_len: int, qtype: str, out: Path) -> None:
    """auto-round's own GGUF writer on the dense checkpoint, with iters=0: auto-round's optimised round-to-nearest
    over the calibration texts, which it recommends for today's GGUF types (its tuned rounding, iters > 0, crashed
    inside auto-round 0.15.1 on this stack)."""
    from auto_round import AutoRound

    from ..models import load

    with staged(dense, out.parent) as stage, tempfile.TemporaryDirectory(dir=out.parent, prefix=".autoround-") as tmp:
        model, tok = load(stage)
        ar = AutoRound(model, tok, scheme=f"gguf:{qtype}", iters=0, nsamples=len(texts), seqlen=seq_len,
                       batch_size=1, dataset=texts)
        ar.quantize_and_save(tmp, format=f"gguf:{qtype}")
        (written,) = Path(tmp).rglob("*.gguf")
        written.rename(out)


def tensor_facts(gguf: Path) -> dict:
    """What the file really stores: bits per weight over all tensors (bytes x 8 / elements), the parameter count,
    and how many tensors of each llama.cpp type (SmolLM2's width 576 is no multiple of 256: most "Q4_K_M" tensors
    fall back to Q5_0/Q8_0, and this says so)."""
    tensors = read_header(gguf).tensors
    elements = sum(t.n_elements for t in tensors)
    types: dict[str, int] = {}
    for t in tensors:
        types[t.type] = types.get(t.type, 0) + 1
    return {"bits_per_weight": 8 * sum(t.n_bytes for t in tensors) / elements, "num_params": elements,
            "tensor_types": types}


def types_by_tensor(gguf: Path) -> dict[str, str]:
    """{tensor name: its llama.cpp type}, as the file stores it."""
    return {t.name: t.type for t in read_header(gguf).tensors}


def allocation(model, windows: list[list[int]], avg_bits: float, f32: Path, importance: dict | None,
               stats: Path | None = None, types: tuple[str, ...] = TYPES) -> dict:
    """Per-tensor types over every type llama.cpp stores at each matrix's row width, under ``avg_bits`` stored bits
    per weight, by measured sensitivity in llama.cpp's own rounding (gguf_types.py), named as the GGUF names each
    matrix (llama-quantize's --tensor-type patterns, each matching exactly one tensor)."""
    from .gguf_types import plan

    names = gguf_names(model, f32)
    out = plan(model, windows, avg_bits, importance, stats, types)
    out["tensor_types"] = {"^" + re.escape(names[n]) + "$": t.lower() for n, t in out["assignment"].items()}
    return out


def gguf_names(model, f32: Path) -> dict[str, str]:
    """{PyTorch name of each matrix llama.cpp quantizes: its tensor's name in the GGUF} ("blk.0.attn_q.weight")."""
    import gguf

    from ..models.architecture import of_model
    from .gguf_types import matrices

    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[architecture_of(f32)]
    names = gguf.get_tensor_name_map(arch, of_model(model).n_layers)
    return {n: names.get_name(f"{n}.weight", try_suffixes=(".weight",)) for n in matrices(model)}


def imatrix_file(f32: Path, model, tokenizer, windows: list[list[int]], stats: Path | None, scratch: Path
                 ) -> tuple[Path, bool]:
    """llama-imatrix's importance matrix over the calibration windows: from the experiment's statistics when these
    weights and windows were measured before (every importance-matrix candidate of a run shares one), else
    computed, into ``stats`` (or, outside an experiment, ``scratch/.imatrix.gguf``). Returns (path, reused)."""
    from ..models.stats_cache import cached_file, weights_digest, windows_digest

    text = "\n".join(tokenizer.decode(s) for s in windows)
    if stats is None:
        importance_matrix(f32, text, scratch / IMATRIX, 512)
        return scratch / IMATRIX, False
    key = {"weights": weights_digest(model), "windows": windows_digest(windows), "ctx": 512, "tool": "llama-imatrix"}
    return cached_file(stats, "imatrix", key, ".gguf", lambda path: importance_matrix(f32, text, path, 512))


def imatrix_importance(imatrix: Path, names: dict[str, str]) -> dict:
    """{PyTorch name: the mean squared input of each column} as llama-imatrix stored it (in_sum2 / counts): the
    importance llama-quantize rounds the file with, for the matrices it measured (not the token embedding)."""
    import torch

    from ..models.gguf_file import read_f32

    data, out = read_f32(imatrix), {}
    for n, g in names.items():
        sums, counts = data.get(f"{g}.in_sum2"), data.get(f"{g}.counts")
        if sums is not None and counts is not None and counts.ravel()[0] > 0:
            out[n] = torch.from_numpy(sums / counts.ravel()[0])
    return out


def architecture_of(path: Path) -> str:
    """A GGUF file's general.architecture ("llama", "gemma3")."""
    return read_header(path).fields["general.architecture"]


@register
class LlamaCppTarget(Target):
    name = "llamacpp"
    runtime = "llama.cpp"
    runs = frozenset({"dense", "gguf"})
    writes = frozenset({"gguf"})
    requires = ("llama_cpp", "gguf")
    presets = {"Q4_K_M": [{"method": "gguf", "params": {"type": "Q4_K_M"}}],  # llama.cpp's recommended default
               "Q8_0": [{"method": "gguf", "params": {"type": "Q8_0"}}]}

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        missing = converter_missing() if ok else None
        return (False, missing) if missing else (ok, why)

    def version(self) -> str:
        return f"llama-cpp-python {version('llama_cpp_python')}"

    def export(self, dense: Path, out: Path, final=None, ctx=None) -> dict:
        from .. import methods
        from ..models import llamacpp_runtime as llamacpp
        from ..models import load

        out.mkdir(parents=True, exist_ok=True)
        f32 = out / ".f32.gguf"
        try:
            convert(dense, f32)
            model, tok = load(dense)
            check = llamacpp.compare(model, tok, f32, kl_tolerance=F32_KL)
            if not check["ok"]:
                raise RuntimeError(f"the f32 GGUF does not match the PyTorch model: {check['why']}")
            info: dict = {"format": "gguf", "type": "F32", "conversion_check": check}
            if final is None:
                f32.rename(out / GGUF)
            elif final.method == "autoround_gguf":
                p = methods.get(final.method).resolve(final.params)
                windows = ctx.calibration(tok, int(p["num_samples"]), int(p["seq_len"]) + 16)
                autoround(dense, [tok.decode(w) for w in windows], int(p["seq_len"]), p["type"], out / GGUF)
                info.update(type=p["type"], quantizer=f"auto-round {version('auto-round')}",
                            check=llamacpp.compare(model, tok, out / GGUF))
            else:
                p = methods.get(final.method).resolve(final.params)
                imat = None
                if p.get("imatrix"):
                    imat, reused = imatrix_file(f32, model, tok, ctx.calibration(
                        tok, int(p.get("imatrix_samples", 32)), 512), ctx.stats, out)
                    info["imatrix_reused"] = reused
                types = dict(p.get("tensor_types") or {})
                if p.get("avg_bits") is not None:
                    # the rounding the file will get: weighted by the importance matrix llama-quantize is given
                    imp = imatrix_importance(imat, gguf_names(model, f32)) if imat is not None else None
                    offered = tuple(t for t in TYPES if t not in str(p.get("exclude") or "").upper().split(","))
                    mixed = allocation(model, ctx.calibration(tok, 4, 128), float(p["avg_bits"]), f32, imp,
                                       ctx.stats, offered)
                    types = {**mixed.pop("tensor_types"), **types}  # a person's own overrides win
                    info["mixed"] = mixed
                quantize(f32, out / GGUF, p["type"], imat, tensor_types=types)
                info.update(type=p["type"], imatrix=bool(imat), tensor_overrides=types)
                if "mixed" in info:  # the file's real types, read back: each matrix holds what was allocated
                    held = types_by_tensor(out / GGUF)
                    info["mixed"]["file_types"] = held
                    wrong = {n: (want, held[n]) for pat, want in types.items() for n in held
                             if re.search(pat, n) and held[n] != want.upper()}
                    if wrong:
                        raise RuntimeError(f"llama-quantize wrote other types than allocated: {wrong}")
        finally:
            for tmp in (f32, out / IMATRIX):
                tmp.unlink(missing_ok=True)
        copy_side_files(dense, out)
        info |= tensor_facts(out / GGUF) | {"runtime": self.runtime, "runtime_version": self.version()}
        (out / FORMAT_FILE).write_text(json.dumps(info, indent=1))
        return info

    def predictor(self, checkpoint: Path):
        from ..models.llamacpp_runtime import LlamaCpp

        return LlamaCpp(checkpoint / GGUF, n_ctx=512, threads=1)

    def how_to_run(self, name: str) -> str:
        return f"""llama.cpp, or anything built on it (Ollama, LM Studio), runs `{GGUF}` as it is:

```bash
llama-cli -m PATH/{GGUF} -cnv                 # chat in the terminal
llama-server -m PATH/{GGUF} --port 8080       # an OpenAI-compatible server
ollama create {name} -f PATH/Modelfile && ollama run {name}
```

From Python (llama-cpp-python): `from llama_cpp import Llama; llm = Llama("PATH/{GGUF}")`."""

    def package(self, folder: Path, name: str) -> None:
        """An Ollama Modelfile: the GGUF carries its own chat template and tokenizer, which Ollama reads."""
        (folder / "Modelfile").write_text(f"# ollama create {name} -f Modelfile && ollama run {name}\n"
                                          f"FROM ./{GGUF}\n")

    def load(self, checkpoint: Path, settings):
        from ..models.llamacpp_runtime import LlamaCpp

        n_ctx = settings.prompt_tokens + settings.decode_tokens + 8  # what serving this prompt holds in KV cache
        return LlamaCpp(checkpoint / GGUF, n_ctx=n_ctx, threads=settings.threads, logits_all=False)

    def scoring(self, model, settings):
        from ..models.llamacpp_runtime import LlamaCpp

        model.close()
        return LlamaCpp(model.path, n_ctx=max(settings.ppl_window, 2048), threads=settings.threads)

    def lm(self, model, tokenizer, settings, add_bos):
        from .runtime_lm import RuntimeLM

        return RuntimeLM(model, tokenizer, add_bos, max_length=model.llm.n_ctx())

    def size_bytes(self, checkpoint: Path) -> int:
        return (checkpoint / GGUF).stat().st_size

    def num_params(self, model) -> int:
        return tensor_facts(model.path)["num_params"]

    def describe(self, checkpoint: Path, model) -> dict:
        f = checkpoint / FORMAT_FILE
        return json.loads(f.read_text()) if f.is_file() else {"format": "gguf", **tensor_facts(checkpoint / GGUF)}
