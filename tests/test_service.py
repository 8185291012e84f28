"""The REST API end to end on a tiny model, in-process (the embedded default): auth, validation, path safety,
progress, artifacts, checkpoint download, cancel."""
import io
import json
import tarfile
import time

import pytest
from fastapi.testclient import TestClient

from agentic_compression.loop.pareto import bounds, dominates, to_min
from agentic_compression.schemas import OBJECTIVES
from agentic_compression.service.api import TOKEN_FILE, create_app, token

TOKEN = "test-token-0123456789"


@pytest.fixture
def client(tmp_path, data_dir, tiny_dir):
    with TestClient(create_app(tmp_path / "out", data_dir, TOKEN, models_dir=tiny_dir.parent)) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def _wait(client, name, done=("complete", "cancelled", "failed"), timeout=600):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        st = client.get(f"/experiments/{name}").json()
        if st["status"] in done:
            return st
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish: {st}")


def _fast(tiny_dir, name, **kw):
    return {"model": tiny_dir.name, "experiment": name, "force": True, "limit": 8, "ppl_tokens": 256, "repeats": 2,
            "threads": 1, **kw}


def test_unauthorized_and_malformed_requests(client, tiny_dir):
    anon = TestClient(client.app)
    assert anon.get("/experiments").status_code == 401
    assert anon.get("/experiments", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/experiments").json() == []
    bad = [{**_fast(tiny_dir, "x"), "max_episodes": 0}, {**_fast(tiny_dir, "../escape")},
           {**_fast(tiny_dir, "x"), "data_dir": "/etc"}, {"experiment": "x"}]
    for body in bad:
        assert client.post("/experiments", json=body).status_code == 422, body
    assert client.post("/experiments", json=_fast(tiny_dir, "x", benchmarks="imagenet")).status_code == 400
    assert client.get("/experiments/..%2F..%2Fetc").status_code == 404
    assert client.get("/docs").status_code == 200 and "/experiments" in client.get("/openapi.json").json()["paths"]


def test_submit_follow_fetch_download_and_cancel(client, tiny_dir):
    r = client.post("/experiments", json=_fast(tiny_dir, "one", max_episodes=1))
    assert r.status_code == 202
    st = _wait(client, "one")
    assert st["status"] == "complete" and st["episodes_run"] == 1 and st["progress"]["node"] == "done", st
    assert set(st["pareto_frontier"]) <= {"baseline", "episode_000"}, st
    frontier = client.get("/experiments/one/files/pareto_frontier.json").json()
    final = client.get("/experiments/one/files/final_results.json").json()
    assert final["complete"] and [s["episode_id"] for s in frontier["solutions"]] == st["pareto_frontier"]
    assert st["hypervolume"] == pytest.approx(frontier["hypervolume"]) and st["hypervolume"] > 0
    if "baseline" not in st["pareto_frontier"]:  # on a random tiny model an episode can beat it everywhere
        tol = tuple(frontier["noise_tolerance"][k] for k in OBJECTIVES)
        base = {k: final["baseline"][k] for k in OBJECTIVES}
        ep = final["episodes"][0]  # within the tolerance, or the intervals where measured (paired latency)
        assert dominates(to_min(ep["objectives"]), to_min(base), tol, bounds(ep["intervals"]),
                         bounds(final["baseline"]["intervals"])), (final["episodes"], base)
    page = client.get("/experiments/one/files/pareto_visualization.html")
    assert page.status_code == 200 and "Plotly" in page.text
    assert client.get("/experiments/one/files/episode_000/results.json").json()["episode_id"] == "episode_000"
    for escape in ("../one/config.json", "../../etc/passwd", "episode_000/checkpoint/config.json"):
        assert client.get(f"/experiments/one/files/{escape}").status_code == 404, escape
    tgz = client.get("/experiments/one/checkpoints/episode_000")
    if json.loads(client.get("/experiments/one/files/episode_000/results.json").text)["status"] == "success":
        names = tarfile.open(fileobj=io.BytesIO(tgz.content)).getnames()
        assert "one-episode_000/config.json" in names
    assert client.get("/experiments/one/checkpoints/episode_999").status_code == 404

    client.post("/experiments", json=_fast(tiny_dir, "two", max_episodes=20, patience=20))
    assert client.post("/experiments/two/cancel").status_code == 202
    st = _wait(client, "two")
    assert st["status"] == "cancelled" and st["episodes_run"] < 20, st
    assert {e["name"] for e in client.get("/experiments").json()} == {"one", "two"}
    assert client.post("/experiments/one/resume").status_code == 409  # finished: nothing to resume


def test_token_is_generated_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("ACF_API_TOKEN", raising=False)
    first = token(tmp_path)
    assert token(tmp_path) == first and len(first) >= 32
    assert (tmp_path / TOKEN_FILE).stat().st_mode & 0o077 == 0
    monkeypatch.setenv("ACF_API_TOKEN", "configured")
    assert token(tmp_path) == "configured"
