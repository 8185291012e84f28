"""acf: the command line. Bad input -> one clear message on stderr and exit code 2."""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path


def _override(text: str) -> tuple[str, str, object]:
    try:
        lhs, value = text.split("=", 1)
        method, param = lhs.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not METHOD.PARAM=VALUE (e.g. gptq.num_samples=32)") from None
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        v = value
    return method, param, v


def _parser() -> argparse.ArgumentParser:
    from . import options

    p = argparse.ArgumentParser(prog="acf", description="Agentic Compression Framework")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run compression episodes and write the experiment folder")
    r.add_argument("--config", type=Path, help="a run written down (YAML or JSON, the schema of an experiment's "
                   "config.json; 'acf run --print-config' prints it): flags given here override it")
    r.add_argument("--print-config", action="store_true", help="print the full configuration (defaults, --config, "
                   "flags) as YAML and exit")
    r.add_argument("-v", "--verbose", action="store_true", help="also show other libraries' output live (it always "
                   "goes to baseline/log.txt and episode_NNN/log.txt)")
    options.add_flags(r)
    r.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                   metavar="METHOD.PARAM=VALUE", help="fix a method parameter, e.g. gptq.num_samples=32")
    s = sub.add_parser("spec", help="infer and print a model's spec")
    s.add_argument("model")
    s.add_argument("--online", action="store_true")
    me = sub.add_parser("methods", help="list the compression methods and whether they can run here")
    me.add_argument("--model", help="also say which methods apply to this model's architecture, and why not")
    me.add_argument("--online", action="store_true", help="allow a Hub download of --model")
    res = sub.add_parser("resume", help="continue an experiment that was killed (loses at most the running episode)")
    res.add_argument("experiment_dir", type=Path)
    res.add_argument("-v", "--verbose", action="store_true", help="also show other libraries' output live")
    ex = sub.add_parser("export", help="write one candidate as its runtime loads it (a .gguf with an Ollama Modelfile, "
                        "an ONNX Runtime GenAI folder, a checkpoint), with its model card, and prove the copy predicts "
                        "what the measured file predicts")
    ex.add_argument("experiment_dir", type=Path)
    ex.add_argument("episode", nargs="?", help="e.g. episode_003 (or --best)")
    ex.add_argument("--best", action="store_true", help="the candidate the run recommends (the goals' pick, else the "
                    "compressed frontier member of highest reward)")
    ex.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    ex.add_argument("--format", default="native", choices=["native", "gguf", "onnx"],
                    help="native: as measured (default); gguf / onnx: a PyTorch-side candidate converted to "
                    "llama.cpp's or ONNX Runtime GenAI's f32 file")
    ex.add_argument("--push-to-hub", metavar="REPO", help="also upload the copy to this Hub repo (needs --online)")
    ex.add_argument("--online", action="store_true")
    srv = sub.add_parser("serve", help="the REST API (OpenAPI docs at /docs); needs a bearer token")
    srv.add_argument("--output-dir", type=Path, default=Path("experiments"))
    srv.add_argument("--data-dir", type=Path, default=os.environ.get("ACF_DATA_DIR"))
    srv.add_argument("--models-dir", type=Path, default=os.environ.get("ACF_MODELS_DIR"),
                     help="clients may name the model folders in it (or set ACF_MODELS_DIR); besides it, only the "
                          "built-in aliases")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    sub.add_parser("worker", help="a Celery worker running experiments from the Redis broker in ACF_BROKER_URL")
    rep = sub.add_parser("report", help="print an experiment's table and rewrite its Plotly page")
    rep.add_argument("experiment_dir", type=Path)
    rep.add_argument("--format", default="table", choices=["table", "markdown", "json", "csv"],
                     help="markdown is ready to paste into a model card or an issue")
    return p


def _explicit(argv: list[str]) -> set[str]:
    """The `acf run` flags given on the command line (not defaults): they override --config."""
    p = _parser()
    run = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    for action in run._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(p.parse_args(argv)))


CONFIG_BYTES = 1_000_000  # a run configuration is a few hundred bytes; a larger file is a mistake or an attack


def _read_config(path: Path) -> dict:
    from .errors import UserError
    from .files import read_json, reading

    with reading(path, "a run configuration"):
        size = path.stat().st_size
    if size > CONFIG_BYTES:
        raise UserError(f"{path} is {size:,} bytes, more than a run configuration's {CONFIG_BYTES:,}",
                        "give a file like 'acf run --print-config' prints")
    if path.suffix == ".json":
        return read_json(path, "a run configuration")
    import yaml

    class NoAliases(yaml.SafeLoader):  # an alias can expand a small file into gigabytes (a "billion laughs")
        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                raise UserError(f"{path} uses a YAML alias (*name), which a run configuration may not",
                                "write each value out, as 'acf run --print-config' prints it")
            return super().compose_node(parent, index)

    with reading(path, "a run configuration (YAML)", "give a YAML mapping like 'acf run --print-config' prints"):
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=NoAliases)  # noqa: S506 (a SafeLoader)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a YAML mapping", "give a mapping like 'acf run --print-config' prints")
    return raw


