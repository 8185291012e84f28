"""The hostile-input probe (issue 11), kept as one table so the next probe starts from it.

CASES: bad or hostile input to `acf run`, `acf resume`, `acf report` and the REST API. Each case asserts the exit
code or HTTP status, that the message names the input, that no traceback reaches the user, and that nothing was
deleted, changed or left behind in the case's world (inputs, output folder, acf's cache). After the table: the
probe's failures that need more than one call (resume without its state, the sandbox's escapes, the LLM endpoint's
hostility, a failed API experiment)."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from fastapi.testclient import TestClient

from agentic_compression.cli import main

TOKEN = "test-token-0123456789"


# ---- the world a case runs in, and what "nothing lost, nothing left" means ----
@dataclass
class World:
    root: Path
    tiny: Path  # the tiny model (read-only for the cases)
    data: Path  # ../shared/data

    def __post_init__(self):
        from agentic_compression.models import CONVERTED

        for d in ("out", "models", "files", f"cache/{CONVERTED}"):  # acf's own cache folder exists
            (self.root / d).mkdir(parents=True, exist_ok=True)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, name: str, content: bytes | str) -> Path:
        p = self.root / "files" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def model(self, name: str, config: bytes | str | None = None, weights: bytes | None = None) -> Path:
        """A model folder in the world's models folder: the tiny model, with a replaced config or weights."""
        d = self.root / "models" / name
        shutil.copytree(self.tiny, d)
        if config is not None:
            (d / "config.json").write_bytes(config.encode() if isinstance(config, str) else config)
        if weights is not None:
            (d / "model.safetensors").write_bytes(weights)
        return d

    def data_with(self, rel: str, content: bytes | str) -> Path:
        """A data folder like ../shared/data (links to its parts) in which ``rel`` is replaced by ``content``."""
        d = self.root / "data"
        for part in self.data.iterdir():
            (d / part.name).parent.mkdir(parents=True, exist_ok=True)
            if part.name != rel.split("/")[0]:
                (d / part.name).symlink_to(part)
        top = self.data / rel.split("/")[0]
        for f in top.rglob("*"):
            target = d / f.relative_to(self.data)
            if f.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
        (d / rel).unlink(missing_ok=True)
        (d / rel).write_bytes(content.encode() if isinstance(content, str) else content)
        return d

    def experiment(self, name: str, **files: str) -> Path:
        """An experiment folder as `acf run` writes one, with a valid config.json unless ``files`` replace it."""
        from agentic_compression.config import RunConfig

        d = self.out / name
        d.mkdir()
        cfg = RunConfig(model=str(self.tiny), data_dir=self.data, output_dir=self.out, experiment=name,
                        presets=False)
        (d / "config.json").write_text(cfg.model_dump_json())
        for rel, content in files.items():
            (d / rel.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
            (d / rel.replace("__", "/")).write_text(content)
        return d


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, a link's target, or 'dir' (links are not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path, tiny_dir, data_dir, monkeypatch) -> World:
    monkeypatch.setenv("ACF_CACHE_DIR", str(tmp_path / "world" / "cache"))
    return World(tmp_path / "world", tiny_dir, data_dir)


# ---- the table ----
@dataclass
class Case:
    id: str
    argv: Callable[[World], list[str]]  # the command line, after the world is prepared
    says: Callable[[World], str] | str  # a part of the message that names the input
    code: int = 2


def run_args(w: World, *extra: str, model: str | None = None, data: Path | None = None, experiment: str = "exp",
             out: Path | None = None) -> list[str]:
    return ["run", "--no-presets", "--model", model or str(w.tiny), "--data-dir", str(data or w.data), "--output-dir",
            str(out or w.out), "--experiment", experiment, "--limit", "8", "--ppl-tokens", "256", *extra]


def _tiny_weights(w: World) -> bytes:
    return (w.tiny / "model.safetensors").read_bytes()


def _locked(w: World) -> list[str]:
    from agentic_compression.loop.store import FolderLock

    (w.out / "exp").mkdir()
    w.held = FolderLock(w.out / "exp")  # another acf process holds it (flock: per open file, so in-process too)
    return run_args(w)


# 9 levels of 10 aliases each: 10^9 strings once expanded
_BOMB = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)) + \
    "method_overrides: {gptq: {bomb: *a9}}\n"


def _linked(w, target: str) -> Path:
    """A model folder whose weights are a link to a system file (the probe's row 12)."""
    d = w.model("linked")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(target)
    return d


