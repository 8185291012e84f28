"""The registries of every pluggable kind: methods, formats, targets, policies, benchmarks and evaluators. This is the
bottom layer: it imports nothing of acf's, so any module may register into it and ``config.py`` can check a name
without importing what the name stands for.

An entry is an object or a lazy ``"module:attr"`` string, imported on first use (listing names imports no runtime).
A second entry under a taken name is an error, never a silent replacement (lm-eval's rule); a module registering
the object its own lazy entry names fills that entry. A contract (``contract``) is a check every entry must pass:
run on each entry already resolved when it is added, and on every later entry as it registers or resolves, so a
method producing a format no target runs fails when it registers, with the reason."""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


def located(source: Any) -> str:
    """``"module:qualname"`` of a class or function, the way a lazy entry names it."""
    return f"{source.__module__}:{source.__qualname__}"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order. ``make`` turns what is registered (a class) into what is held (formats
    and targets hold one instance each)."""

    def __init__(self, kind: str, make: Callable[[Any], T] | None = None):
        self.kind, self._make = kind, make or (lambda source: source)
        self._sources: dict[str, Any] = {}  # what was registered: the object, or the lazy string
        self._held: dict[str, T] = {}  # what it resolved to
        self._contracts: list[Callable[[str, T], str | None]] = []

    def add(self, name: str, source: Any) -> None:
        """Register ``source`` (an object, or ``"module:attr"`` to import on first use) under ``name``."""
        taken = self._sources.get(name)
        if taken is not None and taken is not source and not (isinstance(taken, str) and not isinstance(source, str)
                                                               and taken == located(source)):
            raise ValueError(f"{self.kind} name '{name}' is taken by {self._describe(taken)}")
        if isinstance(source, str):
            if ":" not in source:
                raise ValueError(f"a lazy {self.kind} entry is 'module:attr', not {source!r}")
            self._sources.setdefault(name, source)
            return
        made = self._make(source)
        self._check(name, made)
        self._sources[name], self._held[name] = source, made

    def register(self, source):
        """Decorator: register a class (or function) under its ``name`` attribute."""
        self.add(source.name, source)
        return source

    def remove(self, name: str) -> None:
        self._sources.pop(name, None)
        self._held.pop(name, None)

    def contract(self, check: Callable[[str, T], str | None]) -> None:
        """Add a check (name, entry) -> why it is broken, or None; every entry resolved so far is checked now."""
        self._contracts.append(check)
        for name, made in list(self._held.items()):
            self._check(name, made, [check])

    def unknown(self, name: str) -> str:
        """Why ``name`` is no entry, in one line naming the known ones (a package's own error carries it)."""
        return f"unknown {self.kind} '{name}' (known: {', '.join(self._sources)})"

    def __getitem__(self, name: str) -> T:
        if name not in self._held:
            source = self._sources[name]  # KeyError: not registered
            module, _, attr = source.partition(":")
            importlib.import_module(module)  # the module may register the entry itself
            if name not in self._held:
                found: Any = importlib.import_module(module)
                for part in attr.split("."):
                    found = getattr(found, part)
                made = self._make(found)
                self._check(name, made)
                self._sources[name], self._held[name] = found, made
        return self._held[name]

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sources))

    def __len__(self) -> int:
        return len(self._sources)

    def _check(self, name: str, made: T, contracts: list | None = None) -> None:
        for check in self._contracts if contracts is None else contracts:
            if (why := check(name, made)) is not None:
                self.remove(name)
                raise ValueError(f"{self.kind} '{name}' cannot be registered: {why}")

    def _describe(self, source: Any) -> str:
        return source if isinstance(source, str) else getattr(source, "__qualname__", type(source).__qualname__)


def instance(cls):
    """What formats and targets hold: one instance of the registered class."""
    return cls()


METHODS: Registry = Registry("method")
FORMATS: Registry = Registry("format", make=instance)
TARGETS: Registry = Registry("target", make=instance)
POLICIES: Registry = Registry("policy")
BENCHMARKS: Registry = Registry("benchmark")
EVALUATORS: Registry = Registry("evaluator", make=instance)

# the built-in targets, policies and evaluators, imported when first used (their names are known before)
for _name, _where in {"transformers": "transformers:Transformers", "llamacpp": "llamacpp:LlamaCppTarget",
                      "ortgenai": "ortgenai:OrtGenAITarget", "vllm": "vllm:VLLMTarget"}.items():
    TARGETS.add(_name, f"agentic_compression.targets.{_where}")
for _name in ("rule", "llm", "tpe", "nsga2", "bandit", "pbt", "random"):
    POLICIES.add(_name, f"agentic_compression.policies.factories:{_name}")
EVALUATORS.add("humaneval", "agentic_compression.evaluation.humaneval:HumanEval")  # the most specific first
EVALUATORS.add("lm-eval", "agentic_compression.evaluation.measure:LmEval")
