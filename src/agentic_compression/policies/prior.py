"""The shipped prior: what the project's own measured grids say about each method family, read by the skill memory
beside the user's own outcomes, so that a new install's first episodes avoid what was measured to fail or wreck a
model of that family and size, and go first to what earned the most there.

``prior.json`` is built by ``bench/prior.py`` from the committed replay tables (``bench/grid_*.json``) and ships in
the package, versioned, with its provenance. Each entry is one measured candidate: the model's family and size, the
benchmark, the target it was measured on, the lead step's method and bits, its verdict (``ok``; ``failed``: the
step or its evaluation raised; ``wrecked``: perplexity over ``WRECKED`` times the baseline's) and the reward it
earned (reward.py, default weights). ``skills.SkillMemory.recommend`` weighs the entries as it weighs the user's
outcomes, at ``WEIGHT`` each, and drops a family's entries where the user's own outcomes for that family on a
similar model exist: the user's runs override the prior.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERSION = 1
PATH = Path(__file__).with_name("prior.json")
WRECKED = 2.0  # perplexity over the baseline's beyond which a result is not a trade-off but a broken model
WEIGHT = 0.5  # one entry of the prior counts half as much as one of the user's own outcomes on the same model


def load(path: Path = PATH) -> list[dict[str, Any]]:
    """The prior's entries; none when the file is absent, or of another version (a stale prior is not read)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["entries"] if data.get("version") == VERSION else []


def verdict(status: str, perplexity_ratio: float | None) -> str:
    if status != "success":
        return "failed"
    return "wrecked" if perplexity_ratio is not None and perplexity_ratio > WRECKED else "ok"
