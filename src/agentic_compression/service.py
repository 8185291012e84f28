"""The REST API (`acf serve`): submit, list, inspect, fetch artifacts, download a checkpoint, cancel.

Experiments run in this process, one at a time, on a background thread (the embedded default), or, when
ACF_BROKER_URL names a Redis broker, as Celery tasks on `acf worker` processes (tasks.py). Every request needs the bearer token: ACF_API_TOKEN, or one generated at first
start, printed, and kept (mode 0600) in the output folder. Requests name experiments, never paths: names are
checked against a pattern and every file served is resolved inside the output folder. The data folder and the
text sources are the server's, not the request's. OpenAPI docs at /docs.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .config import EvalSettings, RunConfig
from .errors import UserError
from .experiment import CANCEL, PROGRESS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
TOKEN_FILE = ".api-token"


class RunRequest(BaseModel):
    """What a client may set: the same options as `acf run`, minus anything that names a path on the server."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="'smollm2-135m', or a model folder / Hub id the server can read")
    experiment: str = Field(pattern=NAME.pattern)
    benchmarks: str = "hellaswag"
    max_episodes: int = Field(default=10, gt=0, le=1000)
    budget_hours: float = Field(default=4.0, gt=0)
    patience: int = Field(default=5, gt=0)
    policy: str = "rule"
    limit: int = Field(default=100, gt=0)
    ppl_tokens: int = Field(default=4096, gt=64)
    repeats: int = Field(default=5, gt=0)
    threads: int | None = Field(default=None, gt=0)
    device: Literal["cpu", "cuda"] = "cpu"
    seed: int = 1234
    method_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


def token(output_dir: Path) -> str:
    """ACF_API_TOKEN, else the token kept in the output folder, else a new one (written with mode 0600)."""
    if env := os.environ.get("ACF_API_TOKEN"):
        return env
    path = output_dir / TOKEN_FILE
    if path.is_file():
        return path.read_text().strip()
    output_dir.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new)
    print(f"acf serve: generated API token (kept in {path}): {new}", flush=True)
    return new


