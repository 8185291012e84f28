"""Local data: the WikiText-2 split (calibration half / evaluation half, disjoint by construction) and the
calibration text (benchmarks: benchmarks.py). Data is read from ``--data-dir`` (laid out like ../shared/data)
and never copied into the repository; derived files go to the cache."""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .files import reading

_ARTICLE = re.compile(r"^ = [^=].* = $")


def check_data_dir(data_dir: Path, dataset: str) -> None:
    """Every benchmark named (comma-separated) is known and has its files; the perplexity text exists."""
    from . import benchmarks

    if not data_dir.is_dir():
        raise UserError(f"data dir {data_dir} does not exist",
                        "pass --data-dir pointing at a folder like ../shared/data")
    for name in benchmarks.names(dataset) if dataset else ():
        if name != benchmarks.HUMANEVAL:
            benchmarks.load_docs(data_dir, name)
    need = data_dir / "wikitext-2" / "wiki.test.raw"
    if not need.is_file():
        raise UserError(f"missing data file {need}",
                        "pass --data-dir pointing at a folder laid out like ../shared/data")


@lru_cache(maxsize=4)
def wikitext_halves(data_dir: Path) -> tuple[str, str]:
    """Split WikiText-2 (raw test) at the article boundary nearest the middle: (calibration text, evaluation text)."""
    lines = (data_dir / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8").replace("\r", "").split("\n")
    starts = [i for i, line in enumerate(lines) if _ARTICLE.match(line)]
    sizes = [len(line) + 1 for line in lines]
    half, acc, cut = sum(sizes) / 2, 0, starts[len(starts) // 2]
    for i, s in enumerate(sizes):
        acc += s
        if acc >= half:
            cut = min(starts, key=lambda st: abs(st - i))
            break
    return "\n".join(lines[:cut]), "\n".join(lines[cut:])


WIKITEXT_CALIBRATION = "wikitext2-first-half"
WIKITEXT_EVALUATION = "wikitext2-second-half"


@lru_cache(maxsize=8)
def read_text(data_dir: Path, source: str = WIKITEXT_CALIBRATION) -> str:
    """A half of WikiText-2 (the first calibrates and trains, the second is evaluation text), or a file the user
    names: plain UTF-8 text, or JSON lines whose "text" fields are joined. Empty, binary or mistyped files are a
    UserError naming the file."""
    if source in (WIKITEXT_CALIBRATION, WIKITEXT_EVALUATION):
        with reading(data_dir / "wikitext-2" / "wiki.test.raw", "WikiText-2"):
            return wikitext_halves(data_dir)[source == WIKITEXT_EVALUATION]
    path = Path(source)
    if not path.is_file():
        raise UserError(f"text file {path} does not exist", "pass a .txt or .jsonl file, or leave the default")
    todo = "give UTF-8 text, or one {\"text\": \"...\"} object per line of a .jsonl file"
    with reading(path, "a text file", todo):
        raw = path.read_text(encoding="utf-8")
    if "\x00" in raw:
        raise UserError(f"{path} is a binary file, not text", todo)
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                text = None
            if not isinstance(text, str):
                raise UserError(f"{path} line {i} is not a JSON object with a \"text\" string", todo)
            texts.append(text)
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise UserError(f"{path} holds no text", todo)
    return raw


def calibration_samples(tokenizer, data_dir: Path, n: int, seq_len: int, seed: int,
                        source: str = WIKITEXT_CALIBRATION) -> list[list[int]]:
    """``n`` seeded windows of ``seq_len`` tokens of calibration text (never evaluation text)."""
    ids = tokenizer(read_text(data_dir, source), add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len + 1:
        raise UserError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}", "lower seq_len")
    rng = random.Random(seed)
    return [ids[s:s + seq_len] for s in (rng.randrange(0, len(ids) - seq_len) for _ in range(n))]
