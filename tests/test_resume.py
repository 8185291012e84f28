"""Crash safety: `acf run` killed with SIGKILL in the middle of an episode, then `acf resume`, finishes the run;
finished episodes are kept byte for byte and the killed one is run again."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # every test runs an experiment and kills it


def _acf(*args):
    return [sys.executable, "-m", "agentic_compression.cli", *args]


@pytest.fixture
def cli_env(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ACF_SKILLS": str(tmp_path / "skills.sqlite")}


def test_kill_9_mid_episode_then_resume(tiny_dir, data_dir, tmp_path, cli_env):
    out = tmp_path / "out"
    run = _acf("run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
               "--experiment", "exp", "--max-episodes", "3", "--patience", "9", "--limit", "8", "--ppl-tokens", "256",
               "--repeats", "2", "--threads", "1", "--force")
    proc = subprocess.Popen(run, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    exp = out / "exp"
    try:
        deadline = time.monotonic() + 600
        while not (exp / "episode_001" / "strategy.json").exists():  # episode 1 is running
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = (exp / "episode_000" / "results.json").read_bytes()
    assert not (exp / "episode_001" / "results.json").exists()
    partial = json.loads((exp / "final_results.json").read_text())
    assert not partial["complete"] and partial["episodes_run"] == 1

    done = subprocess.run(_acf("resume", str(exp)), env=cli_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((exp / "final_results.json").read_text())
    assert final["complete"] and final["episodes_run"] == 3 and \
        final["termination_reason"].startswith("max_episodes"), (
        final["termination_reason"], [(e["episode_id"], e["status"], e["steps"]) for e in final["episodes"]])
    assert (exp / "episode_000" / "results.json").read_bytes() == first  # kept, not re-run
    ids = [e["episode_id"] for e in final["episodes"]]
    assert ids == ["episode_000", "episode_001", "episode_002"]
    assert len({json.dumps(e["steps"], sort_keys=True) for e in final["episodes"]}) == 3  # no repeat after resume
    assert [h["after"] for h in final["hypervolume_history"]] == ["baseline", *ids]

    again = subprocess.run(_acf("resume", str(exp)), env=cli_env, capture_output=True, text=True)
    assert again.returncode == 2 and "already finished" in again.stderr


class Crash(BaseException):
    """Stands in for the process dying: nothing in the loop catches it."""


def test_a_run_killed_in_evaluation_resumes_with_the_checkpoint_it_had_made(tiny_dir, data_dir, tmp_path, fast_eval,
                                                                              monkeypatch):
    from agentic_compression.config import RunConfig
    from agentic_compression.loop.experiment import Experiment

    cfg = RunConfig(model=str(tiny_dir), data_dir=data_dir, output_dir=tmp_path / "out", experiment="exp",
                    presets=False, eval=fast_eval, threads=1, force=True, max_episodes=2, patience=9)
    evaluation = Experiment.evaluation

    def dies_in_episode_1(self, state):
        if state["current_episode"] == 1:
            raise Crash
        return evaluation(self, state)

    monkeypatch.setattr(Experiment, "evaluation", dies_in_episode_1)
    with pytest.raises(Crash):
        Experiment(cfg).run()
    exp = tmp_path / "out" / "exp"
    made = exp / "episode_001" / "checkpoint"
    assert made.is_dir() and not (exp / "episode_001" / "results.json").exists()
    strategy = json.loads((exp / "episode_001" / "strategy.json").read_text())

    monkeypatch.setattr(Experiment, "evaluation", evaluation)
    final = Experiment.resume(exp)
    assert final["complete"] and final["episodes_run"] == 2, final["termination_reason"]
    second = final["episodes"][1]
    assert second["status"] == "success", second["error"]  # evaluated the checkpoint the killed run had made
    assert second["steps"] == strategy["steps"]


def test_a_run_killed_while_finishing_resumes_to_complete(tiny_dir, data_dir, tmp_path, fast_eval, monkeypatch):
    """The loop had ended but the report was not written: resume finishes it without running an episode again."""
    from agentic_compression.config import RunConfig
    from agentic_compression.loop import experiment
    from agentic_compression.loop.experiment import Experiment

    cfg = RunConfig(model=str(tiny_dir), data_dir=data_dir, output_dir=tmp_path / "out", experiment="exp",
                    presets=False, eval=fast_eval, threads=1, force=True, max_episodes=1)

    def dies(exp_dir):
        raise Crash

    page = experiment.write_visualization
    monkeypatch.setattr(experiment, "write_visualization", dies)
    with pytest.raises(Crash):
        Experiment(cfg).run()
    exp = tmp_path / "out" / "exp"
    assert not json.loads((exp / "final_results.json").read_text())["complete"]
    first = (exp / "episode_000" / "results.json").read_bytes()

    monkeypatch.setattr(experiment, "write_visualization", page)
    final = Experiment.resume(exp)
    assert final["complete"] and final["episodes_run"] == 1 and final["termination_reason"].startswith("max_episodes")
    assert (exp / "episode_000" / "results.json").read_bytes() == first
    assert (exp / "pareto_visualization.html").is_file()