CLI_CASES = [
    # a model's files
    Case("config-truncated", lambda w: run_args(w, model=str(w.model("m", config='{"model_type": "lla'))),
         "config.json"),
    Case("config-not-object", lambda w: run_args(w, model=str(w.model("m", config="[1, 2]"))), "config.json"),
    Case("config-empty", lambda w: run_args(w, model=str(w.model("m", config=""))), "config.json"),
    Case("config-binary", lambda w: run_args(w, model=str(w.model("m", config=b"\xff\xfe\x00\x01"))), "config.json"),
    Case("config-no-model-type", lambda w: run_args(w, model=str(w.model("m", config='{"hidden_size": 8}'))),
         "model_type"),
    Case("safetensors-truncated", lambda w: run_args(w, model=str(w.model("m", weights=_tiny_weights(w)[:4000]))),
         "model.safetensors"),
    Case("safetensors-cut-short", lambda w: run_args(w, model=str(w.model("m", weights=_tiny_weights(w)[:-100]))),
         "model.safetensors"),
    Case("safetensors-links-outside", lambda w: run_args(w, model=str(_linked(w, "/etc/passwd"))),
         "is a link to a file outside the model folder"),
    Case("safetensors-garbage", lambda w: run_args(w, model=str(w.model("m", weights=os.urandom(4096)))),
         "model.safetensors"),
    Case("gguf-garbage", lambda w: run_args(w, model=str(w.file("bad.gguf", os.urandom(2048)))), "bad.gguf"),
    Case("gguf-empty", lambda w: run_args(w, model=str(w.file("empty.gguf", b""))), "empty.gguf"),
    Case("model-missing", lambda w: run_args(w, model=str(w.root / "no-such-model")), "no-such-model"),
    Case("model-name-5000-chars", lambda w: run_args(w, model="m" * 5000), "model:"),
    Case("model-folder-without-config", lambda w: run_args(w, model=str(w.root / "files")), "config.json"),
    # calibration and evaluation text
    Case("calibration-binary", lambda w: run_args(w, "--calibration", str(w.file("c.txt", os.urandom(512) + b"\0"))),
         "c.txt"),
    Case("calibration-jsonl-wrong-type", lambda w: run_args(
        w, "--calibration", str(w.file("c.jsonl", '{"text": "ok"}\n{"text": 5}\n'))), "c.jsonl line 2"),
    Case("calibration-jsonl-not-object", lambda w: run_args(
        w, "--calibration", str(w.file("c.jsonl", '["text", "x"]\n'))), "c.jsonl line 1"),
    Case("calibration-jsonl-broken", lambda w: run_args(w, "--calibration", str(w.file("c.jsonl", '{"text": "'))),
         "c.jsonl line 1"),
    Case("calibration-empty", lambda w: run_args(w, "--calibration", str(w.file("c.txt", ""))), "c.txt"),
    Case("calibration-whitespace", lambda w: run_args(w, "--calibration", str(w.file("c.txt", "\n \n"))), "c.txt"),
    Case("calibration-jsonl-empty", lambda w: run_args(w, "--calibration", str(w.file("c.jsonl", "\n"))), "c.jsonl"),
    Case("calibration-latin1", lambda w: run_args(
        w, "--calibration", str(w.file("c.txt", "caf\xe9".encode("latin-1")))), "c.txt"),
    Case("calibration-missing", lambda w: run_args(w, "--calibration", str(w.root / "nope.txt")), "nope.txt"),
    Case("ppl-text-missing", lambda w: run_args(w, "--ppl-text", str(w.root / "gone.txt")), "gone.txt"),
    # benchmark files
    Case("benchmark-broken-json", lambda w: run_args(w, "--dataset", "arc_easy", data=w.data_with(
        "arc/ARC-Easy-Test.jsonl", '{"question": {"stem": "x"')), "ARC-Easy-Test.jsonl"),
    Case("benchmark-wrong-shape", lambda w: run_args(w, "--dataset", "arc_easy", data=w.data_with(
        "arc/ARC-Easy-Test.jsonl", '{"question": "a string", "answerKey": "A"}\n')), "ARC-Easy-Test.jsonl"),
    Case("benchmark-empty", lambda w: run_args(w, "--dataset", "arc_easy", data=w.data_with(
        "arc/ARC-Easy-Test.jsonl", "")), "ARC-Easy-Test.jsonl"),
    Case("benchmark-not-bz2", lambda w: run_args(w, data=w.data_with(
        "hellaswag/hellaswag_val_full.txt.bz2", b"not bzip2 at all")), "hellaswag_val_full.txt.bz2"),
    Case("wikitext-binary", lambda w: run_args(w, data=w.data_with("wikitext-2/wiki.test.raw", b"\xff\xfe\xfa" * 99)),
         "wiki.test.raw"),
    Case("dataset-unknown", lambda w: run_args(w, "--dataset", "imagenet"), "imagenet"),
    Case("data-dir-missing", lambda w: run_args(w, data=w.root / "no-data"), "no-data"),
    # values refused before any work
    Case("set-float-for-int", lambda w: run_args(w, "--set", "gptq.num_samples=32.5"), "gptq.num_samples=32.5"),
    Case("set-unknown-param", lambda w: run_args(w, "--set", "gptq.bogus=1"), "bogus"),
    Case("set-unknown-method", lambda w: run_args(w, "--set", "nomethod.x=1"), "nomethod"),
    Case("set-out-of-range", lambda w: run_args(w, "--set", "gptq.num_samples=100000"), "100000"),
    Case("llm-base-url-not-a-url", lambda w: run_args(w, "--policy", "llm", "--llm-base-url", "not a url"),
         "not a url"),
    Case("llm-mode-unknown", lambda w: run_args(w, "--policy", "llm", "--llm-mode", "telepathy"), "telepathy"),
    Case("country-unknown", lambda w: run_args(w, "--country", "ZZZ"), "ZZZ"),
    Case("device-cuda-without-gpu", lambda w: run_args(w, "--device", "cuda"), "cuda"),
    Case("policy-unknown", lambda w: run_args(w, "--policy", "oracle"), "oracle"),
    Case("max-episodes-zero", lambda w: run_args(w, "--max-episodes", "0"), "max_episodes"),
    Case("threads-zero", lambda w: run_args(w, "--threads", "0"), "threads"),
    Case("noise-tolerance-2", lambda w: run_args(w, "--noise-tolerance", "2"), "noise_tolerance"),
    Case("budget-nan", lambda w: run_args(w, "--budget-hours", "nan"), "budget_hours"),
    # the experiment's name and folder
    Case("experiment-dotdot", lambda w: run_args(w, experiment="../escape"), "../escape"),
    Case("experiment-absolute", lambda w: run_args(w, experiment=str(w.root / "abs")), "experiment:"),
    Case("experiment-nested", lambda w: run_args(w, experiment="a/b/c"), "a/b/c"),
    Case("experiment-dot", lambda w: run_args(w, experiment="."), "'.'"),
    Case("experiment-exists", lambda w: (w.experiment("exp", **{"notes.txt": "mine"}), run_args(w))[1],
         "already exists"),
    Case("experiment-locked", _locked, "in use by another acf process"),
    Case("output-dir-is-a-file", lambda w: run_args(w, out=w.file("f", "x") / "sub"), "not writable"),
    # a run written down (--config)
    Case("config-file-not-mapping", lambda w: ["run", "--config", str(w.file("run.yaml", "- a\n- b\n"))], "run.yaml"),
    Case("config-file-bad-yaml", lambda w: ["run", "--config", str(w.file("run.yaml", "model: [unclosed\n"))],
         "run.yaml"),
    Case("config-file-wrong-types", lambda w: ["run", "--config", str(w.file(
        "run.yaml", f"model: {w.tiny}\ndata_dir: {w.data}\nmax_episodes: many\n"))], "max_episodes"),
    Case("config-file-missing", lambda w: ["run", "--config", str(w.root / "absent.yaml")], "absent.yaml"),
    # the hostile-input probe's config rows: an alias bomb, a 50 MB file, a misspelled key, a section that does not
    # exist, a yes/no where a number goes (each once ran, expanded to gigabytes, or did something else)
    Case("config-file-alias-bomb", lambda w: ["run", "--print-config", "--config", str(w.file("run.yaml", _BOMB))],
         "uses a YAML alias"),
    Case("config-file-huge", lambda w: ["run", "--config", str(w.file("run.yaml", "a: 1\n" * 300_000))],
         "more than a run configuration's 1,000,000"),
    Case("config-file-misspelled-key", lambda w: ["run", "--config", str(w.file(
        "run.yaml", f"model: {w.tiny}\ndata_dir: {w.data}\nmax_episode: 1\n"))], "max_episode: Extra inputs"),
    Case("config-file-unknown-section", lambda w: ["run", "--config", str(w.file(
        "run.yaml", f"model: {w.tiny}\ndata_dir: {w.data}\neval:\n  limt: 8\n"))], "valid keys here: benchmark"),
    Case("config-file-bool-for-a-number", lambda w: ["run", "--config", str(w.file(
        "run.yaml", f"model: {w.tiny}\ndata_dir: {w.data}\nmax_episodes: true\n"))], "max_episodes: expected int"),
    Case("no-model-at-all", lambda w: ["run", "--data-dir", str(w.data)], "no model given"),
    # a Ray cluster to join: checked with a short connection before any work (Ray waited ~14 min, after the baseline)
    Case("ray-address-nothing-listens", lambda w: run_args(w, "--parallel", "2", "--ray-address", "127.0.0.1:1"),
         "nothing answers at --ray-address 127.0.0.1:1"),
    Case("ray-address-unroutable", lambda w: run_args(w, "--parallel", "2", "--ray-address", "10.255.255.1:6379"),
         "at --ray-address 10.255.255.1:6379 within"),  # refused, or a proxy that answers anything: not Ray
    Case("ray-address-not-host-port", lambda w: run_args(w, "--parallel", "2", "--ray-address", "my-cluster"),
         "--ray-address my-cluster is not HOST:PORT"),
    # resume
    Case("resume-config-truncated", lambda w: ["resume", str(w.experiment("e", **{"config.json": '{"model": '}))],
         "config.json"),
    Case("resume-config-wrong-types", lambda w: ["resume", str(w.experiment(
        "e", **{"config.json": '{"model": 5, "data_dir": [], "max_episodes": "many"}'}))], "config.json"),
    Case("resume-no-config", lambda w: ["resume", str(w.root / "files")], "config.json"),
    Case("resume-summary-corrupt", lambda w: ["resume", str(w.experiment("e", **{"final_results.json": "{"}))],
         "final_results.json"),
    Case("resume-baseline-corrupt", lambda w: ["resume", str(w.experiment(
        "e", **{"baseline__results.json": "[]"}))], "results.json"),
    Case("resume-episode-corrupt", lambda w: ["resume", str(w.experiment(
        "e", **{"baseline__results.json": "{}", "episode_000__results.json": "{trunc"}))], "results.json"),
    Case("resume-episode-gap", lambda w: ["resume", str(w.experiment(
        "e", **{"episode_001__results.json": "{}"}))], "episode_000"),
    Case("resume-symlink", lambda w: (os.symlink(w.experiment("real"), w.out / "link"),
                                      ["resume", str(w.out / "link")])[1], "link"),
    Case("resume-finished", lambda w: ["resume", str(w.experiment(
        "e", **{"final_results.json": '{"complete": true}'}))], "already finished"),
    # report
    Case("report-summary-truncated", lambda w: ["report", str(w.experiment("e", **{"final_results.json": '{"epi'}))],
         "final_results.json"),
    Case("report-summary-wrong-types", lambda w: ["report", str(w.experiment(
        "e", **{"final_results.json": '{"pareto_frontier": 5, "episodes": "none"}'}))], "final_results.json"),
    Case("report-not-an-experiment", lambda w: ["report", str(w.root / "files")], "final_results.json"),
]

