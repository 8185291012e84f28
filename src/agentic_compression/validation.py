"""The run's input checked before anything is written, converted or measured: each problem is one line saying what
was wrong and what to do (errors.UserError)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from . import benchmarks, data, methods, policies
from .config import RunConfig
from .errors import UserError
from .evaluation import require_device


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
    from . import targets

    for name in targets.resolve(cfg)[0].eval.target.split(","):  # a runtime this machine lacks (vLLM without a
        targets.ready(name)  # GPU), refused at once
    if cfg.parallel > 1 and importlib.util.find_spec("ray") is None:
        raise UserError("--parallel runs episodes on Ray, which is not installed", "run setup.sh, or leave "
                        "--parallel out")
    if benchmarks.HUMANEVAL in benchmarks.names(cfg.eval.benchmark):
        from .evaluation.humaneval import sandbox_check

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
