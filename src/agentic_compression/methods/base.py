"""The Method interface and its registry: every compression method declares what it is, which parameters it takes
(with ranges), which libraries it needs, whether it can run here, the format it produces, the bits it stores, its
Hub tags and its rank for a model's size class. Unavailable methods are never offered. The targets package checks,
when it is imported and at every later registration, that some target runs each method's format (registry.py)."""
from __future__ import annotations

import importlib.util
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, create_model

from ..registry import METHODS


class ParamError(ValueError):
    """A step's parameters do not fit its method: one line naming the parameter and its domain."""


class Param(BaseModel):
    name: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    default: Any = None
    grid: list[Any] | None = Field(default=None, description="values a search policy tries for a numeric parameter")
    help: str = ""

    def options(self) -> list[Any] | None:
        """The discrete values a policy enumerates: the choices, else the grid, else None (keep the default)."""
        return self.choices if self.choices is not None else self.grid

    def ordered(self) -> list[Any] | None:
        """The options in their natural order when they have one (numbers: group size, sparsity, ratio, rank), so
        a search can learn "smaller is better"; None for unordered ones (names, flags). None among numbers is a
        group size's per-channel setting, the coarsest: last."""
        opts = self.options()
        nums = [o for o in opts or () if o is not None]
        if not nums or any(isinstance(o, bool) or not isinstance(o, (int, float)) for o in nums):
            return None
        return sorted(nums) + [None] * (len(opts) - len(nums))

    def annotation(self) -> Any:
        """Its type for the method's config model: one of the choices; a whole number in the range (a count, whose
        default is an int); a number in the range, kept as given (0 stays 0, 0.5 stays 0.5: strategy keys hash
        the values); else anything (free-form)."""
        if self.choices is not None:
            return Literal[tuple(self.choices)]
        if self.low is None:
            return Any
        whole = Annotated[StrictInt, Field(ge=math.ceil(self.low), le=math.floor(self.high))]
        number = whole if self.counts() else whole | Annotated[StrictFloat, Field(ge=self.low, le=self.high)]
        return number | None if self.default is None else number

    def counts(self) -> bool:
        return isinstance(self.default, int) and not isinstance(self.default, bool)

    def domain(self) -> str:
        """What values it takes, in words: choices, a range, or (a free-form parameter) its help."""
        if self.choices is not None:
            return f"one of {self.choices}"
        return f"[{self.low:g}, {self.high:g}]" if self.low is not None else f"free-form: {self.help}"


@dataclass
class Context:
    """What a method may use besides the model: seeded calibration data (cached for the experiment) and limits."""

    calibration: Callable[[Any, int, int], list[list[int]]]  # (tokenizer, n, seq_len) -> token windows
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)  # "teacher": the base model's folder (distillation)
    probe: Callable[[Any, Any], dict[str, float]] | None = None  # (model, tokenizer) -> facts for step conditions
    # what a step measured on the way that its episode keeps (mixed precision: each layer's sensitivity)
    measured: dict[str, Any] = field(default_factory=dict)
    stats: Path | None = None  # the experiment's statistics cache (stats_cache.py); None: nothing is reused


