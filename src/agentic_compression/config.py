"""Run configuration (written to config.json): every limit of the loop and of the evaluation lives here."""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .goals import Goals
from .objectives import NOISE
from .registry import TARGETS
from .reward import RewardSettings
from .strict import Settings

# an experiment's name: one folder directly under the output folder (no '/', no '..', not '.'); also the API's
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@lru_cache(maxsize=1)
def countries() -> frozenset[str]:
    """The ISO codes codecarbon has a grid energy mix for (its offline tracker refuses others at run time)."""
    from codecarbon.input import DataSource

    return frozenset(DataSource().get_global_energy_mix_data())


def _default_targets() -> str:
    value = os.environ.get("ACF_TARGETS", "auto")
    try:
        return EvalSettings._target(value)
    except ValueError as e:
        raise UserError(f"ACF_TARGETS: {e}", "unset it (auto), or set it to runtimes such as llamacpp,ortgenai") \
            from None


class EvalSettings(Settings):
    benchmark: str = Field(default="hellaswag", description="benchmarks, comma-separated, or 'all' (benchmarks.py)")
    source: Literal["local", "hub"] = Field(default="local", description="local files (--data-dir) or, online, "
                                            "lm-eval's own tasks on the Hub's datasets")
    limit: int = Field(default=100, gt=0, description="items per benchmark of the seeded subset shared by all "
                       "candidates (split evenly over a group's subtasks)")
    cache: bool = Field(default=True, description="reuse results cached by (checkpoint fingerprint, settings)")
    batch_size: int = Field(default=4, gt=0)
    ppl_text: str = Field(default="wikitext2-second-half", description="perplexity text: the evaluation half of "
                          "WikiText-2, or a .txt / .jsonl file")
    ppl_tokens: int = Field(default=4096, gt=64, description="tokens of the perplexity text scored (sliding window)")
    ppl_window: int = Field(default=512, gt=16)
    ppl_stride: int = Field(default=256, gt=0)
    prompt_tokens: int = Field(default=128, gt=0)
    decode_tokens: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=128, gt=0, description="HumanEval completion length (greedy)")
    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=5, gt=0, description="latency repeats after the warm-up")
    seed: int = Field(default=1234, description="seed of the benchmark subset and evaluation")
    threads: int | None = Field(default=None, gt=0, description="torch threads in the evaluation process (None = "
                                "torch's)")
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="where the candidate is measured: on cuda, "
                                           "latency is timed with CUDA events and memory is the CUDA peak")
    target: str = Field(default_factory=lambda: _default_targets(), validate_default=True,
                        description="the runtime(s) candidates are exported to and measured in "
                        "(targets/): transformers, llamacpp (GGUF), ortgenai (ONNX), vllm, or several, "
                        "comma-separated, for one frontier across runtimes (the transformers fp32 model is always "
                        "measured too); auto: the runtimes installed here for the device (CPU: llamacpp,ortgenai; "
                        "CUDA: vllm,transformers), else transformers (ACF_TARGETS sets the default)")
    country_iso_code: str = Field(default="USA", description="ISO code of the grid codecarbon's CO2 factor is for")
    timeout_s: int = Field(default=3600, gt=0)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if v.strip() == "auto":
            return "auto"
        names = [n.strip() for n in v.split(",") if n.strip()]
        unknown = [n for n in names if n not in TARGETS]
        if not names or unknown:
            raise ValueError(f"unknown target '{', '.join(unknown) or v}' (known: auto, {', '.join(TARGETS)})")
        if len(set(names)) < len(names):
            raise ValueError(f"target '{v}' names a runtime twice")
        return ",".join(names)

    @model_validator(mode="after")
    def _humaneval_target(self):
        from . import benchmarks

        try:
            names = benchmarks.names(self.benchmark)
        except Exception:  # an unknown benchmark is reported where benchmarks are built
            names = []
        if self.target not in ("transformers", "auto") and benchmarks.HUMANEVAL in names:
            raise ValueError(f"HumanEval runs in the transformers target only, not in {self.target}: leave it out "
                             "of --dataset, or use --target transformers")
        return self

    @field_validator("country_iso_code")
    @classmethod
    def _country(cls, v: str) -> str:
        if v not in countries():
            raise ValueError(f"'{v}' is not an ISO 3166 alpha-3 code codecarbon knows (e.g. USA, DEU, FRA, CHN)")
        return v


