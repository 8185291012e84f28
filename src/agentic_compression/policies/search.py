"""The ``search`` action: a searcher proposes the next configuration of one method (or of all) that has not been
tried; the normal workers run it and the evaluator measures it like any other episode."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..schemas import Strategy
from .base import PolicyView


def grid(view: PolicyView, method: str | None) -> Strategy:
    """The next untried point of the method's parameter grid, in the built-in policy's order."""
    from .rule import RulePolicy

    sub = replace(view, methods={method: view.methods[method]}) if method else view
    st = RulePolicy(templates=False).decide(sub)
    if st.action == "end":
        return st
    return st.model_copy(update={"action": "search", "reasoning": f"grid search over {method or 'all methods'}: "
                                 f"{st.reasoning}"})


SEARCHERS: dict[str, Callable[[PolicyView, str | None], Strategy]] = {"grid": grid}
