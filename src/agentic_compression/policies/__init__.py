from ..registry import POLICIES
from .base import Policy, PolicyView, candidate_steps, propose
from .rule import RulePolicy


def make(name: str, cfg=None) -> Policy:
    """The policy called ``name`` (registry.POLICIES), configured from a RunConfig when one is given."""
    from ..errors import UserError

    if name not in POLICIES:
        raise UserError(f"unknown policy '{name}'", f"choose one of: {', '.join(POLICIES)}")
    return POLICIES[name](cfg)


__all__ = ["POLICIES", "Policy", "PolicyView", "RulePolicy", "candidate_steps", "make", "propose"]
