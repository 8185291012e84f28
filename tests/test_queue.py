"""Experiments on Celery workers over a real Redis: the API dispatches, a worker runs it, and a worker killed with
SIGKILL mid-experiment does not lose it: the message is delivered again and another worker resumes the folder."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from agentic_compression.service.api import create_app

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="Debian redis-server is not installed (setup.sh installs it)")
TOKEN = "queue-test-token"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    port = _port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def _worker(url, log):
    env = {**os.environ, "ACF_BROKER_URL": url, "ACF_VISIBILITY_TIMEOUT": "5", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "agentic_compression.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_worker_loses_no_experiment(redis_url, tiny_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    first = _worker(redis_url, logs[0])
    second = None
    try:
        with TestClient(create_app(out, data_dir, TOKEN, broker=redis_url, models_dir=tiny_dir.parent)) as client:
            client.headers["Authorization"] = f"Bearer {TOKEN}"
            body = {"model": tiny_dir.name, "experiment": "q", "force": True, "max_episodes": 2, "patience": 5,
                    "limit": 8, "ppl_tokens": 256, "repeats": 2, "threads": 1}
            assert client.post("/experiments", json=body).status_code == 202
            assert client.get("/experiments/q").json()["status"] in ("queued", "running")
            deadline = time.monotonic() + 600
            while not (out / "q" / "episode_000" / "strategy.json").exists():  # the worker is mid-experiment
                assert first.poll() is None and time.monotonic() < deadline, open(tmp_path / "worker0.log").read()
                time.sleep(0.2)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            assert not client.get("/experiments/q").json()["status"] == "complete"
            second = _worker(redis_url, logs[1])
            while client.get("/experiments/q").json()["status"] != "complete":
                assert second.poll() is None and time.monotonic() < deadline, open(tmp_path / "worker1.log").read()
                time.sleep(0.5)
            st = client.get("/experiments/q").json()
            assert st["episodes_run"] == 2 and st["termination_reason"].startswith("max_episodes")
            final = client.get("/experiments/q/files/final_results.json").json()
            assert [e["episode_id"] for e in final["episodes"]] == ["episode_000", "episode_001"]
            assert "acf.run_experiment" in open(tmp_path / "worker1.log").read()  # the second worker finished it
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs:
            f.close()
