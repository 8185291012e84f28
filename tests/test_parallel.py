"""Parallel episodes on a local Ray cluster (episodes.py), on the tiny config-built llama: two episodes at once, a
worker killed mid-episode, the driver killed and resumed."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_loop import Scripted

from agentic_compression.config import RunConfig
from agentic_compression.loop.experiment import Experiment
from agentic_compression.schemas import Step

pytest.importorskip("ray")

W8 = Step(method="rtn", params={"scheme": "W8A16", "group_size": 32})
W4 = Step(method="rtn", params={"scheme": "W4A16", "group_size": 32})


def _run(tiny_dir, data_dir, out, fast_eval, name, parallel, **kw):
    cfg = RunConfig(model=str(tiny_dir), data_dir=data_dir, output_dir=out, experiment=name, eval=fast_eval,
                    presets=False, threads=1, force=True, max_episodes=2, patience=9, parallel=parallel,
                    use_skills=False, **kw)
    exp = Experiment(cfg)
    exp.policy = Scripted([W8, W4])
    return exp.run()


def _results(exp_dir):
    return [json.loads((d / "results.json").read_text()) for d in sorted(exp_dir.glob("episode_*"))]


def _span(r):
    return datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])


@pytest.mark.slow
def test_two_episodes_overlap_and_record_what_one_at_a_time_records(tiny_dir, data_dir, tmp_path, fast_eval):
    two = _run(tiny_dir, data_dir, tmp_path, fast_eval, "k2", 2)
    ran = _results(tmp_path / "k2")
    assert [r["status"] for r in ran] == ["success", "success"]
    (s0, e0), (s1, e1) = _span(ran[0]), _span(ran[1])
    assert max(s0, s1) < min(e0, e1), "the two episodes did not run at the same time"
    assert ran[0]["worker"]["pid"] != ran[1]["worker"]["pid"]
    assert [r["worker"]["attempt"] for r in ran] == [1, 1]
    # one at a time, the same strategies measured from the evaluation cache (the same checkpoints, byte for byte):
    # the driver records a batch in episode order exactly as it records one episode
    one = _run(tiny_dir, data_dir, tmp_path, fast_eval, "k1", 1)
    for key in ("pareto_frontier", "hypervolume_history", "balanced", "termination_reason"):
        assert two[key] == one[key], key
    for a, b in zip(two["episodes"], one["episodes"]):
        assert (a["steps"], a["objectives"], a["intervals"]) == (b["steps"], b["objectives"], b["intervals"])
    assert [r["entered_frontier"] for r in ran] == [r["entered_frontier"] for r in _results(tmp_path / "k1")]


@pytest.mark.slow
def test_a_killed_worker_reruns_its_episode_and_one_killed_too_often_fails(tiny_dir, data_dir, tmp_path, fast_eval):
    kills: dict[str, list[int]] = {"episode_000": [], "episode_001": []}
    want = {"episode_000": 1, "episode_001": 2}  # --episode-retries 1: one kill is survived, two are not
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            for ep, pids in kills.items():
                f = tmp_path / "exp" / ep / "attempts.jsonl"
                lines = f.read_text().splitlines() if f.is_file() else []
                if len(pids) < want[ep] and len(lines) > len(pids):
                    pid = json.loads(lines[-1])["pid"]
                    os.kill(pid, signal.SIGKILL)  # mid-episode: it has just started
                    pids.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        final = _run(tiny_dir, data_dir, tmp_path, fast_eval, "exp", 2, episode_retries=1)
    finally:
        stop.set()
        t.join()
    assert final["complete"] and [len(p) for p in kills.values()] == [1, 2]
    survived, failed = _results(tmp_path / "exp")
    assert survived["status"] == "success" and survived["worker"]["attempt"] == 2
    assert survived["worker"]["pid"] not in kills["episode_000"]
    assert failed["status"] == "failed" and "after 1 retries" in failed["error"] and "Worker" in failed["error"]
    assert final["pareto_frontier"] and "episode_001" not in final["pareto_frontier"]


def _alive(listed: list[dict]) -> list[int]:
    import psutil

    out = []
    for p in listed:
        try:
            if abs(psutil.Process(p["pid"]).create_time() - p["started"]) < 1e-3:
                out.append(p["pid"])
        except psutil.Error:
            pass
    return out


def _listening(listed: list[dict]) -> set[str]:
    """The addresses the listed processes accept connections on."""
    import psutil

    ips = set()
    for pid in _alive(listed):
        try:
            ips |= {c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return ips


def _acf(*args):
    return [sys.executable, "-m", "agentic_compression.cli", *args]


@pytest.mark.slow
def test_the_driver_killed_mid_batch_then_resumed_loses_and_repeats_nothing(tiny_dir, data_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACF_SKILLS": str(tmp_path / "skills.sqlite")}
    out, exp = tmp_path / "out", tmp_path / "out" / "exp"
    run = _acf("run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
               "--experiment", "exp", "--max-episodes", "4", "--patience", "9", "--limit", "8", "--ppl-tokens", "256",
               "--repeats", "2", "--threads", "1", "--force", "--parallel", "2", "--policy", "random")
    proc = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(exp.glob("episode_00[01]/outcome.json")):  # one episode of the first batch has finished
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cluster = json.loads((exp / "ray_processes.json").read_text())["processes"]
        listening = _listening(cluster)
        proc.kill()  # the driver only: Ray's workers die with it, its agents outlive it
        proc.wait()
        time.sleep(2)
        kept = {p.parent.name: json.loads(p.read_text()) for p in exp.glob("episode_*/outcome.json")}
        assert not list(exp.glob("episode_*/results.json"))
        # the embedded cluster listened on the loopback only
        assert listening and all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in listening), listening

        done = subprocess.run(_acf("resume", str(exp)), env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        # what the killed run's cluster left was reaped by the resume, and the resume's own cluster when it ended
        assert not _alive(cluster) and not (exp / "ray_processes.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failed assertion left
    final = json.loads((exp / "final_results.json").read_text())
    assert final["complete"] and final["episodes_run"] == 4
    results = _results(exp)
    assert [r["episode_id"] for r in results] == [f"episode_00{i}" for i in range(4)]
    assert len({json.dumps(r["strategy"]["steps"], sort_keys=True) for r in results}) == 4  # nothing repeated
    for name, outcome in kept.items():  # a task that had finished is recorded, not run again
        r = next(r for r in results if r["episode_id"] == name)
        assert r["started_at"] == outcome["compress_info"]["started_at"] and r["worker"]["attempt"] == 1
    rerun = [r for r in results[:2] if r["episode_id"] not in kept]
    assert all(r["worker"]["attempt"] == 2 for r in rerun)  # in flight when the driver died: run once more
    assert [h["after"] for h in final["hypervolume_history"]] == ["baseline", *(r["episode_id"] for r in results)]


@pytest.mark.slow
def test_a_running_cluster_passes_the_address_check_and_a_token_it_lacks_is_named(monkeypatch, tmp_path):
    """--ray-address is joined in a child process before any work: a cluster started with `ray start --head` on
    this machine passes (with its token), and without the token the refusal says what is missing. Without
    --ray-address a run starts its own cluster, never joining the one `ray start` left (Ray's default would)."""
    from agentic_compression.errors import UserError
    from agentic_compression.loop import episodes
    from agentic_compression.loop.episodes import LOOPBACK_SWITCH
    from agentic_compression.loop.validation import ray_reachable

    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, LOOPBACK_SWITCH: "0"}
    subprocess.run([str(ray), "start", "--head", "--port", "6399", "--include-dashboard", "false", "--num-cpus", "1"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        ray_reachable("127.0.0.1:6399")
        monkeypatch.delenv("RAY_AUTH_MODE")
        with pytest.raises(UserError, match="asks for its authentication token"):
            ray_reachable("127.0.0.1:6399")
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        own = episodes.connect(None, tmp_path)
        try:
            assert not own.get_runtime_context().gcs_address.endswith(":6399")
            assert own.get(own.remote(lambda: 7).remote()) == 7
        finally:
            episodes.disconnect(tmp_path)
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=120)
