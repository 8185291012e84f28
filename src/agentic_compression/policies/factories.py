"""The built-in policies, each made from a RunConfig (or none: the defaults); registry.py names them lazily, so
only the one a run uses is imported."""
from __future__ import annotations


def rule(cfg=None):
    from .rule import RulePolicy

    return RulePolicy()


def llm(cfg=None):
    from .llm import LLMPolicy

    return LLMPolicy(cfg.llm, seed=cfg.seed) if cfg is not None else LLMPolicy()


def _search(name: str):
    def make(cfg=None):
        from . import search

        return search.make(name, cfg.seed if cfg is not None else 0)
    return make


tpe, nsga2, bandit, pbt, random = (_search(n) for n in ("tpe", "nsga2", "bandit", "pbt", "random"))
