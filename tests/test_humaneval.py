"""HumanEval's sandbox drills: a loop, a memory bomb, deleting outside files and reading secrets are all contained
and scored as failures; the canonical solutions pass; pass@1 runs end to end on a tiny model."""
import shutil
import time

import pytest

from agentic_compression.evaluation import humaneval
from agentic_compression.evaluation.humaneval import problems, program, run_sandboxed

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (setup.sh "
                                "installs it); without it HumanEval reports itself unavailable")


def test_canonical_solutions_pass_and_a_wrong_one_fails():
    probs = problems(5, 0)
    assert len(probs) == 5 and len(problems(500, 0)) == 164 and problems(5, 0) == probs
    for p in probs:
        assert run_sandboxed(program(p, p["canonical_solution"]))["passed"], p["task_id"]
    wrong = run_sandboxed(program(probs[0], "    return None\n"))
    assert not wrong["passed"] and "Error" in wrong["reason"]


def test_an_endless_loop_is_killed_at_the_timeout():
    t = time.monotonic()
    r = run_sandboxed("while True:\n    pass\n", timeout_s=2)
    assert not r["passed"] and time.monotonic() - t < 8


def test_unbounded_memory_is_refused():
    r = run_sandboxed("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", timeout_s=20, memory_mb=512)
    assert not r["passed"] and "MemoryError" in r["reason"]


def test_files_outside_its_directory_survive(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    attack = (f"import os, shutil, pathlib\np = pathlib.Path({str(victim)!r})\n"
              "try:\n    shutil.rmtree(p)\nexcept Exception:\n    pass\n"
              "try:\n    os.remove(p / 'keep.txt')\nexcept Exception:\n    pass\n"
              "(p / 'keep.txt').write_text('overwritten')\n")
    r = run_sandboxed(attack)
    assert (victim / "keep.txt").read_text() == "precious" and not r["passed"]


def test_no_secret_is_inherited(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-be-seen")
    probe = "import os, sys\nsys.exit(1 if any('sk-' in v for v in os.environ.values()) else 0)\n"
    assert run_sandboxed(probe)["passed"]


def test_truncation_at_the_next_top_level_statement():
    assert humaneval.truncate("    return x\n\ndef other():\n    pass") == "    return x\n"


def test_pass_at_1_end_to_end_on_a_tiny_model(tiny_dir):
    from agentic_compression.models import load

    model, tok = load(tiny_dir)
    r = humaneval.evaluate(model, tok, limit=2, seed=0, max_new_tokens=8, timeout_s=5)
    assert r["n"] == 2 and r["value"] == 0.0 and len(r["problems"]) == 2  # random weights never pass
    assert all(not p["passed"] and p["reason"] for p in r["problems"])