class CalibrationSettings(Settings):
    source: str = Field(default="wikitext2-first-half",
                        description="calibration/training text: the first half of WikiText-2 (evaluation uses the "
                                    "second), or a .txt / .jsonl file")
    seed: int = 0


class LLMSettings(Settings):
    """The LLM coordinator (``--policy llm``). The API key is never part of the configuration: it is read from
    the environment (OPENAI_API_KEY, or ACF_LLM_API_KEY) when the policy starts, so it reaches no artifact."""

    model: str = Field(default="gpt-4o", description="model name the endpoint serves")
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; None = api.openai.com. The "
                          "key comes from OPENAI_API_KEY or ACF_LLM_API_KEY, never from an option")
    mode: Literal["json_schema", "function_calling", "json_mode", "prompt"] = Field(
        default="json_schema", description="how a structured answer is asked for: a JSON schema (GPT-4o), a forced "
        "function call, JSON mode, or plain chat parsed by us (servers that ignore response_format)")
    temperature: float = Field(default=0.2, ge=0, le=2, description="sampling temperature of its answers")
    max_tokens: int = Field(default=800, gt=0)
    timeout_s: float = Field(default=60.0, gt=0, description="per request")
    retries: int = Field(default=2, ge=0, description="invalid answers sent back with the error")
    http_retries: int = Field(default=3, ge=0, description="transient errors (connection, timeout, 429, 5xx)")
    backoff_s: float = Field(default=1.0, ge=0, description="first backoff; doubles on each transient error")
    breaker: int = Field(default=3, gt=0, description="after this many decisions in a row whose endpoint failed, "
                         "the run stops asking it and the built-in policy decides")
    max_wait_s: float = Field(default=60.0, ge=0, description="the longest an endpoint's Retry-After is obeyed "
                              "(also capped by timeout_s and the run's remaining budget)")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            u = urlparse(v)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"'{v}' is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        return v


