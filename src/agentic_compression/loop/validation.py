"""The run's input checked before anything is written, converted or measured: each problem is one line saying what
was wrong and what to do (errors.UserError)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .. import benchmarks, data, methods, policies
from ..config import RunConfig
from ..errors import UserError
from ..evaluation import require_device


def validate(cfg: RunConfig, folder: Path | None = None) -> None:
    """Cheap checks first, before anything is written or converted. ``folder``: a resumed experiment's (the
    output folder is checked only for a new run)."""
    if cfg.eval.source == "hub" and not cfg.online:
        raise UserError("--eval-source hub reads the Hub's datasets", "add --online, or use the local files")
    data.check_data_dir(cfg.data_dir, cfg.eval.benchmark if cfg.eval.source == "local" else "")
    data.read_text(cfg.data_dir, cfg.calibration.source)
    data.read_text(cfg.data_dir, cfg.eval.ppl_text)
    policies.make(cfg.policy, cfg)
    require_device(cfg.eval.device)  # before the model is loaded, not after
    from .. import targets

    for name in targets.resolve(cfg)[0].eval.target.split(","):  # a runtime this machine lacks (vLLM without a
        targets.ready(name)  # GPU), refused at once
    if cfg.parallel > 1 and importlib.util.find_spec("ray") is None:
        raise UserError("--parallel runs episodes on Ray, which is not installed", "run setup.sh, or leave "
                        "--parallel out")
    if cfg.parallel > 1 and (address := cfg.ray_address or os.environ.get("ACF_RAY_ADDRESS")):
        ray_reachable(address)
    if benchmarks.HUMANEVAL in benchmarks.names(cfg.eval.benchmark):
        from ..evaluation.humaneval import sandbox_check

        if why := sandbox_check():
            raise UserError(f"HumanEval is unavailable here: {why}", "install bubblewrap, or leave humaneval out")
    where = folder or cfg.output_dir
    try:
        if folder is None:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
        probe = where / f".acf-write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output dir {where} is not writable ({e.strerror})",
                        "pass --output-dir pointing at a folder you can write") from None
    for name, params in cfg.method_overrides.items():
        if name not in methods.REGISTRY:
            raise UserError(f"override for unknown method '{name}'", f"known: {', '.join(methods.REGISTRY)}")
        if err := methods.get(name).check(params, {}):
            raise UserError(f"bad override: {err}", "see 'acf methods' for each parameter's range")


RAY_CONNECT_S = 3.0  # how long a cluster's address may take to accept a connection
RAY_JOIN_S = 20.0  # and how long joining it may take, in a process of its own


def ray_reachable(address: str) -> None:
    """Join the Ray cluster at ``address`` before any work, in a child process given RAY_JOIN_S, after a TCP
    connection given RAY_CONNECT_S: one that does not answer (nothing listens, a firewall, a proxy that accepts any
    connection) is refused at once. Ray itself would wait about 14 minutes, after the baseline."""
    import socket
    import subprocess
    import sys

    if address == "auto":
        return
    from .episodes import LOOPBACK_SWITCH, host_port, on_loopback

    host, port = host_port(address)
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address[:80]} is not HOST:PORT",
                        "e.g. 127.0.0.1:6379 (what `ray start --head` prints) or ray://HOST:10001")
    todo = "start the cluster first (`ray start --head`), or leave --ray-address out for an embedded one here"
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_S).close()
    except OSError as e:
        raise UserError(f"nothing answers at --ray-address {address[:80]} within {RAY_CONNECT_S:g} s "
                        f"({e.strerror or type(e).__name__})", todo) from None
    join = ("import logging, sys, ray\nray.init(address=sys.argv[1], log_to_driver=False, "
            "logging_level=logging.ERROR)\nray.cluster_resources()\n")
    env = {**os.environ, **({LOOPBACK_SWITCH: "0"} if on_loopback(address) else {})}  # as episodes.connect joins
    try:
        proc = subprocess.run([sys.executable, "-c", join, address], capture_output=True, env=env,
                              timeout=RAY_JOIN_S)
        joined, said = proc.returncode == 0, proc.stderr
    except subprocess.TimeoutExpired as e:
        joined, said = False, e.stderr or b""
    if b"InvalidAuthToken" in said:
        raise UserError(f"the Ray cluster at --ray-address {address[:80]} asks for its authentication token",
                        "set RAY_AUTH_MODE=token, with the token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
    if not joined:
        raise UserError(f"no Ray cluster answered at --ray-address {address[:80]} within {RAY_JOIN_S:g} s", todo)