class Method:
    name: ClassVar[str]
    action: ClassVar[str]  # the action family the coordinator routes by
    # the format it produces (a registered one, formats/, or a target's own file: gguf, onnx), which decides where
    # the result runs (a target whose ``runs`` holds it)
    produces: ClassVar[str] = "dense"
    # the region of objective space its candidates land in (its format unless it says otherwise: "dense-smaller", a
    # dense checkpoint of smaller widths): a policy widening the frontier spreads its first episodes over regions
    region: ClassVar[str]
    # the Hub tags of its result (the format it writes and the algorithm: compressed-tensors, gptq, awq, ...)
    tags: ClassVar[tuple[str, ...]] = ()
    # its place in the preference for a model of each size class (spec.py: small <= 3B < medium <= 15B < large;
    # 0 first); a size class it is not listed for does not prefer it
    size_rank: ClassVar[dict[str, int]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    # peak memory of applying it, as a multiple of the fp32 weights (what the resource check compares)
    memory_factor: ClassVar[float] = 2.0
    # which measured objectives it can lower with the runtimes acf evaluates on (CPU transformers): a policy should
    # not expect a dense-stored sparse model to be smaller or faster
    reduces: ClassVar[tuple[str, ...]] = ("model_size_gb",)
    # how long applying it takes on CPU: 0 seconds (data-free), 1 about a minute, 2 several minutes (SmolLM2-135M)
    cost: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "region" not in cls.__dict__:
            cls.region = cls.produces

    @classmethod
    def bits(cls, params: dict[str, Any]) -> int:
        """The weight bits a step of it with these parameters stores (a quantizer says; others keep 16)."""
        return 16

    @classmethod
    def available(cls) -> tuple[bool, str]:
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        return (False, f"missing package(s): {', '.join(missing)}") if missing else (True, "")

    @classmethod
    def supports(cls, arch) -> str | None:
        """Why this method cannot run on a model of this architecture (architecture.Architecture), or None: every
        method of ours but distillation works on the decoder blocks' nn.Linear projections."""
        if arch.layers is None:
            return f"a {arch.family} model has no decoder blocks acf can find"
        if not arch.linear:
            return f"a {arch.family} model's projections are not nn.Linear (GPT-2 style Conv1D), which {cls.name} needs"
        return None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def config(cls) -> type[BaseModel]:
        """The method's parameters as a pydantic model generated from ``params`` (unknown names refused), as
        torchao's config dataclasses and llm-compressor's modifiers type theirs. A policy's step is validated
        against it once, when it is made (``validated``); a Step read back from an experiment folder is not, so an
        earlier version's strategies stay readable."""
        if "_config" not in cls.__dict__:
            fields = {p.name: (p.annotation(), Field(default=p.default, description=p.help)) for p in cls.params}
            cls._config = create_model(f"{cls.__name__}Config", __config__=ConfigDict(extra="forbid"), **fields)
        return cls._config

    @classmethod
    def validated(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter's value, the given ones validated against the config model and the rest at their
        defaults: how a policy makes a step. ParamError (one line) when one is unknown or outside its domain."""
        try:
            return cls.config().model_validate(params).model_dump()
        except ValidationError as e:
            raise ParamError(cls._say(e, params)) from None

    @classmethod
    def resolve(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter's value, the given ones over the defaults, not validated: what apply() reads. A
        parameter's range is what a policy may propose; a caller of apply() may go below it (a test's 2
        calibration windows)."""
        return cls.config().model_construct(**params).model_dump()

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> str | None:
        """Why these parameters cannot work on a model with this HF config, or None when they can."""
        try:
            cls.config().model_validate(params)
        except ValidationError as e:
            return cls._say(e, params)
        return None

    @classmethod
    def _say(cls, e: ValidationError, params: dict[str, Any]) -> str:
        """The first invalid parameter in words (the config model says which; the words name its domain)."""
        known = {p.name: p for p in cls.params}
        k = str(e.errors()[0]["loc"][0])
        p, v = known.get(k), params.get(k)
        if p is None:
            return f"{cls.name} takes no parameter '{k}' (it takes {', '.join(known)})"
        if p.choices is not None:
            return f"{cls.name}.{k}={v!r} is not one of {p.choices}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{cls.name}.{k}={v!r} is not a number in [{p.low}, {p.high}]"
        if p.counts() and not isinstance(v, int):  # a count, not a size
            return f"{cls.name}.{k}={v!r} is not a whole number in [{p.low:g}, {p.high:g}]"
        return f"{cls.name}.{k}={v!r} is outside [{p.low}, {p.high}]"

    def apply(self, model, tokenizer, params: dict[str, Any], ctx: Context):
        """Compress ``model`` (in place or not) and return the model to save."""
        raise NotImplementedError

    # a method that only makes sense after another (LoRA recovery, distillation) is offered in pipelines only
    standalone: ClassVar[bool] = True
    # True for a target's own file-level method (llama.cpp quantization): it runs last, in the target's export of
    # the PyTorch-side result, never on a model in memory
    final: ClassVar[bool] = False
    # True when apply() never changes the weights it is given (an adapter beside them, or a merge into float weights
    # only, which a compressed-tensors model never has)
    keeps_base_weights: ClassVar[bool] = False


REGISTRY = METHODS


def register(cls: type[Method]) -> type[Method]:
    """Add a method; a second method under a taken name is an error (lm-eval's registry rule), never a silent
    replacement, and so is one that breaks a contract (its format run by no target)."""
    return METHODS.register(cls)


@contextmanager
def registered(cls: type[Method]):
    """``cls`` in the registry for the duration of a with block only (tests' failure-injection methods)."""
    register(cls)
    try:
        yield cls
    finally:
        METHODS.remove(cls.name)


def get(name: str) -> type[Method]:
    if name not in METHODS:
        raise KeyError(METHODS.unknown(name))
    return METHODS[name]


def available_methods(arch=None) -> dict[str, type[Method]]:
    """The methods that can run here, and on a model of this architecture when one is given."""
    return {n: m for n, m in METHODS.items() if m.available()[0] and (arch is None or m.supports(arch) is None)}
