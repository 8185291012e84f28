"""The benchmarks as lm-eval tasks over ../shared/data: every loader reads the real files (counts, parsing), every
task is lm-eval's own YAML on our subset, and an oracle answer scores 1.0 through lm-eval's own scoring."""
import json

import pytest

from agentic_compression import benchmarks
from agentic_compression.errors import UserError

COUNTS = {"hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "winogrande": 1267,
          "commonsense_qa": 1221, "truthfulqa_mc1": 817, "truthfulqa_mc2": 817, "gsm8k": 1319,
          "mmlu": 14042, "bbh": 6511}


def _gold(name, doc):
    """Where the right answer is, read from the converted row (what lm-eval's scorer must agree with)."""
    return {"hellaswag": lambda d: int(d["label"]),
            "arc_easy": lambda d: d["choices"]["label"].index(d["answerKey"]),
            "arc_challenge": lambda d: d["choices"]["label"].index(d["answerKey"]),
            "piqa": lambda d: d["label"], "winogrande": lambda d: int(d["answer"]) - 1,
            "commonsense_qa": lambda d: "ABCDE".index(d["answerKey"]), "truthfulqa_mc1": lambda d: 0,
            "mmlu": lambda d: d["answer"]}[name](doc)


@pytest.fixture(scope="module")
def loaded(data_dir):
    return {n: benchmarks.get(n).load(data_dir) for n in COUNTS}


def test_every_loader_reads_every_item(loaded):
    for name, docs in loaded.items():
        assert sum(len(v) for v in docs.values()) == COUNTS[name], name
    assert len(loaded["mmlu"]) == 57 and len(loaded["bbh"]) == 27
    h = loaded["hellaswag"][""][0]
    assert h["activity_label"] == "Roof shingle removal" and h["label"] == "3" and len(h["endings"]) == 4
    tqa = loaded["truthfulqa_mc1"][""][0]
    assert tqa["question"].startswith("What is the smallest country")  # v0, as the Hub split lm-eval reads
    assert tqa["mc1_targets"]["labels"][0] == 1 and sum(tqa["mc1_targets"]["labels"]) == 1
    arc = loaded["arc_easy"][""]
    assert sum(d["answerKey"] in "1234" for d in arc) == 97  # numeric labels kept (SOURCES.md)
    assert all(len(d["choices"]) == 4 and d["answer"] in range(4) for v in loaded["mmlu"].values() for d in v)


def _tasks(built):
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(built.include_path), include_defaults=False)
    out = {}

    def walk(d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            else:
                out[k] = v
    walk(get_task_dict([built.task], tm))
    return out


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_lm_eval_task_on_the_subset_and_an_oracle_scores_one(data_dir, tmp_path, name):
    b = benchmarks.get(name)
    built = benchmarks.build(data_dir, name, 6, 7, tmp_path)
    tasks = _tasks(built)
    docs = {t: list(task.test_docs()) for t, task in tasks.items()}
    assert sum(len(d) for d in docs.values()) == built.n_items
    assert built.n_items == (57 if name == "mmlu" else 27 if name == "bbh" else 6)  # at least 1 per subtask
    for t, task in tasks.items():
        for doc in docs[t][:3]:
            if task.OUTPUT_TYPE == "generate_until":
                answer = doc["answer"] if name == "gsm8k" else doc["target"]
                scores = task.process_results(doc, [answer])
                assert scores["exact_match"] == 1.0
            elif name == "truthfulqa_mc2":
                labels = doc["mc2_targets"]["labels"]
                assert task.process_results(doc, [(0.0 if y else -50.0, False) for y in labels])["acc"] > 0.999
            else:
                n = len(task.doc_to_choice(doc))
                gold = _gold(name, doc)
                scores = task.process_results(doc, [(0.0 if i == gold else -9.0, i == gold) for i in range(n)])
                assert scores["acc"] == 1.0
    again = benchmarks.build(data_dir, name, 6, 7, tmp_path)
    assert again.task == built.task and again.digest == built.digest  # the same subset for every candidate
    assert benchmarks.build(data_dir, name, 6, 8, tmp_path).digest != built.digest
    assert b.metric.split(",")[0] in ("acc", "acc_norm", "exact_match")


def test_gsm8k_fewshot_examples_are_never_evaluated_items(data_dir, tmp_path):
    built = benchmarks.build(data_dir, "gsm8k", 20, 1, tmp_path)
    folder = built.include_path
    evaluated = {json.loads(x)["question"] for x in next(folder.glob("*[0-9a-f].jsonl")).read_text().splitlines()}
    shots = {json.loads(x)["question"] for x in next(folder.glob("*.fewshot.jsonl")).read_text().splitlines()}
    assert len(evaluated) == 20 and len(shots) == 20 and not evaluated & shots


def test_bad_input_names_the_file_row_or_name(data_dir, tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'mmlu_pro'"):
        benchmarks.names("hellaswag,mmlu_pro")
    with pytest.raises(UserError, match=r"needs .*piqa/valid.jsonl, which does not exist"):
        benchmarks.check_files(tmp_path, "piqa")
    (tmp_path / "winogrande").mkdir()
    good = (data_dir / "winogrande" / "dev.jsonl").read_text().splitlines()
    (tmp_path / "winogrande" / "dev.jsonl").write_text("\n".join(good[:2] + ['{"sentence": "x"}']))
    with pytest.raises(UserError, match=r"winogrande/dev.jsonl line 3 lacks field\(s\) option1, option2, answer"):
        benchmarks.get("winogrande").load(tmp_path)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(UserError, match=r"anatomy_test.csv row 2 is not question,A,B,C,D,answer-letter"):
        benchmarks.get("mmlu").load(tmp_path)
    assert benchmarks.names("all") == [*benchmarks.BENCHMARKS, "humaneval"]