class RunConfig(Settings):
    model: str = Field(max_length=1000, description="'smollm2-135m', a local model folder, a .gguf file or a Hub id")
    dataset: str = Field(default="hellaswag", description="benchmark(s), comma-separated, or 'all': hellaswag, "
                         "arc_easy, arc_challenge, piqa, winogrande, commonsense_qa, truthfulqa_mc1, truthfulqa_mc2, "
                         "mmlu, gsm8k, bbh, humaneval; the accuracy objective is the mean of their headline scores")
    data_dir: Path = Field(description="local benchmark data laid out like ../shared/data (or set ACF_DATA_DIR)")
    output_dir: Path = Field(default=Path("experiments"), description="where experiment folders are written")
    experiment: str | None = Field(default=None, pattern=NAME.pattern, description="the folder's name under "
                                   "output_dir: letters, digits, '.', '_', '-'; no path")
    max_episodes: int = Field(default=10, gt=0, description="episodes after the baseline")
    budget_hours: float = Field(default=4.0, gt=0, description="wall time after which no episode starts")
    patience: int = Field(default=5, gt=0, description="stop after this many episodes without frontier improvement")
    policy: str = Field(default="rule", description="rule (built-in) | llm (GPT-4o or an OpenAI-compatible server) "
                        "| tpe | nsga2 | bandit | pbt | random")
    online: bool = Field(default=False, description="allow Hub look-ups (spec inference, model download)")
    threads: int | None = Field(default=None, gt=0, description="torch threads, in the episodes and the "
                                "evaluation (under load, 1 can beat 2); None = torch's")
    history_limit: int = 100
    noise_tolerance: float = Field(default=NOISE, ge=0, lt=1, description="relative differences in latency, memory "
                                   "and CO2 below this are ties when comparing candidates (accuracy, size: exact)")
    eval: EvalSettings = Field(default_factory=EvalSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    goals: Goals = Field(default_factory=Goals, description="constraints every episode is judged against (goals.py)")
    skills_path: Path | None = Field(default=None, description="skill memory (SQLite); None = ACF_SKILLS or "
                                     "~/.local/share/acf/skills.sqlite; pass --no-skills to run without")
    use_skills: bool = Field(default=True, description="read and write the skill memory")
    presets: bool = Field(default=True, description="measure each target's community presets once (llama.cpp "
                          "Q4_K_M and Q8_0, ORT GenAI int4, GPTQ W4A16) beside the frontier (presets.py)")
    prune: bool = Field(default=True, description="stop an episode's evaluation after its first 512 scored tokens "
                        "when they already show a wrecked model (perplexity over twice the baseline's, or KL "
                        "divergence over twice --max-kld, at 3 standard errors): recorded as pruned")
    force: bool = Field(default=False, description="run even when the baseline looks broken (sanity.py); the "
                        "baseline's results record that it was forced")
    seed: int = Field(default=0, description="seed of the search policies")
    parallel: int = Field(default=1, gt=0, le=256, description="episodes run at once, each a Ray task (an embedded "
                          "local cluster unless ray_address; episodes.py); 1 = one after another in this process")
    ray_address: str | None = Field(default=None, description="a running Ray cluster to join; None: the one "
                                    "ACF_RAY_ADDRESS names where the run executes (an acf worker's), else an "
                                    "embedded local one; on several machines, output_dir must be a filesystem they "
                                    "share")
    episode_retries: int = Field(default=1, ge=0, le=10, description="times an episode re-runs when its worker "
                                 "process or node dies, before it fails")
    method_overrides: dict[str, dict] = Field(default_factory=dict, description="method -> parameters fixed for "
                                              "every step of it (e.g. fewer GPTQ samples for a quick run)")

    @model_validator(mode="after")
    def _benchmarks_from_dataset(self):
        """``dataset`` names the benchmarks unless the evaluation settings name them explicitly."""
        if "benchmark" not in self.eval.model_fields_set:
            self.eval.benchmark = self.dataset
        return self

    @classmethod
    def from_file(cls, path: Path) -> "RunConfig":
        """An experiment's config.json; a damaged or hand-edited file is one UserError naming it."""
        from .files import read_json

        raw = read_json(path, "an experiment's configuration", "restore it, or start a new run with 'acf run'")
        try:
            return cls(**raw)
        except ValidationError as e:
            raise UserError(f"{path} is not a valid configuration: {brief(e)}",
                            "restore it, or start a new run with 'acf run'") from None


def default(path: str) -> Any:
    """RunConfig's default at a dotted path ("eval.limit"): the one place run options' defaults live, which `acf
    run` (a flag not given sets nothing) and the API's RunRequest fall back to."""
    model, value = RunConfig, None
    for key in path.split("."):
        value = model.model_fields[key].get_default(call_default_factory=True)
        model = type(value)
    return value


def brief(e: ValidationError) -> str:
    """A pydantic error on one line: each field and what is wrong with it (an unknown key with the valid ones),
    never the whole input."""
    def got(x: dict) -> str:
        v = x.get("input")
        if x["type"] == "extra_forbidden":  # a run configuration's: the keys it takes there
            keys = _keys_at(x["loc"][:-1]) if e.title == "RunConfig" else []
            return f" (valid keys here: {', '.join(keys)})" if keys else ""
        return f" (got {(v[:60] if isinstance(v, str) else v)!r:.60})" if isinstance(v, (str, int, float)) else ""

    def where(x: dict) -> str:  # a model validator's own message already names its key
        return f"{'.'.join(map(str, x['loc']))}: " if x["loc"] else ""

    return "; ".join(f"{where(x)}{x['msg'].removeprefix('Value error, ')}{got(x)}" for x in e.errors()[:5])


def _keys_at(loc: tuple) -> list[str]:
    """The keys RunConfig takes at a path ((), ("eval",), ("goals",)); [] where the path names no settings."""
    model = RunConfig
    for key in loc:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, Settings)):
            return []
        model = field.annotation
    return list(model.model_fields)
