"""acf: the command line. Bad input -> one clear message on stderr and exit code 2."""
from __future__ import annotations

import argparse
import ast
import contextlib
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


@contextlib.contextmanager
def live_progress(exp_dir: Path):
    """A live status line on stderr (rich) from the loop's progress.json: episode, node, action."""
    import threading

    from rich.console import Console

    console, stop = Console(stderr=True), threading.Event()
    if not console.is_terminal:  # logs and pipes get no spinner
        yield
        return

    def text() -> str:
        try:
            p = json.loads((exp_dir / "progress.json").read_text())
        except (OSError, ValueError):
            return "evaluating the baseline"
        what = f"{p.get('action', '')} {p.get('steps', '')}".strip()
        return f"episode {p['episode'] + 1}/{p['max_episodes']}: {p['node']} {what}"

    with console.status(text()) as st:
        def poll():
            while not stop.wait(1.0):
                st.update(text())
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acf", description="Agentic Compression Framework")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run compression episodes and write the experiment folder")
    r.add_argument("--model", required=True, help="'smollm2-135m', a local model folder, a .gguf file or a Hub id")
    r.add_argument("--dataset", "--benchmarks", dest="dataset", default="hellaswag",
                   help="benchmark(s), comma-separated, or 'all': hellaswag, arc_easy, arc_challenge, piqa, "
                        "winogrande, commonsense_qa, truthfulqa_mc1, truthfulqa_mc2, mmlu, gsm8k, bbh; the accuracy "
                        "objective is the mean of their headline scores")
    r.add_argument("--eval-source", default="local", choices=["local", "hub"],
                   help="benchmark data from --data-dir, or (with --online) lm-eval's own Hub datasets")
    r.add_argument("--no-eval-cache", action="store_true",
                   help="measure every checkpoint even when a cached result exists (ACF_EVAL_CACHE)")
    r.add_argument("--data-dir", type=Path, default=os.environ.get("ACF_DATA_DIR"),
                   help="local benchmark data laid out like ../shared/data (or set ACF_DATA_DIR)")
    r.add_argument("--max-episodes", type=int, default=10)
    r.add_argument("--budget-hours", type=float, default=4.0)
    r.add_argument("--patience", type=int, default=5, help="stop after N episodes without frontier improvement")
    r.add_argument("--output-dir", type=Path, default=Path("experiments"))
    r.add_argument("--experiment", help="folder name under --output-dir (default: model-dataset-timestamp)")
    r.add_argument("--policy", default="rule", help="rule (built-in) | llm (GPT-4o or an OpenAI-compatible server) "
                   "| tpe | nsga2 | bandit | pbt | random")
    r.add_argument("--search-seed", type=int, default=0, help="seed of the search policies")
    r.add_argument("--skills", type=Path, help="skill memory file (default ACF_SKILLS or "
                   "~/.local/share/acf/skills.sqlite)")
    r.add_argument("--no-skills", action="store_true", help="neither read nor write the skill memory")
    r.add_argument("--accuracy-floor", type=float, default=0.9,
                   help="reward: a candidate under this fraction of the baseline's accuracy scores -1")
    env = os.environ.get
    r.add_argument("--llm-model", default=env("ACF_LLM_MODEL", "gpt-4o"), help="model the endpoint serves")
    r.add_argument("--llm-base-url", default=env("ACF_LLM_BASE_URL") or env("OPENAI_BASE_URL"),
                   help="OpenAI-compatible endpoint (default api.openai.com); the key comes from OPENAI_API_KEY "
                        "or ACF_LLM_API_KEY, never from a flag")
    r.add_argument("--llm-mode", default=env("ACF_LLM_MODE", "json_schema"),
                   help="json_schema | function_calling | json_mode | prompt (plain chat, parsed)")
    r.add_argument("--llm-temperature", type=float, default=0.2)
    r.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    r.add_argument("--llm-retries", type=int, default=2, help="invalid answers sent back with the error")
    r.add_argument("--limit", type=int, default=100, help="benchmark items (seeded subset shared by all candidates)")
    r.add_argument("--ppl-tokens", type=int, default=4096, help="tokens of the perplexity text scored")
    r.add_argument("--ppl-text", default="wikitext2-second-half",
                   help="perplexity text: the evaluation half of WikiText-2, or a .txt / .jsonl file")
    r.add_argument("--country", default="USA", help="ISO code of the grid codecarbon's CO2 factor is for")
    r.add_argument("--repeats", type=int, default=5, help="latency repeats after one warm-up")
    r.add_argument("--threads", type=int, help="torch threads (under load, 1 can beat 2)")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where candidates are measured (cuda: CUDA-event latency, CUDA peak memory)")
    r.add_argument("--calibration", default="wikitext2-first-half",
                   help="calibration/training text: the default, or a .txt / .jsonl file (never evaluation text)")
    r.add_argument("--noise-tolerance", type=float, default=0.05,
                   help="relative latency/memory/CO2 differences treated as ties in Pareto dominance")
    r.add_argument("--seed", type=int, default=1234, help="seed of the benchmark subset and evaluation")
    r.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                   metavar="METHOD.PARAM=VALUE", help="fix a method parameter, e.g. gptq.num_samples=32")
    r.add_argument("--online", action="store_true", help="allow Hub look-ups (spec inference, model download)")
    s = sub.add_parser("spec", help="infer and print a model's spec")
    s.add_argument("model")
    s.add_argument("--online", action="store_true")
    sub.add_parser("methods", help="list the compression methods and whether they can run here")
    res = sub.add_parser("resume", help="continue an experiment that was killed (loses at most the running episode)")
    res.add_argument("experiment_dir", type=Path)
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
    return p