def run_config(a, argv: list[str]):
    """RunConfig from its defaults, then --config, then the flags given (a flag not given fills only what the
    file leaves out, so env-derived defaults such as ACF_DATA_DIR still apply)."""
    from pydantic import ValidationError

    from .config import RunConfig, brief
    from .errors import UserError
    from .options import OPTIONS, flag_value, put

    given = _explicit(argv) if a.config else {o.name for o in OPTIONS}
    cfg = _read_config(a.config) if a.config else {}
    for o in OPTIONS:
        if o.name not in given and any(_has(cfg, path) for path in o.paths):
            continue  # the file says it, and no flag overrides it
        if o.name == "overrides":  # --set METHOD.PARAM=VALUE, repeated
            value = {}
            for method, param, v in a.overrides:
                value.setdefault(method, {})[param] = v
        else:
            value = flag_value(o, getattr(a, o.name, None))
        if value is not None:
            for path in o.paths:
                put(cfg, path, value)
    if a.print_config:  # a runnable file: the README's main job where nothing says otherwise
        cfg.setdefault("model", "smollm2-135m")
        cfg.setdefault("data_dir", "../shared/data")
    if cfg.get("data_dir") is None:
        raise UserError("no data dir given",
                        "pass --data-dir ../shared/data, set ACF_DATA_DIR, or put data_dir in --config")
    if cfg.get("model") is None:
        raise UserError("no model given", "pass --model (e.g. smollm2-135m), or put model in --config")
    try:
        return RunConfig(**cfg)
    except ValidationError as e:
        raise UserError(f"invalid option(s): {brief(e)}", "see 'acf run --help'") from None


def _has(d: dict, dotted: str) -> bool:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def _follow(verbose: bool, start) -> Path:
    """Other libraries' output into the experiment's log files, acf's own lines on screen. ``start()`` (which may
    itself print, e.g. converting a GGUF) returns (experiment folder, max episodes, the job to run, the targets and
    why they were chosen or None)."""
    from .console import OutputRouter, RunConsole

    with OutputRouter(verbose) as router:
        exp_dir, max_episodes, job, chosen = start()
        print(f"acf: experiment {exp_dir}", file=router.terminal)
        if chosen:
            print(f"acf: targets {chosen[0]} (auto: {chosen[1]}; --targets to choose)", file=router.terminal)
        with RunConsole(exp_dir, router.terminal, max_episodes):
            job()
    return exp_dir


