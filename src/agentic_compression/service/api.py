"""The REST API (`acf serve`): submit, list, inspect, fetch artifacts, download a checkpoint, cancel.

Experiments run in this process, one at a time, on a background thread (the embedded default), or, when
ACF_BROKER_URL names a Redis broker, as Celery tasks on `acf worker` processes (tasks.py). Every request needs the
bearer token (ACF_API_TOKEN, or one generated at first start, printed, and kept with mode 0600 in the output
folder); it is checked before the body is read, and bodies over MAX_BODY bytes are refused (413). Requests name
experiments and models, never paths: names are checked against a pattern, models come from an allow-list (the
built-in aliases and the folders of the server's models directory), every file served is resolved inside the
output folder, and symbolic links out of it are neither followed, listed nor archived. The data folder and the
text sources are the server's, not the request's. A failed experiment stays listed as failed, with its error and
time (failed.json). OpenAPI docs at /docs.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from ..config import NAME, brief
from ..errors import UserError
from ..files import read_json
from ..loop.store import CANCEL, FAILED, PROGRESS, finished, record_failure
from ..models import ALIASES
from ..options import request_model

TOKEN_FILE = ".api-token"
MAX_BODY = 64 << 10  # bytes of a request body: a RunRequest is a few hundred
log = logging.getLogger("acf.service")


class Guard:
    """ASGI middleware in front of every route: the bearer token is checked before any of the body is read (401),
    then the body's size, declared or streamed (413)."""

    def __init__(self, app, api_token: str):
        self.app, self.token = app, api_token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        if not (given.startswith(b"Bearer ") and secrets.compare_digest(given[7:].strip(), self.token)):
            return await self._refuse(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            return await self._refuse(send, 413, f"request body over {MAX_BODY} bytes")
        seen = 0

        async def bounded():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > MAX_BODY:
                raise HTTPException(413, f"request body over {MAX_BODY} bytes")
            return msg

        try:
            await self.app(scope, bounded, send)
        except HTTPException as e:  # a streamed body past the limit
            if e.status_code != 413:
                raise
            await self._refuse(send, 413, e.detail)

    @staticmethod
    async def _refuse(send, code: int, detail: str, extra: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})


RunRequest = request_model()  # the options of `acf run` that name no path on the server (options.py)


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


TAR_CHUNKS = 8  # chunks of at most 1 MiB in flight per download: memory stays bounded whatever the checkpoint's size