def create_app(output_dir: Path, data_dir: Path, api_token: str, broker: str | None = None) -> FastAPI:
    """``broker``: a Redis URL to run experiments on Celery workers (`acf worker`); None runs them in-process."""
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="acf", description="Agentic Compression Framework: experiments over HTTP")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acf-experiment")
    errors: dict[str, str] = {}
    running: set[str] = set()
    lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False)

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not secrets.compare_digest(cred.credentials.encode(), api_token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def folder(name: str) -> Path:
        path = (output_dir / name).resolve()
        if not NAME.match(name) or path.parent != output_dir or not (path / "config.json").is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment '{name}'")
        return path

    def read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def state(path: Path) -> dict:
        final, progress = read(path / "final_results.json"), read(path / PROGRESS) or {}
        if path.name in errors:
            st = "failed"
        elif final and final.get("complete"):
            st = "cancelled" if final.get("termination_reason") == "cancelled by request" else "complete"
        elif broker:
            st = "running" if (path / PROGRESS).is_file() else "queued"
        else:
            st = "running" if path.name in running else "stopped"
        return {"name": path.name, "status": st, "progress": progress, "error": errors.get(path.name),
                "episodes_run": final.get("episodes_run") if final else 0,
                "max_episodes": (read(path / "config.json") or {}).get("max_episodes"),
                "pareto_frontier": final.get("pareto_frontier") if final else [],
                "balanced": final.get("balanced") if final else None,
                "hypervolume": (final.get("hypervolume_history") or [{}])[-1].get("hypervolume") if final else None,
                "termination_reason": final.get("termination_reason") if final else None}

    def dispatch(exp_dir: Path) -> None:
        from .tasks import app as celery_app, run_experiment

        celery_app.conf.broker_url = broker
        run_experiment.delay(str(exp_dir))

    def execute(name: str, job) -> None:
        try:
            job()
        except Exception as e:  # recorded for the API; the folder keeps what was written
            errors[name] = f"{type(e).__name__}: {e}"
        finally:
            with lock:
                running.discard(name)

    @app.post("/experiments", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(auth)])
    def submit(req: RunRequest) -> dict:
        from .experiment import Experiment

        try:
            cfg = RunConfig(model=req.model, dataset=req.benchmarks, data_dir=data_dir, output_dir=output_dir,
                            experiment=req.experiment, max_episodes=req.max_episodes, budget_hours=req.budget_hours,
                            patience=req.patience, policy=req.policy, threads=req.threads,
                            method_overrides=req.method_overrides,
                            eval=EvalSettings(benchmark=req.benchmarks, limit=req.limit, ppl_tokens=req.ppl_tokens,
                                              repeats=req.repeats, threads=req.threads, device=req.device,
                                              seed=req.seed))
            with lock:
                if req.experiment in running:
                    raise UserError(f"experiment '{req.experiment}' is running", "choose another name")
                exp = Experiment(cfg)
                if not broker:
                    running.add(exp.dir.name)
        except UserError as e:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from None
        except ValueError as e:  # pydantic
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
        if broker:  # a worker resumes the folder from its config.json
            dispatch(exp.dir)
        else:
            pool.submit(execute, exp.dir.name, exp.run)
        return {"name": exp.dir.name, "status": "queued"}

    @app.get("/experiments", dependencies=[Depends(auth)])
    def list_all() -> list[dict]:
        return [state(p) for p in sorted(output_dir.iterdir()) if (p / "config.json").is_file()]

    @app.get("/experiments/{name}", dependencies=[Depends(auth)])
    def inspect(name: str) -> dict:
        return state(folder(name))

    @app.get("/experiments/{name}/files/{path:path}", dependencies=[Depends(auth)])
    def artifact(name: str, path: str) -> FileResponse:
        """pareto_frontier.json, final_results.json, pareto_visualization.html, episode_NNN/results.json, ..."""
        root = folder(name)
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file() or "checkpoint" in target.relative_to(root).parts:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact '{path}' in '{name}'")
        return FileResponse(target)

    @app.get("/experiments/{name}/checkpoints/{episode}", dependencies=[Depends(auth)])
    def checkpoint(name: str, episode: str) -> StreamingResponse:
        root = folder(name)
        if not re.fullmatch(r"episode_\d{3}", episode) or not (root / episode / "checkpoint").is_dir():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no checkpoint for '{episode}' in '{name}'")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(root / episode / "checkpoint", arcname=f"{name}-{episode}")
        buf.seek(0)
        return StreamingResponse(buf, media_type="application/gzip", headers={
            "Content-Disposition": f'attachment; filename="{name}-{episode}.tar.gz"'})

    @app.post("/experiments/{name}/resume", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(auth)])
    def resume(name: str) -> dict:
        """Continue an experiment that stopped before finishing (a crash, a restart of the server)."""
        from .experiment import Experiment

        root = folder(name)
        with lock:
            if name in running or state(root)["status"] in ("complete", "cancelled"):
                raise HTTPException(status.HTTP_409_CONFLICT, f"experiment '{name}' is running or finished")
            errors.pop(name, None)
            if broker:
                dispatch(root)
                return {"name": name, "status": "queued"}
            running.add(name)
        pool.submit(execute, name, lambda: Experiment.resume(root))
        return {"name": name, "status": "queued"}

    @app.post("/experiments/{name}/cancel", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(auth)])
    def cancel(name: str) -> dict:
        root = folder(name)
        (root / CANCEL).touch()
        return {"name": name, "status": "cancelling", "note": "the loop stops at its next decision"}

    return app


def serve(output_dir: Path, data_dir: Path, host: str, port: int) -> None:
    import uvicorn

    from .tasks import broker_url

    uvicorn.run(create_app(output_dir, data_dir, token(output_dir), broker_url()), host=host, port=port)
