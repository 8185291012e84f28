from .base import Policy, PolicyView, candidate_steps
from .rule import RulePolicy

POLICIES = {"rule": RulePolicy}


def make(name: str) -> Policy:
    from ..errors import UserError

    if name not in POLICIES:
        raise UserError(f"unknown policy '{name}'", f"choose one of: {', '.join(POLICIES)}")
    return POLICIES[name]()


__all__ = ["POLICIES", "Policy", "PolicyView", "RulePolicy", "candidate_steps", "make"]
