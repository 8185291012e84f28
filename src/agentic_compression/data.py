"""Local data: the WikiText-2 split (calibration half / evaluation half, disjoint by construction) and benchmark
items turned into lm-eval tasks over local files. Data is read from ``--data-dir`` (laid out like ../shared/data)
and never copied into the repository; derived files go to the cache."""
from __future__ import annotations

import bz2
import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path

from .errors import UserError

BENCHMARKS = ("hellaswag", "arc_easy", "arc_challenge")
_ARTICLE = re.compile(r"^ = [^=].* = $")


def check_data_dir(data_dir: Path, dataset: str) -> None:
    if not data_dir.is_dir():
        raise UserError(f"data dir {data_dir} does not exist", "pass --data-dir pointing at a folder like ../shared/data")
    if dataset not in BENCHMARKS:
        raise UserError(f"unknown dataset '{dataset}'", f"choose one of: {', '.join(BENCHMARKS)}")
    for need in (_bench_file(data_dir, dataset), data_dir / "wikitext-2" / "wiki.test.raw"):
        if not need.is_file():
            raise UserError(f"missing data file {need}", "pass --data-dir pointing at a folder laid out like ../shared/data")


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


@lru_cache(maxsize=4)
def calibration_text(data_dir: Path, source: str = WIKITEXT_CALIBRATION) -> str:
    """The first half of WikiText-2 (the second half is evaluation text), or a file the user names: plain text,
    or JSON lines whose "text" fields are joined."""
    if source == WIKITEXT_CALIBRATION:
        return wikitext_halves(data_dir)[0]
    path = Path(source)
    if not path.is_file():
        raise UserError(f"calibration file {path} does not exist", "pass a .txt or .jsonl file, or leave the default")
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path} line {i} is not a JSON object with a \"text\" field",
                                "give one {\"text\": ...} object per line") from None
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8")


def calibration_samples(tokenizer, data_dir: Path, n: int, seq_len: int, seed: int,
                        source: str = WIKITEXT_CALIBRATION) -> list[list[int]]:
    """``n`` seeded windows of ``seq_len`` tokens of calibration text (never evaluation text)."""
    ids = tokenizer(calibration_text(data_dir, source), add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len + 1:
        raise UserError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}", "lower seq_len")
    rng = random.Random(seed)
    return [ids[s:s + seq_len] for s in (rng.randrange(0, len(ids) - seq_len) for _ in range(n))]


def _bench_file(data_dir: Path, name: str) -> Path:
    return {
        "hellaswag": data_dir / "hellaswag" / "hellaswag_val_full.txt.bz2",
        "arc_easy": data_dir / "arc" / "ARC-Easy-Test.jsonl",
        "arc_challenge": data_dir / "arc" / "ARC-Challenge-Test.jsonl",
    }[name]


def load_items(data_dir: Path, name: str) -> list[dict]:
    """All items as {query, choices, label}; HellaSwag from klosax's text export (6 lines per item, see SOURCES.md)."""
    path = _bench_file(data_dir, name)
    if name == "hellaswag":
        with bz2.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        return [{"query": lines[i], "label": int(lines[i + 1]), "choices": lines[i + 2:i + 6]}
                for i in range(0, len(lines) - 5, 6)]
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        labels = [c["label"] for c in d["question"]["choices"]]
        items.append({"query": f"Question: {d['question']['stem']}\nAnswer:",
                      "choices": [c["text"] for c in d["question"]["choices"]],
                      "label": labels.index(d["answerKey"])})
    return items


_TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def build_task(data_dir: Path, name: str, limit: int, seed: int, out_dir: Path) -> tuple[Path, str]:
    """Write a seeded item subset and an lm-eval YAML task over it; every candidate of an experiment shares it.
    Returns (include_path, task name)."""
    items = load_items(data_dir, name)
    idx = sorted(random.Random(seed).sample(range(len(items)), min(limit, len(items))))
    digest = hashlib.sha1(f"{_bench_file(data_dir, name).resolve()}|{name}|{limit}|{seed}".encode()).hexdigest()[:10]
    task = f"acf_{name}_{digest}"
    folder = out_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "items.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(items[i]) + "\n" for i in idx), encoding="utf-8")
    (folder / f"{task}.yaml").write_text(_TASK_YAML.format(task=task, data=data.resolve()), encoding="utf-8")
    return folder, task