SLOW_CASES = {"ray-address-unroutable"}  # waits out Ray's connection timeout (20 s): outside the fast tier


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.id in SLOW_CASES else [])
                                  for c in CLI_CASES])
def test_cli_bad_input(case, world, capsys):
    argv = case.argv(world)
    before = snapshot(world.root)
    try:
        code = main(argv)
    finally:
        if hasattr(world, "held"):
            world.held.close()
    out, err = capsys.readouterr()
    says = case.says(world) if callable(case.says) else case.says
    assert code == case.code, (code, err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    lines = [x for x in err.splitlines() if x.strip()]
    assert len([x for x in lines if x.startswith("acf: error:")]) == 1 and says in err, err
    assert " -> " in err  # what to do
    assert snapshot(world.root) == before  # nothing deleted or changed, nothing left behind


# ---- the API's table ----
@pytest.fixture
def api(world, data_dir):
    from agentic_compression.service.api import create_app

    world.model("tiny")
    with TestClient(create_app(world.out, data_dir, TOKEN, models_dir=world.root / "models")) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def _body(**kw) -> dict:
    return {"model": "tiny", "experiment": "x", "force": True, "limit": 8, "ppl_tokens": 256, "repeats": 2,
            "threads": 1, "max_episodes": 1, **kw}


def _finished(w: World) -> None:
    w.experiment("done", **{"final_results.json": '{"complete": true, "termination_reason": "max_episodes"}'})


def _symlinked_episode(w: World) -> None:
    outside = w.root / "files" / "outside" / "checkpoint"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_text("outside the output folder")
    (w.experiment("real") / "episode_007").symlink_to(outside.parent)


def _symlinked_experiment(w: World) -> None:
    outside = w.root / "files" / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text('{"max_episodes": 666}')
    (w.out / "evil").symlink_to(outside)


@dataclass
class ApiCase:
    id: str
    call: Callable[[TestClient, World], object]  # the request; returns the response
    status: int
    says: str = ""  # a part of the answer's detail naming the input
    setup: Callable[[World], None] | None = None  # what the world holds before the request


def _json(text: str) -> dict:
    return {"content": text, "headers": {"Content-Type": "application/json"}}


API_CASES = [
    ApiCase("budget-nan", lambda c, w: c.post("/experiments", **_json(
        '{"model": "tiny", "experiment": "x", "budget_hours": NaN}')), 422, "budget_hours"),
    ApiCase("budget-infinite", lambda c, w: c.post("/experiments", **_json(
        '{"model": "tiny", "experiment": "x", "budget_hours": Infinity}')), 422, "budget_hours"),
    ApiCase("target-not-on-this-machine", lambda c, w: c.post("/experiments", json=_body(target="vllm")), 400,
            "target 'vllm' cannot run here"),
    ApiCase("model-5000-chars", lambda c, w: c.post("/experiments", json=_body(model="m" * 5000)), 422, "model"),
    ApiCase("model-absolute-path", lambda c, w: c.post("/experiments", json=_body(model=str(w.tiny))), 400,
            "not one this server offers"),
    ApiCase("model-outside-the-list", lambda c, w: c.post("/experiments", json=_body(model="etc")), 400,
            "not one this server offers"),
    ApiCase("model-missing-dir", lambda c, w: c.post("/experiments", json=_body(model="no-such")), 400,
            "not one this server offers"),
    ApiCase("body-60mb", lambda c, w: c.post("/experiments", content=b"x" * (60 << 20)), 413, "body"),
    ApiCase("body-60mb-unauthenticated", lambda c, w: c.post(
        "/experiments", content=b"x" * (60 << 20), headers={"Authorization": "Bearer wrong"}), 401, "token"),
    ApiCase("no-token", lambda c, w: c.get("/experiments", headers={"Authorization": ""}), 401, "token"),
    ApiCase("malformed-json", lambda c, w: c.post("/experiments", **_json("{not json")), 422),
    ApiCase("path-field-smuggled", lambda c, w: c.post("/experiments", json=_body(data_dir="/etc")), 422, "data_dir"),
    ApiCase("experiment-dotdot", lambda c, w: c.post("/experiments", json=_body(experiment="../x")), 422,
            "experiment"),
    ApiCase("policy-unknown", lambda c, w: c.post("/experiments", json=_body(policy="oracle")), 400, "oracle"),
    ApiCase("device-cuda", lambda c, w: c.post("/experiments", json=_body(device="cuda")), 400, "cuda"),
    ApiCase("override-float-for-int", lambda c, w: c.post("/experiments", json=_body(
        method_overrides={"gptq": {"num_samples": 32.5}})), 400, "num_samples"),
    ApiCase("cancel-finished", lambda c, w: c.post("/experiments/done/cancel"), 409, "ended", _finished),
    ApiCase("symlinked-episode", lambda c, w: c.get("/experiments/real/checkpoints/episode_007"), 404,
            "episode_007", _symlinked_episode),
    ApiCase("symlinked-episode-file", lambda c, w: c.get("/experiments/real/files/episode_007/checkpoint/secret.txt"),
            404, "episode_007", _symlinked_episode),
    ApiCase("symlinked-experiment", lambda c, w: c.get("/experiments/evil"), 404, "evil", _symlinked_experiment),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input(case, api, world):
    if case.setup:
        case.setup(world)
    before = snapshot(world.root)
    r = case.call(api, world)
    assert r.status_code == case.status, (r.status_code, r.text[:500])
    assert len(r.content) < 4000  # never the body echoed back
    assert "Traceback" not in r.text and case.says in r.text, r.text
    assert snapshot(world.root) == before


def test_api_model_refusals_do_not_tell_which_folders_exist(api, world):
    (world.root / "models" / "exists-but-no-config").mkdir()
    answers = {name: api.post("/experiments", json=_body(model=name)).json()["detail"].replace(name, "NAME")
               for name in ("exists-but-no-config", "never-existed")}
    assert len(set(answers.values())) == 1, answers


def test_api_lists_no_symlinked_experiment_and_archives_no_link(api, world):
    _symlinked_experiment(world)
    real = world.experiment("real")
    ckpt = real / "episode_000" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "passwd").symlink_to("/etc/passwd")
    assert [e["name"] for e in api.get("/experiments").json()] == ["real"]
    import io
    import tarfile

    tgz = api.get("/experiments/real/checkpoints/episode_000")
    names = tarfile.open(fileobj=io.BytesIO(tgz.content)).getnames()
    assert "real-episode_000/config.json" in names and not any(n.endswith("passwd") for n in names)


def test_a_checkpoint_download_streams_from_disk_in_bounded_memory(tmp_path):
    """A 300 MB checkpoint through the API's tar stream: every byte arrives, and the server's memory grows by less
    than 50 MB (a tar built in memory grew it by the checkpoint's size); a client that leaves stops the writer."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with open(ckpt / "model.safetensors", "wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    code = ("import resource, sys, tarfile, io\nfrom pathlib import Path\n"
            "from agentic_compression.service.api import tar_stream\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"n = sum(len(c) for c in tar_stream(Path({str(ckpt)!r}), 'x'))\n"
            "print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    sent, grew_mb = map(int, out.stdout.split())
    assert sent > 300 << 20 and grew_mb < 50, out.stdout + out.stderr[-2000:]
    from agentic_compression.service.api import tar_stream

    threads = threading.active_count()
    stream = tar_stream(ckpt, "x")
    assert len(next(stream)) > 0 and threading.active_count() == threads + 1
    stream.close()  # the client went away: the writer thread ends instead of waiting on a full queue
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() == threads


@pytest.mark.slow
def test_api_keeps_a_failed_experiment_with_its_error(api, world):
    """Accepted (202), then its baseline fails: it stays listed as failed, with the error and when, and is logged."""
    broken = json.loads((world.tiny / "config.json").read_text())
    broken["hidden_size"] = 32  # the weights no longer fit: loading fails in the evaluation process
    world.model("misfit", config=json.dumps(broken))
    r = api.post("/experiments", json=_body(model="misfit", experiment="doomed"))
    assert r.status_code == 202
    t = time.monotonic()
    while (st := api.get("/experiments/doomed").json())["status"] not in ("failed", "complete"):
        assert time.monotonic() - t < 300, st
        time.sleep(0.5)
    assert st["status"] == "failed" and "could not be measured" in st["error"] and st["failed_at"], st
    time.sleep(1)
    listed = {e["name"]: e for e in api.get("/experiments").json()}
    assert listed["doomed"]["status"] == "failed"
    saved = json.loads((world.out / "doomed" / "failed.json").read_text())
    assert saved["error"] == st["error"]
    assert api.post("/experiments/doomed/cancel").status_code == 409


# ---- resume never destroys finished work ----
class Crash(BaseException):
    """Stands in for the process dying: nothing in the loop catches it."""


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_dir, data_dir):
    """An experiment killed in episode 1: the baseline and episode_000 are finished."""
    from agentic_compression.config import EvalSettings, RunConfig
    from agentic_compression.loop.experiment import Experiment

    out = tmp_path_factory.mktemp("crashed")
    fast = EvalSettings(limit=8, ppl_tokens=256, ppl_window=128, ppl_stride=64, prompt_tokens=16, decode_tokens=4,
                        warmup=1, repeats=2, batch_size=8, threads=1)
    cfg = RunConfig(model=str(tiny_dir), data_dir=data_dir, output_dir=out, experiment="exp", eval=fast, threads=1,
                    presets=False, max_episodes=2, patience=9, use_skills=False, force=True)
    work = Experiment.work

    def dies_in_episode_1(self, state):
        if state["current_episode"] == 1:
            raise Crash
        return work(self, state)

    Experiment.work = dies_in_episode_1
    try:
        with pytest.raises(Crash):
            Experiment(cfg).run()
    finally:
        Experiment.work = work
    return out / "exp"


def _copy_with_user_files(crashed: Path, tmp_path: Path) -> Path:
    exp = tmp_path / "out" / "exp"
    shutil.copytree(crashed, exp, symlinks=True)
    cfg = json.loads((exp / "config.json").read_text())
    (exp / "config.json").write_text(json.dumps({**cfg, "output_dir": str(exp.parent)}))
    (exp / "my-notes.txt").write_text("the user's own file")
    (exp / "episode_000" / "my-comment.txt").write_text("also the user's")
    return exp


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage"])
def test_resume_without_its_state_rebuilds_from_the_results(crashed, tmp_path, damage):
    from agentic_compression.loop.experiment import Experiment

    exp = _copy_with_user_files(crashed, tmp_path)
    first = (exp / "episode_000" / "results.json").read_bytes()
    state = exp / "state.sqlite"
    for extra in ("state.sqlite-wal", "state.sqlite-shm"):  # a write-ahead log left by the crashed run's open
        (exp / extra).unlink(missing_ok=True)  # connection could hold a valid first page: damage the state whole
    if damage == "deleted":
        state.unlink()
    elif damage == "truncated":
        state.write_bytes(b"")
    else:
        state.write_bytes(b"this is not a database" * 100)
    final = Experiment.resume(exp)
    assert final["complete"] and final["episodes_run"] == 2, final["termination_reason"]
    assert [e["episode_id"] for e in final["episodes"]] == ["episode_000", "episode_001"]
    assert (exp / "episode_000" / "results.json").read_bytes() == first  # kept, not re-run
    assert (exp / "my-notes.txt").read_text() == "the user's own file"
    assert (exp / "episode_000" / "my-comment.txt").read_text() == "also the user's"
    assert final["episodes"][0]["steps"] != final["episodes"][1]["steps"]  # the rebuilt history knows episode 0
    if damage == "garbage":  # an unusable state is kept aside, never deleted
        kept = list(exp.glob("state.sqlite.unusable-*"))
        assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")


@pytest.mark.slow
def test_ctrl_c_while_resume_measures_the_baseline_deletes_nothing(crashed, tmp_path, monkeypatch):
    from agentic_compression.evaluation import Evaluator

    exp = _copy_with_user_files(crashed, tmp_path)
    shutil.rmtree(exp / "baseline")
    (exp / "state.sqlite").unlink()
    before = snapshot(exp)

    def interrupted(self, checkpoint):
        raise KeyboardInterrupt

    monkeypatch.setattr(Evaluator, "evaluate", interrupted)
    assert main(["resume", str(exp)]) == 130
    after = snapshot(exp)
    assert {k: v for k, v in before.items() if k in after} == before  # nothing the resume found was lost
    assert set(after) - set(before) <= {"model_spec.json", "progress.json", "baseline", "baseline/log.txt"}


def test_a_failed_new_run_removes_only_its_own_files(tiny_dir, data_dir, tmp_path, monkeypatch, capsys):
    """The user made the (empty) folder; the baseline fails: acf removes what it wrote and leaves the folder."""
    from agentic_compression.evaluation import Evaluator

    out = tmp_path / "out"
    (out / "exp").mkdir(parents=True)

    def fails(self, checkpoint):
        from agentic_compression.evaluation import EvaluationError

        (out / "exp" / "late-user-file.txt").write_text("written by the user during the run")
        raise EvaluationError("evaluation process failed (exit 1):\nRuntimeError: boom")

    monkeypatch.setattr(Evaluator, "evaluate", fails)
    code = main(["run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
                 "--experiment", "exp", "--limit", "8", "--ppl-tokens", "256"])
    err = capsys.readouterr().err
    assert code == 2 and "could not be measured: RuntimeError: boom" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "exp").iterdir()) == ["late-user-file.txt"]


# ---- the HumanEval sandbox ----
@pytest.fixture
def sandbox():
    from agentic_compression.evaluation import humaneval

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (setup.sh installs it): HumanEval reports itself unavailable")
    return humaneval.run_sandboxed


def test_sandbox_double_fork_leaves_no_process(sandbox):
    marker = f"{time.time_ns() % 10**9}.5"
    prog = ("import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
            f"        posix.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n    posix._exit(0)\ntime.sleep(0.5)\n")
    r = sandbox(prog, timeout_s=10)
    time.sleep(0.5)
    import psutil

    alive = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert r["passed"] and not alive, alive


def test_sandbox_cannot_reach_localhost(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(2)
    port = listener.getsockname()[1]
    try:
        r = sandbox(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    assert not r["passed"] and r["reason"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), r


def test_sandbox_output_is_capped():
    """300 MB on stderr: the evaluator's memory grows by less than 100 MB (measured in a fresh process)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    code = ("import resource\nfrom agentic_compression.evaluation.humaneval import run_sandboxed\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "r = run_sandboxed(\"import sys\\nfor _ in range(300):\\n    sys.stderr.write('x' * (1 << 20))\\n"
            "raise ValueError('end')\", timeout_s=60)\n"
            "print(r['reason'], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    reason, grew_mb = out.stdout.split()
    assert reason == "ValueError" and int(grew_mb) < 100, out.stdout + out.stderr[-2000:]


def test_sandbox_sees_no_user_file_and_cannot_signal_the_evaluator(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's data")
    home = Path.home() / ".acf-sandbox-probe"
    home.write_text("in the home folder")
    try:
        for path in (secret, home):
            r = sandbox(f"open({str(path)!r}).read()\n")
            assert not r["passed"] and r["reason"] in ("FileNotFoundError", "PermissionError"), r
            r = sandbox(f"open({str(path)!r}, 'w').write('overwritten')\n")
            assert not r["passed"], r
        r = sandbox(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
        assert not r["passed"] and r["reason"] in ("ProcessLookupError", "PermissionError"), r
        assert secret.read_text() == "the user's data" and home.read_text() == "in the home folder"
    finally:
        home.unlink()


def test_sandbox_posix_system_and_temp_files_leave_nothing(sandbox):
    tag = f"acf-probe-{time.time_ns()}"
    prog = (f"import posix\nassert posix.system('echo x > /tmp/{tag}-sh') == 0\n"
            f"open('/tmp/{tag}', 'w').write('x')\nopen('/dev/shm/{tag}', 'w').write('x')\n")
    assert sandbox(prog)["passed"]  # it may write its own scratch space, which vanishes with it
    assert not any(Path(d, f"{tag}{s}").exists() for d in ("/tmp", "/dev/shm") for s in ("", "-sh"))


FORK_BOMB = ("import os, sys, time\nn = 0\ntry:\n    for _ in range(400):\n        if os.fork() == 0:\n"
             "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
             "    sys.exit(0 if n < 100 else 3)\nsys.exit(4)\n")  # exit 0: a fork was refused below 100


@pytest.mark.parametrize("cap", ["pids cgroup", "RLIMIT_NPROC", "a cgroup that refuses the process"])
def test_sandbox_caps_its_processes(sandbox, monkeypatch, tmp_path, cap):
    """A fork loop is refused a process well before 100 (PIDS_MAX = 64), by the pids cgroup where one can be made
    and by RLIMIT_NPROC otherwise (root runs the sandbox as nobody for it), also when the cgroup refuses the
    process at its start."""
    from agentic_compression.evaluation import humaneval

    if cap == "pids cgroup":
        made = humaneval._pids_cgroup()
        if made is None:
            pytest.skip("this process may not make a pids cgroup here: the RLIMIT_NPROC case covers the cap")
        made.rmdir()
    if cap == "RLIMIT_NPROC":
        monkeypatch.setattr(humaneval, "_pids_cgroup", lambda: None)
    if cap == "a cgroup that refuses the process":
        monkeypatch.setattr(humaneval, "_pids_cgroup", lambda: tmp_path / "no-such-cgroup")
    r = sandbox(FORK_BOMB, timeout_s=20)
    assert r == {"passed": True, "reason": "passed"}, r


def test_sandbox_root_and_dev_are_read_only_and_its_scratch_space_is_capped(sandbox):
    """Files written to / or /dev fail (read-only), and 70 MB in /tmp or /dev/shm fail (64 MB tmpfs): nothing a
    completion writes grows the host's memory without bound."""
    for path in ("/x", "/dev/x", "/usr/x"):
        r = sandbox(f"open({path!r}, 'w').write('x')\n")
        assert not r["passed"] and r["reason"] in ("OSError", "PermissionError"), (path, r)
    for d in ("/tmp", "/dev/shm", "/sandbox"):
        r = sandbox(f"f = open('{d}/big', 'wb')\nfor _ in range(70):\n    f.write(b'x' * (1 << 20))\n    f.flush()\n")
        assert not r["passed"] and r["reason"] == "OSError", (d, r)


def test_sandbox_reason_never_carries_file_contents(sandbox):
    r = sandbox("raise AssertionError(open('/usr/lib/os-release').read() + 'SECRET-CONTENT-4242')\n")
    assert r == {"passed": False, "reason": "AssertionError"}


def test_without_bwrap_humaneval_is_unavailable_not_weaker(monkeypatch, world, capsys):
    from agentic_compression.evaluation import humaneval

    monkeypatch.setattr(humaneval.shutil, "which", lambda name: None)
    humaneval.sandbox_check.cache_clear()
    try:
        with pytest.raises(humaneval.SandboxUnavailable, match="bubblewrap"):
            humaneval.run_sandboxed("pass\n")
        before = snapshot(world.root)
        assert main(run_args(world, "--dataset", "humaneval")) == 2
        err = capsys.readouterr().err
        assert "HumanEval is unavailable" in err and "bubblewrap" in err and snapshot(world.root) == before
    finally:
        humaneval.sandbox_check.cache_clear()


# ---- a hostile LLM endpoint ----
@pytest.fixture(scope="module")
def view(tiny_dir):
    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.methods import available_methods
    from agentic_compression.policies import PolicyView

    avail = available_methods()
    return PolicyView(spec=infer_spec("tiny", tiny_dir, online=False),
                      model_config=json.loads((tiny_dir / "config.json").read_text()), methods=avail, baseline=None,
                      frontier=[], history=[], tried=set(), episodes_left=5, seconds_left=600, overrides={})


def _policy(url, **kw):
    from agentic_compression.config import LLMSettings
    from agentic_compression.policies.llm import LLMPolicy

    return LLMPolicy(LLMSettings(**{"model": "m", "base_url": url, "mode": "prompt", "timeout_s": 5,
                                    "http_retries": 1, "backoff_s": 0.01, "retries": 1, **kw}))


def test_llm_key_echoed_by_the_endpoint_is_never_stored(view, monkeypatch):
    from test_llm import Script

    secret = "sk-acf-echo-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in secret)
    srv = Script([(200, f'{{"action": "quantization", "method": "{secret}", "reasoning": "{secret}"}}', 0),
                  (200, '{"action": "quantization", "method": "rtn", "params": {"scheme": "W8A16", "group_size": 32},'
                        f' "reasoning": "you sent Bearer {secret} and {escaped}"}}', 0)])
    try:
        st = _policy(srv.url).decide(view)
    finally:
        srv.close()
    assert st.policy == "llm" and st.steps[0].method == "rtn"
    stored = json.dumps(st.model_dump())
    assert secret not in stored and escaped not in stored and "***" in st.reasoning
    assert "unknown method '***'" in st.meta["attempts"][0]["error"]
    # the answer as stored: its escapes decoded before the scrub, so nothing that decodes to the key is kept
    assert all(escaped not in a["raw"] and secret not in a["raw"] for a in st.meta["attempts"])


def _decide_timed(view, srv, **kw):
    """The LLM policy's decision against ``srv`` (closed after), and the seconds it took."""
    try:
        t = time.monotonic()
        st = _policy(srv.url, **kw).decide(view)
        return st, time.monotonic() - t
    finally:
        srv.close()


class _Raw:
    """An HTTP endpoint that answers every request with ``head`` then ``body``, ``per_byte`` seconds a byte."""

    def __init__(self, body: bytes, per_byte: float = 0.0, length: int | None = None):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(body) if length is None else length}\r\n\r\n").encode()

        def serve():
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        def answer(conn):
            try:
                got = b""
                while b"\r\n\r\n" not in got:  # the whole request first: unread bytes would reset the connection
                    got += conn.recv(65536)
                heads, rest = got.split(b"\r\n\r\n", 1)
                need = int(next((x.split(b":")[1] for x in heads.split(b"\r\n")
                                 if x.lower().startswith(b"content-length:")), b"0"))
                while len(rest) < need:
                    rest += conn.recv(65536)
                conn.sendall(head)
                if per_byte:
                    for b in body:
                        conn.sendall(bytes([b]))
                        time.sleep(per_byte)
                else:
                    conn.sendall(body)
            except OSError:
                pass
            finally:
                conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("body,per_byte,length,says", [
    (b'{"choices":' + b"[" * 200_000, 0.0, None, "RecursionError"),  # the parser's stack
    (b"x" * 1_000, 1.0, 1_000_000, "no complete answer within"),       # a byte a second: one deadline a request
    (b" " * 3_000_000, 0.0, None, "over 1,000,000 bytes"),              # the body cap, enforced while reading
], ids=["recursion", "trickle", "huge"])
def test_a_hostile_http_answer_is_an_endpoint_failure_then_the_fallback(view, body, per_byte, length, says):
    """Whatever the transport or its parser raises is an endpoint failure: recorded, retried, then the rule policy
    decides, within the request's deadline; the run never sees the exception."""
    st, took = _decide_timed(view, _Raw(body, per_byte, length), timeout_s=2, http_retries=1)
    assert st.policy == "rule" and says in st.meta["fallback_reason"], st.meta
    assert len(st.meta["http_failures"]) == 2 and took < 15, (took, st.meta)


def test_llm_retry_after_is_capped_and_every_attempt_recorded(view):
    from test_llm import Script

    srv = Script([(429, "slow down", 0, {"retry-after": "86400"}), (500, "oops", 0),
                  (200, '{"action": "end", "reasoning": "done"}', 0)])
    st, took = _decide_timed(view, srv, http_retries=2, timeout_s=1.5)
    assert took < 10 and st.action == "end" and st.policy == "llm"
    fails = st.meta["http_failures"]
    assert [f["status"] for f in fails] == [429, 500] and fails[0]["waited_s"] <= 1.5, fails


def test_llm_timeouts_are_recorded(view):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        st = _policy(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout_s=0.3, http_retries=1).decide(view)
    finally:
        listener.close()
    assert st.policy == "rule" and len(st.meta["http_failures"]) == 2
    assert all("Timeout" in f["http_error"] for f in st.meta["http_failures"])


@pytest.mark.parametrize("answer", ['{"a":' * 100_000 + "1" + "}" * 100_000, "[" * 50_000 + "]" * 50_000,
                                   '{"action": "end", "reasoning": "' + "x" * 200_000 + '"}'])
def test_llm_hostile_answers_are_refused_not_crashing(answer):
    from agentic_compression.policies.llm import DecisionError, parse

    with pytest.raises(DecisionError, match="nests|characters"):
        parse(answer)


def test_llm_retry_after_respects_the_remaining_budget(view):
    import dataclasses

    from test_llm import Script

    srv = Script([(503, "busy", 0, {"retry-after": "30"}), (200, '{"action": "end"}', 0)])
    try:
        t = time.monotonic()
        st = _policy(srv.url, http_retries=1, timeout_s=30, max_wait_s=60).decide(
            dataclasses.replace(view, seconds_left=1.0))
        took = time.monotonic() - t
    finally:
        srv.close()
    assert took < 8 and st.meta["http_failures"][0]["waited_s"] <= 1.0, (took, st.meta)


def test_ray_processes_are_reaped_only_when_their_run_is_gone(tmp_path):
    """The embedded cluster's list (episodes.RAY_PROCESSES): a crashed run's survivors are killed; a live run's
    cluster is left alone (two runs in one output folder); a pid now held by another program is never touched."""
    import psutil

    from agentic_compression.loop import episodes

    def start():
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ray::probe"])

    def entry(p, shift=0.0):
        return {"pid": p.pid, "started": psutil.Process(p.pid).create_time() + shift}

    def listed(folder, driver, procs):
        folder.mkdir()
        (folder / episodes.RAY_PROCESSES).write_text(json.dumps({"driver": driver, "processes": procs}))
        return folder

    crashed_driver, alive_driver = start(), start()
    survivor, stranger, concurrent = start(), start(), start()
    gone = entry(crashed_driver)
    crashed_driver.kill()
    crashed_driver.wait()
    try:
        crashed = listed(tmp_path / "crashed", gone, [entry(survivor), entry(stranger, 5.0)])  # a pid reused
        live = listed(tmp_path / "live", entry(alive_driver), [entry(concurrent)])
        assert episodes.reap(live) == 0 and concurrent.poll() is None and (live / episodes.RAY_PROCESSES).exists()
        assert episodes.reap(crashed) == 1 and not (crashed / episodes.RAY_PROCESSES).exists()
        survivor.wait(timeout=10)
        assert stranger.poll() is None  # its start time differs: another program's
        assert episodes.reap(live, own=True) == 1  # a run's own list at its end
        concurrent.wait(timeout=10)
    finally:
        for p in (alive_driver, survivor, stranger, concurrent):
            p.kill()
            p.wait()
