"""The options of a run, listed once. Each names where it goes in RunConfig; `acf run`'s flags and the API's
RunRequest are generated from this list and from RunConfig's fields (type, bounds, choices, default, help), so
an option's meaning, limits and default live in config.py only."""
from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from .config import NAME, RunConfig, default


@dataclass(frozen=True)
class Option:
    name: str                          # the flag (--name with '-') and the attribute argparse stores it in
    paths: tuple[str, ...]             # where it goes in RunConfig (dotted); several: each of them
    help: str | None = None            # the flag's help where the field's description does not fit a flag
    flags: tuple[str, ...] = ()        # other spellings of the flag
    metavar: str | None = None
    negated: bool = False              # --no-X: stores False
    env: tuple[str, ...] = ()          # environment variables the flag falls back to (the CLI only)
    cli: bool = True                   # a flag of `acf run`
    api: str | None = None             # its name in RunRequest; None: not settable over HTTP
    api_limits: dict[str, Any] = field(default_factory=dict)  # bounds tighter over HTTP than in RunConfig


def _goal(name: str) -> Option:
    return Option(name, (f"goals.{name}",))


OPTIONS: tuple[Option, ...] = (
    Option("model", ("model",)),
    Option("dataset", ("dataset", "eval.benchmark"), flags=("--benchmarks",), api="benchmarks"),
    Option("eval_source", ("eval.source",)),
    Option("no_eval_cache", ("eval.cache",), negated=True,
           help="measure every checkpoint even when a cached result exists (ACF_EVAL_CACHE)"),
    Option("data_dir", ("data_dir",), env=("ACF_DATA_DIR",)),
    Option("max_episodes", ("max_episodes",), api="max_episodes", api_limits={"le": 1000}),
    Option("budget_hours", ("budget_hours",), api="budget_hours"),
    Option("patience", ("patience",), api="patience"),
    Option("output_dir", ("output_dir",)),
    Option("experiment", ("experiment",)),
    Option("policy", ("policy",), api="policy"),
    Option("search_seed", ("seed",)),
    Option("parallel", ("parallel",), metavar="K", api="parallel", api_limits={"le": 64}),
    Option("ray_address", ("ray_address",)),
    Option("episode_retries", ("episode_retries",)),
    Option("skills", ("skills_path",)),
    Option("no_skills", ("use_skills",), negated=True,
           help="neither read nor write the skill memory (nor read its shipped prior)"),
    Option("no_presets", ("presets",), negated=True, api="presets",
           help="do not measure the targets' community presets (llama.cpp Q4_K_M, ORT int4, GPTQ W4A16) beside "
                "the frontier"),
    Option("no_prune", ("prune",), negated=True, api="prune",
           help="evaluate every episode in full, even one whose first tokens show a wrecked model"),
    Option("accuracy_floor", ("reward.accuracy_floor",)),
    Option("llm_model", ("llm.model",), env=("ACF_LLM_MODEL",)),
    Option("llm_base_url", ("llm.base_url",), env=("ACF_LLM_BASE_URL", "OPENAI_BASE_URL")),
    Option("llm_mode", ("llm.mode",), env=("ACF_LLM_MODE",)),
    Option("llm_temperature", ("llm.temperature",)),
    Option("llm_timeout", ("llm.timeout_s",)),
    Option("llm_retries", ("llm.retries",)),
    Option("limit", ("eval.limit",), api="limit"),
    Option("ppl_tokens", ("eval.ppl_tokens",), api="ppl_tokens"),
    Option("ppl_text", ("eval.ppl_text",)),
    Option("country", ("eval.country_iso_code",)),
    Option("repeats", ("eval.repeats",), api="repeats"),
    Option("threads", ("threads", "eval.threads"), api="threads"),
    Option("device", ("eval.device",), api="device"),
    Option("target", ("eval.target",), flags=("--targets",), metavar="RUNTIME[,RUNTIME]", api="target"),
    Option("calibration", ("calibration.source",)),
    Option("noise_tolerance", ("noise_tolerance",)),
    Option("seed", ("eval.seed",), api="seed"),
    Option("online", ("online",)),
    Option("force", ("force",), api="force"),
    Option("overrides", ("method_overrides",), cli=False, api="method_overrides"),  # the CLI's --set
    Option("goals", ("goals",), cli=False, api="goals"),
    *map(_goal, ("max_accuracy_drop", "max_size_gb", "max_latency_ratio", "max_memory_gb", "max_kld",
                 "target_size_ratio", "stop_when_met")),
)


