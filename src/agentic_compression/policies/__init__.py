from .base import Policy, PolicyView, candidate_steps, propose
from .rule import RulePolicy

POLICIES = ("rule", "llm", "tpe", "nsga2", "bandit", "pbt", "random")


def make(name: str, cfg=None) -> Policy:
    """The policy called ``name``, configured from a RunConfig when one is given."""
    from ..errors import UserError

    if name == "rule":
        return RulePolicy()
    if name == "llm":
        from .llm import LLMPolicy

        return LLMPolicy(cfg.llm, seed=cfg.seed) if cfg is not None else LLMPolicy()
    if name in POLICIES:
        from . import search

        return search.make(name, cfg.seed if cfg is not None else 0)
    raise UserError(f"unknown policy '{name}'", f"choose one of: {', '.join(POLICIES)}")


__all__ = ["POLICIES", "Policy", "PolicyView", "RulePolicy", "candidate_steps", "make", "propose"]
