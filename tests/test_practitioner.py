"""The practitioner's side: a calm terminal (checked under a real pseudo-terminal), a model card in every checkpoint,
`acf export`, runs written down as config files, and `acf report --format`."""
import csv
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from agentic_compression.cli import main

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
FOREIGN = ("WARNING", "INFO", "it/s]", "codecarbon", "Loading weights", "pile-10k", "llmcompressor", "Traceback")


def _acf(*args):
    return [sys.executable, "-m", "agentic_compression.cli", *args]


def _under_pty(cmd, env, timeout=900) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal (200 columns) as its stdin, stdout and stderr; return its exit code and
    everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def calm_run(tiny_dir, data_dir, tmp_path_factory):
    """`acf run` on the tiny model for one episode, in a pseudo-terminal: (exit code, screen, experiment folder)."""
    out = tmp_path_factory.mktemp("calm")
    env = {**os.environ, "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "ACF_SKILLS": str(out / "skills.sqlite")}
    code, screen = _under_pty(_acf("run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir),
                                   "--output-dir", str(out), "--experiment", "calm", "--max-episodes", "1",
                                   "--limit", "8", "--ppl-tokens", "256", "--repeats", "2", "--threads", "1",
                                   "--force"), env)
    return code, screen, out / "calm"


def test_terminal_shows_only_acf_and_the_logs_hold_the_rest(calm_run):
    code, screen, exp = calm_run
    text = ANSI.sub("\n", screen)
    assert code == 0, screen[-3000:]
    assert "━" in screen and "\x1b[" in screen  # a live progress bar on a terminal
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    assert any(x.startswith("baseline ") and "acc " in x and "ms/token" in x for x in lines), lines
    assert any(x.startswith("episode_000  success") and "frontier:" in x for x in lines), lines
    said = [x for x in lines[-2:] if x.startswith(("recommended:", "export it:"))]  # the run ends with what to do
    assert said and said[0].startswith("recommended:"), lines[-4:]
    if said[0].startswith("recommended: episode_000"):
        assert said[1] == lines[-1] and f"export {exp} --best --out {exp}-episode_000" in said[1]
    foreign = [x for x in lines if any(f in x for f in FOREIGN)]
    assert not foreign, foreign
    log = (exp / "episode_000" / "log.txt").read_text()
    assert "codecarbon" in log and "Running loglikelihood requests" in log  # they went here instead
    strategy = json.loads((exp / "episode_000" / "strategy.json").read_text())
    assert strategy["steps"][0]["method"] == "autoround"  # llm-compressor's AutoRound, which printed pile-10k
    assert "pile-10k" not in log  # silenced at its source: it was false (acf passes its own calibration)
    assert (exp / "baseline" / "log.txt").is_file()


def test_without_a_terminal_lines_are_plain(tiny_dir, data_dir, tmp_path, calm_run):
    """Resume of a finished run refuses; a report through a pipe, and an export: plain text, no control codes."""
    _, _, exp = calm_run
    r = subprocess.run(_acf("report", str(exp)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "\x1b" not in r.stdout + r.stderr and r.stdout.startswith("episode ")


def test_every_checkpoint_carries_a_model_card(calm_run):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    _, _, exp = calm_run
    results = json.loads((exp / "episode_000" / "results.json").read_text())
    baseline = json.loads((exp / "baseline" / "results.json").read_text())["result"]
    card = ModelCard.load(exp / "episode_000" / "checkpoint" / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and {"acf", "autoround", "compressed-tensors"} <= set(meta["tags"])
    name, evals = model_index_to_eval_results(meta["model-index"])
    scores = {e.metric_type: e.metric_value for e in evals}
    r = results["result"]
    assert scores["acc_norm"] == round(r["accuracy"], 4) and scores["perplexity"] == round(r["perplexity"], 3)
    text = card.text
    assert f"{r['accuracy']:.4g} ± {r['accuracy_stderr']:.3g}" in text  # each number with its standard error
    assert f"{baseline['accuracy']:.4g} ± {baseline['accuracy_stderr']:.3g}" in text  # and the baseline's beside it
    assert "autoround" in text and "wikitext2-first-half" in text  # the steps and the calibration data
    assert "CPU threads" in text and "from vllm import LLM" in text  # the machine; how to load it


def test_export_copies_a_checkpoint_that_loads_on_its_own(calm_run, tmp_path, capsys):
    _, _, exp = calm_run
    out = tmp_path / "exported"
    assert main(["export", str(exp), "episode_000", "--out", str(out)]) == 0, capsys.readouterr().err
    assert {"README.md", "config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    from agentic_compression.models import load

    model, tok = load(out)
    assert model.config.num_hidden_layers == 2 and tok("hello")["input_ids"]
    before = {p.name for p in out.iterdir()}
    assert main(["export", str(exp), "episode_000", "--out", str(out)]) == 2  # never over an existing folder
    assert "not empty" in capsys.readouterr().err and {p.name for p in out.iterdir()} == before
    assert main(["export", str(exp), "episode_000", "--out", str(tmp_path / "hub"), "--push-to-hub", "me/x"]) == 2
    assert "--online" in capsys.readouterr().err and not (tmp_path / "hub").exists()
    assert main(["export", str(exp), "episode_009", "--out", str(tmp_path / "none")]) == 2
    best = json.loads((exp / "final_results.json").read_text())["recommended"]
    code = main(["export", str(exp), "--best", "--out", str(tmp_path / "best")])
    err = capsys.readouterr().err
    if best is None:
        assert code == 2 and "recommends no compressed candidate" in err
    else:
        assert code == 0 and (tmp_path / "best" / "README.md").is_file()


def test_export_converts_a_pytorch_candidate_to_gguf(calm_run, tmp_path, capsys):
    """--format gguf: the compressed-tensors candidate, dequantized, as llama.cpp's f32 file (checked by the
    converter against the PyTorch model), with a Modelfile and a card that says its numbers came before."""
    from agentic_compression.models.llamacpp_runtime import LlamaCpp

    _, _, exp = calm_run
    out = tmp_path / "g"
    assert main(["export", str(exp), "episode_000", "--out", str(out), "--format", "gguf"]) == 0, \
        capsys.readouterr().err
    said = capsys.readouterr().out
    assert f"llama-cli -m {out}/model.gguf" in said
    assert {"model.gguf", "Modelfile", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "Converted by `acf export --format` to llama.cpp's f32 file" in card and "next-token KL" in card
    assert json.loads((out / "acf_format.json").read_text())["conversion_check"]["ok"]
    cpp = LlamaCpp(out / "model.gguf", n_ctx=64)
    try:
        assert cpp.logits([1, 2, 3]).shape[0] == 3
    finally:
        cpp.close()


def test_report_formats(calm_run, capsys):
    from agentic_compression.report import COLUMNS

    _, _, exp = calm_run
    assert main(["report", str(exp), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["episode"] for r in rows] == ["baseline", "episode_000"]
    assert all(r["accuracy_stderr"] is not None and r["accuracy_n"] == 8 for r in rows)
    assert main(["report", str(exp), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(table[0]) == list(COLUMNS) and float(table[1]["accuracy"]) == rows[1]["accuracy"]
    assert main(["report", str(exp), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| episode |") and md[1].startswith("|---") and " ± " in md[2] and md[4] == ""
    assert md[5].startswith("Stopped: ") and md[7].startswith("Recommended")


def test_a_run_as_a_file(tmp_path, tiny_dir, data_dir, calm_run, capsys, monkeypatch):
    from agentic_compression.config import RunConfig

    monkeypatch.delenv("ACF_DATA_DIR", raising=False)  # the defaults, as on a machine that does not set it
    assert main(["run", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert RunConfig(**printed) == RunConfig(model="smollm2-135m", data_dir=Path("../shared/data"))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({**printed, "model": str(tiny_dir), "data_dir": str(data_dir), "patience": 7,
                                   "eval": {**printed["eval"], "limit": 12}}))
    assert main(["run", "--config", str(run), "--limit", "5", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["eval"]["limit"] == 5 and resolved["patience"] == 7 and resolved["model"] == str(tiny_dir)
    _, _, exp = calm_run  # an experiment's config.json repeats the run: the same configuration, another name
    assert main(["run", "--config", str(exp / "config.json"), "--experiment", "again", "--print-config"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    original = json.loads((exp / "config.json").read_text())
    assert {**again, "experiment": "calm"} == original


def test_router_sends_every_kind_of_output_to_the_current_log(tmp_path, capsys):
    """Python's streams, C-level writes, a child process, and what came before the first log file."""
    from agentic_compression.console import OutputRouter

    with capsys.disabled(), OutputRouter() as router:  # the real sys.stdout/stderr, as under `acf run`
        print("before any log", flush=True)
        router.route(tmp_path / "a" / "log.txt")
        os.write(2, b"fd-level write\n")
        print("a library's stderr", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child process\\n')"], check=True)
        time.sleep(0.2)
        router.route(tmp_path / "b" / "log.txt")
        print("second log", flush=True)
        time.sleep(0.2)
    first, second = (tmp_path / "a" / "log.txt").read_text(), (tmp_path / "b" / "log.txt").read_text()
    assert all(s in first for s in ("before any log", "fd-level write", "a library's stderr", "child process")), first
    assert "second log" in second and "second log" not in first