def tar_stream(folder: Path, arcname: str):
    """``folder`` as an uncompressed tar (weights hardly compress), written by a thread into a bounded queue and
    yielded chunk by chunk as the client reads: files and folders only, no link is archived."""
    import queue
    import threading

    chunks: queue.Queue = queue.Queue(maxsize=TAR_CHUNKS)
    stop = threading.Event()

    class Sink:
        def write(self, b: bytes) -> int:
            for i in range(0, len(b), 1 << 20):
                while not stop.is_set():
                    try:
                        chunks.put(bytes(b[i:i + (1 << 20)]), timeout=1)
                        break
                    except queue.Full:
                        continue
            if stop.is_set():
                raise BrokenPipeError("the client went away")
            return len(b)

    def own(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return info if info.isfile() or info.isdir() else None

    def write() -> None:
        end: Exception | None = None
        try:
            with tarfile.open(fileobj=Sink(), mode="w|", bufsize=1 << 20) as tar:
                tar.add(folder, arcname=arcname, filter=own)
        except Exception as e:  # noqa: BLE001 - handed to the reader, which ends the response
            end = e
        while not stop.is_set():  # the reader is still there: tell it the tar ended (or how it failed)
            try:
                chunks.put(end, timeout=1)
                return
            except queue.Full:
                continue

    threading.Thread(target=write, daemon=True).start()
    try:
        while (item := chunks.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


def create_app(output_dir: Path, data_dir: Path, api_token: str, broker: str | None = None,
               models_dir: Path | None = None) -> FastAPI:
    """``broker``: a Redis URL to run experiments on Celery workers (`acf worker`); None runs them in-process.
    ``models_dir``: the folder whose subfolders clients may name as models (besides the built-in aliases)."""
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    models_dir = models_dir.resolve() if models_dir else None
    app = FastAPI(title="acf", description="Agentic Compression Framework: experiments over HTTP")
    app.add_middleware(Guard, api_token=api_token)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        """Which field is wrong and why, never the input echoed back (it may be huge, or not JSON-encodable)."""
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": [str(x) for x in err.get("loc", ())], "msg": str(err.get("msg", ""))[:200]}
            for err in e.errors()[:20]]})
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acf-experiment")
    errors: dict[str, str] = {}
    running: set[str] = set()
    lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False)

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not secrets.compare_digest(cred.credentials.encode(), api_token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def inside(path: Path) -> bool:
        """An experiment folder of ours: directly in the output folder, not a link, holding a config.json."""
        return (NAME.match(path.name) is not None and not path.is_symlink() and path.resolve().parent == output_dir
                and (path / "config.json").is_file() and not (path / "config.json").is_symlink())

    def folder(name: str) -> Path:
        path = output_dir / name
        if not NAME.match(name) or not inside(path):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment '{name}'")
        return path.resolve()

    def model_path(name: str) -> str:
        """The allow-list: an alias, or a folder of the models directory. Every refusal reads the same, so the
        answer never tells which folders exist on the server."""
        if name.lower() in ALIASES:
            return name
        if models_dir is not None and NAME.match(name):
            cand = models_dir / name
            if not cand.is_symlink() and cand.resolve().parent == models_dir and (cand / "config.json").is_file():
                return str(cand)
        raise UserError(f"model '{name}' is not one this server offers",
                        f"name one of: {', '.join(ALIASES)}, or a model folder in the server's models directory")

    def read(path: Path) -> dict | None:
        try:
            return read_json(path, "an artifact")
        except UserError:
            return None

    def state(path: Path) -> dict:
        final, progress = read(path / "final_results.json"), read(path / PROGRESS) or {}
        failure = read(path / FAILED)
        if path.name in errors or failure:
            st = "failed"
        elif final and final.get("complete"):
            st = "cancelled" if final.get("termination_reason") == "cancelled by request" else "complete"
        elif broker:
            st = "running" if (path / PROGRESS).is_file() else "queued"
        else:
            st = "running" if path.name in running else "stopped"
        return {"name": path.name, "status": st, "progress": progress,
                "error": errors.get(path.name) or (failure or {}).get("error"),
                "failed_at": (failure or {}).get("failed_at"),
                "episodes_run": final.get("episodes_run") if final else 0,
                "max_episodes": (read(path / "config.json") or {}).get("max_episodes"),
                "pareto_frontier": final.get("pareto_frontier") if final else [],
                "balanced": final.get("balanced") if final else None,
                "recommended": final.get("recommended") if final else None,
                "hypervolume": (final.get("hypervolume_history") or [{}])[-1].get("hypervolume") if final else None,
                "termination_reason": final.get("termination_reason") if final else None}

    def dispatch(exp_dir: Path) -> None:
        from .tasks import app as celery_app
        from .tasks import run_experiment

        with celery_app.connection_for_write(broker) as conn:  # this app's broker; Celery's global conf untouched
            run_experiment.apply_async((str(exp_dir),), connection=conn)

    def execute(name: str, job) -> None:
        try:
            job()
        except Exception as e:  # recorded in the folder (failed.json) and the log; the folder keeps what was written
            errors[name] = record_failure(output_dir / name, e)
            log.error("experiment %s failed: %s", name, errors[name])
        finally:
            with lock:
                running.discard(name)

    @app.post("/experiments", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(auth)])
    def submit(req: RunRequest) -> dict:
        """Checks the request (validation.py: cheap, nothing converted or loaded) and claims the folder with its
        config.json; the Experiment itself (model resolution, a GGUF conversion, the baseline) is built where it
        runs, a Celery worker or this server's pool, by resuming that folder, never in the request's thread."""
        from ..loop.experiment import Experiment
        from ..loop.store import ExperimentStore
        from ..loop.validation import validate

        try:
            cfg = req.to_config(model_path(req.model), data_dir, output_dir)
            with lock:
                if req.experiment in running:
                    raise UserError(f"experiment '{req.experiment}' is running", "choose another name")
                validate(cfg)
                store = ExperimentStore.create((output_dir / req.experiment).absolute())
                store.write_config(cfg)
                store.release()  # taken again, under the same lock file, by whoever runs it
                if not broker:
                    running.add(req.experiment)
        except UserError as e:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from None
        except ValidationError as e:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, brief(e)) from None
        if broker:
            dispatch(store.dir)
        else:  # the folder stays when the run fails: the API lists it as failed, with the error
            pool.submit(execute, req.experiment, lambda: Experiment.resume(store.dir))
        return {"name": req.experiment, "status": "queued"}

    @app.get("/experiments", dependencies=[Depends(auth)])
    def list_all() -> list[dict]:
        return [state(p) for p in sorted(output_dir.iterdir()) if inside(p)]

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
        ckpt = root / episode / "checkpoint"
        if (not re.fullmatch(r"episode_\d{3}", episode) or (root / episode).is_symlink() or ckpt.is_symlink()
                or not ckpt.is_dir() or not ckpt.resolve().is_relative_to(root)):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no checkpoint for '{episode}' in '{name}'")

        return StreamingResponse(tar_stream(ckpt, f"{name}-{episode}"), media_type="application/x-tar", headers={
            "Content-Disposition": f'attachment; filename="{name}-{episode}.tar"'})

    @app.post("/experiments/{name}/resume", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(auth)])
    def resume(name: str) -> dict:
        """Continue an experiment that stopped before finishing (a crash, a restart of the server)."""
        from ..loop.experiment import Experiment

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
        if finished(root) or read(root / FAILED):
            raise HTTPException(status.HTTP_409_CONFLICT, f"experiment '{name}' has already ended")
        (root / CANCEL).touch()
        return {"name": name, "status": "cancelling", "note": "the loop stops at its next decision"}

    return app


def serve(output_dir: Path, data_dir: Path, host: str, port: int, models_dir: Path | None = None) -> None:
    import uvicorn

    from .tasks import broker_url

    uvicorn.run(create_app(output_dir, data_dir, token(output_dir), broker_url(), models_dir), host=host, port=port)