def _max_episodes(exp_dir: Path) -> int:
    try:
        return int(json.loads((exp_dir / "config.json").read_text())["max_episodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # resume reports the damaged file itself


def _run(a, argv: list[str]) -> int:
    from . import targets
    from .loop.experiment import Experiment
    from .report import table

    cfg = run_config(a, argv)
    if a.print_config:
        import yaml

        print("# acf run --config FILE: every option of a run (flags given with it override the file)")
        print(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False), end="")
        resolved, why = targets.resolve(cfg)
        if why:
            print(f"# target auto resolves here to {resolved.eval.target}: {why}")
        return 0
    if not cfg.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    def start():
        exp = Experiment(cfg)
        a.experiment_dir = exp.dir  # named if the run is interrupted
        return exp.dir, cfg.max_episodes, exp.run, exp.targets_why and (", ".join(exp.targets), exp.targets_why)

    exp_dir = _follow(a.verbose, start)
    print(f"\nartifacts: {exp_dir}\n")
    print(table(exp_dir))  # its last lines: the recommendation, and the command that exports it
    return 0


def _report(a) -> int:
    from .errors import UserError
    from .files import reading
    from .report import render, write_visualization

    final = a.experiment_dir / "final_results.json"
    if not final.is_file():
        raise UserError(f"{a.experiment_dir} holds no final_results.json", "pass an experiment folder")
    with reading(final, "the experiment's summary", "restore it, or 'acf resume' the experiment"):
        text = render(a.experiment_dir, a.format)  # a file of the wrong shape fails here, before anything is written
        page = write_visualization(a.experiment_dir)
    print(text)
    print(f"wrote {page}", file=sys.stderr)
    return 0


def _methods(model: str | None = None) -> int:
    from .errors import UserError
    from .methods import REGISTRY
    from .targets import TARGETS

    arch = None
    if model is not None:
        from .loop.spec import read_config
        from .models import resolve
        from .models.architecture import of_config

        config = read_config(resolve(model)[0])
        arch = of_config(config)
        if arch is None:
            raise UserError(f"transformers cannot build the architecture of {model} (model_type "
                            f"{config['model_type']!r})", "give a model of a family transformers knows")
        print(describe(arch))
    print(f"{'method':<11} {'action':<13} {'here':<5} {'needs':<46} parameters (choices or [low, high]) / why not")
    for name, m in sorted(REGISTRY.items()):
        ok, why = m.available()
        if ok and arch is not None and (why := m.supports(arch)):
            ok, why = False, f"not for this model: {why}"
        needs = ", ".join(m.requires) or "torch (our code)"
        params = ", ".join(f"{p.name}={p.choices if p.choices is not None else p.domain()}" for p in m.params)
        role = "" if m.standalone else " (recovery step: in pipelines)"
        where = [t for t, target in TARGETS.items() if target.offers(m)]
        role += f" [{'last step on --target ' if m.final else 'targets: '}{', '.join(where)}]"
        print(f"{name:<11} {m.action:<13} {'yes' if ok else 'no':<5} {needs:<46} {(params + role) if ok else why}")
    return 0


def describe(arch) -> str:
    """One paragraph on what acf read of a model's structure (acf methods --model)."""
    parts = [f"{arch.family}: {arch.n_layers} decoder blocks at {arch.layers}" if arch.layers
             else f"{arch.family}: no decoder blocks found",
             f"attention {arch.attention or 'fused or absent (no separate q/k/v/o)'}",
             f"MLP {arch.mlp or 'fused or absent'}",
             f"head {arch.head or 'none'}{' (tied to the embedding)' if arch.tied else ''}",
             f"Linear input widths {', '.join(map(str, arch.widths)) or 'none'}", *arch.notes]
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    try:
        parser = _parser()  # the defaults it shows read the environment (ACF_TARGETS)
    except UserError as e:
        print(f"acf: error: {e}", file=sys.stderr)
        return 2
    a = parser.parse_args(argv)
    try:
        if a.cmd == "run":
            return _run(a, argv if argv is not None else sys.argv[1:])
        if a.cmd == "spec":
            from .loop.spec import infer_spec
            from .models import ALIASES, resolve

            if not a.online:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            # local folders and aliases are read exactly; other names go to the Hub (online), the table, the regex
            local_name = a.model.lower() in ALIASES or Path(a.model).expanduser().exists()
            local, canonical = resolve(a.model) if local_name else (None, a.model)
            print(json.dumps(infer_spec(canonical, local, online=a.online).model_dump(), indent=2))
            return 0
        if a.cmd == "methods":
            if not a.online:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            return _methods(a.model)
        if a.cmd == "serve":
            from .service.api import serve

            if a.data_dir is None:
                raise UserError("no data dir given", "pass --data-dir ../shared/data or set ACF_DATA_DIR")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            serve(a.output_dir, a.data_dir, a.host, a.port, a.models_dir)
            return 0
        if a.cmd == "worker":
            from .service.tasks import app, broker_url

            if broker_url() is None:
                raise UserError("no broker configured", "set ACF_BROKER_URL, e.g. redis://127.0.0.1:6379/0")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
                             "--without-mingle"])
            return 0
        if a.cmd == "resume":
            from .loop.experiment import Experiment
            from .report import table

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            _follow(a.verbose, lambda: (a.experiment_dir, _max_episodes(a.experiment_dir),
                                        lambda: Experiment.resume(a.experiment_dir), None))
            print(table(a.experiment_dir))
            return 0
        if a.cmd == "export":
            from .export import export

            if not a.online:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            out, how = export(a.experiment_dir, a.episode, a.out, best=a.best, fmt=a.format,
                              push_to_hub=a.push_to_hub, online=a.online)
            print(f"exported to {out} (loaded from there in its runtime and checked: it predicts what the measured "
                  "file predicts)")
            print("\n".join(how))
            return 0
        if a.cmd == "report":
            return _report(a)
    except UserError as e:
        print(f"acf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = getattr(a, "experiment_dir", None)
        print("acf: interrupted" + (f"; continue with: acf resume {where}" if where else ""), file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line; ACF_DEBUG=1 shows the traceback
        if os.environ.get("ACF_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"acf: error: unexpected {type(e).__name__}: {first} (set ACF_DEBUG=1 for the traceback, and please "
              "report it)", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