def _run(a) -> int:
    from pydantic import ValidationError

    from .config import EvalSettings, RunConfig, brief
    from .errors import UserError
    from .experiment import Experiment
    from .report import table

    if a.data_dir is None:
        raise UserError("no data dir given", "pass --data-dir ../shared/data or set ACF_DATA_DIR")
    overrides: dict[str, dict] = {}
    for method, param, value in a.overrides:
        overrides.setdefault(method, {})[param] = value
    try:
        cfg = RunConfig(model=a.model, dataset=a.dataset, data_dir=a.data_dir, output_dir=a.output_dir,
                        experiment=a.experiment, max_episodes=a.max_episodes, budget_hours=a.budget_hours,
                        patience=a.patience, policy=a.policy, noise_tolerance=a.noise_tolerance,
                        online=a.online, threads=a.threads, seed=a.search_seed, skills_path=a.skills,
                        use_skills=not a.no_skills, reward={"accuracy_floor": a.accuracy_floor},
                        method_overrides=overrides, calibration={"source": a.calibration},
                        llm={"model": a.llm_model, "base_url": a.llm_base_url, "mode": a.llm_mode,
                             "temperature": a.llm_temperature, "timeout_s": a.llm_timeout, "retries": a.llm_retries},
                        eval=EvalSettings(benchmark=a.dataset, source=a.eval_source, cache=not a.no_eval_cache,
                                          limit=a.limit, ppl_tokens=a.ppl_tokens, ppl_text=a.ppl_text,
                                          country_iso_code=a.country, repeats=a.repeats,
                                          threads=a.threads, device=a.device, seed=a.seed))
    except ValidationError as e:
        raise UserError(f"invalid option(s): {brief(e)}", "see 'acf run --help'") from None
    if not a.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    exp = Experiment(cfg)
    a.experiment_dir = exp.dir  # named if the run is interrupted
    print(f"acf: experiment {exp.dir}", file=sys.stderr)
    with live_progress(exp.dir):
        exp.run()
    print(table(exp.dir))
    print(f"\nartifacts: {exp.dir}")
    return 0


def _methods() -> int:
    from .methods import REGISTRY

    print(f"{'method':<11} {'action':<13} {'here':<5} {'needs':<46} parameters (choices or [low, high]) / why not")
    for name, m in sorted(REGISTRY.items()):
        ok, why = m.available()
        needs = ", ".join(m.requires) or "torch (our code)"
        params = ", ".join(f"{p.name}={p.choices}" if p.choices is not None else f"{p.name}=[{p.low:g}, {p.high:g}]"
                           for p in m.params)
        role = "" if m.standalone else " (recovery step: in pipelines)"
        print(f"{name:<11} {m.action:<13} {'yes' if ok else 'no':<5} {needs:<46} {(params + role) if ok else why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    a = _parser().parse_args(argv)
    try:
        if a.cmd == "run":
            return _run(a)
        if a.cmd == "spec":
            from .models import ALIASES, resolve
            from .spec import infer_spec

            if not a.online:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            # local folders and aliases are read exactly; other names go to the Hub (online), the table, the regex
            local_name = a.model.lower() in ALIASES or Path(a.model).expanduser().exists()
            local, canonical = resolve(a.model) if local_name else (None, a.model)
            print(json.dumps(infer_spec(canonical, local, online=a.online).model_dump(), indent=2))
            return 0
        if a.cmd == "methods":
            return _methods()
        if a.cmd == "serve":
            from .service import serve

            if a.data_dir is None:
                raise UserError("no data dir given", "pass --data-dir ../shared/data or set ACF_DATA_DIR")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            serve(a.output_dir, a.data_dir, a.host, a.port, a.models_dir)
            return 0
        if a.cmd == "worker":
            from .tasks import app, broker_url

            if broker_url() is None:
                raise UserError("no broker configured", "set ACF_BROKER_URL, e.g. redis://127.0.0.1:6379/0")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
                             "--without-mingle"])
            return 0
        if a.cmd == "resume":
            from .experiment import Experiment
            from .report import table

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            with live_progress(a.experiment_dir):
                Experiment.resume(a.experiment_dir)
            print(table(a.experiment_dir))
            return 0
        if a.cmd == "report":
            from .files import reading
            from .report import table, write_visualization

            final = a.experiment_dir / "final_results.json"
            if not final.is_file():
                raise UserError(f"{a.experiment_dir} holds no final_results.json", "pass an experiment folder")
            with reading(final, "the experiment's summary", "restore it, or 'acf resume' the experiment"):
                text = table(a.experiment_dir)  # a file of the wrong shape fails here, before anything is written
                page = write_visualization(a.experiment_dir)
            print(text)
            print(f"wrote {page}")
            return 0
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