def config_field(path: str) -> FieldInfo:
    """RunConfig's field at a dotted path ("eval.limit"); a path that names none fails here, at import."""
    model: Any = RunConfig
    for key in path.split("."):
        info = model.model_fields[key]
        model = info.annotation
    return info


def _plain(annotation):
    """``int | None`` -> int: the type a flag's text becomes."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0] if len(args) == 1 else str
    return annotation


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`acf run`'s flags, one per CLI option. A flag not given stays None and sets nothing, so RunConfig's
    default (shown in the help) applies, or --config's value."""
    goals = parser.add_argument_group("goals", "constraints every episode is judged against; the summary names the "
                                      "best feasible candidates and recommends the smallest, then the fastest, of them")
    for o in OPTIONS:
        if not o.cli:
            continue
        info, path = config_field(o.paths[0]), o.paths[0]
        kind = _plain(info.annotation)
        text = o.help or info.description or ""
        shown = None if info.is_required() else default(path)
        if not o.negated and shown is not None and shown is not False and shown != "" \
                and not isinstance(shown, (dict, BaseModel)):
            text += f" (default: {shown})"
        kw: dict[str, Any] = {"help": text.replace("%", "%%") or None, "dest": o.name, "metavar": o.metavar}
        if o.negated or kind is bool:
            kw = {"help": kw["help"], "dest": o.name, "action": "store_true", "default": None}
        elif typing.get_origin(kind) is Literal:  # shown, not argparse's choices: RunConfig says what is wrong
            kw["metavar"] = o.metavar or "{" + ",".join(typing.get_args(kind)) + "}"
        elif kind in (int, float, Path):
            kw["type"] = kind
        if o.env and not kw.get("action"):
            kw["default"] = next((os.environ[v] for v in o.env if os.environ.get(v)), None)
        flag = "--" + o.name.replace("_", "-")
        (goals if path.startswith("goals.") else parser).add_argument(flag, *o.flags, **kw)


def flag_value(o: Option, value):
    """What a given flag stores at its paths (None: not given)."""
    if value is None:
        return None
    if o.negated:
        return False
    return str(value) if isinstance(value, Path) else value


def put(d: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[leaf] = value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def to_config(self, model: str, data_dir: Path, output_dir: Path) -> RunConfig:
        """The run this request asks for (``model``: the path its name resolved to on the server)."""
        cfg: dict = {"model": model, "data_dir": data_dir, "output_dir": output_dir, "experiment": self.experiment}
        for o in OPTIONS:
            if o.api:
                for path in o.paths:
                    put(cfg, path, getattr(self, o.api))
        return RunConfig(**cfg)


def request_model() -> type[_Request]:
    """The API's RunRequest: the API options with RunConfig's types, bounds and defaults (tightened by
    ``api_limits``), plus the model's name and the experiment's, and nothing that names a path on the server."""
    fields: dict[str, Any] = {
        "model": (str, Field(max_length=80, description="a built-in alias ('smollm2-135m') or the name of a folder "
                             "in the server's models directory (acf serve --models-dir)")),
        "experiment": (str, Field(pattern=NAME.pattern, description=config_field("experiment").description))}
    for o in OPTIONS:
        if o.api:
            info = config_field(o.paths[0])
            fields[o.api] = (info.annotation, FieldInfo.merge_field_infos(info, Field(**o.api_limits)))
    return create_model("RunRequest", __base__=_Request, __doc__="What a client may set: the options of `acf run` "
                        "that name no path on the server.", **fields)
