"""A guard on the baseline: a model that is broken (a bad conversion, a lost tokenizer, the wrong weights) must stop
the run with a clear error, not be optimised. Three signs, each enough (--force runs anyway and records it)."""
from __future__ import annotations

from .. import benchmarks
from ..schemas import EvaluationResult

PPL_ABSURD = 1000.0  # trained LMs score tens on WikiText-2; a model guessing uniformly scores its vocabulary size
# items a benchmark needs before "at chance within its standard error" means anything: with 24 items the stderr is
# near 0.1, and SmolLM2-135M's HellaSwag (0.33 ± 0.10 there, 0.45 at 100) sat within it of chance
MIN_ITEMS = 100


def problems(result: EvaluationResult) -> list[str]:
    """Why this baseline looks broken (empty: it looks like a working language model)."""
    out = []
    if result.perplexity is not None and result.perplexity > PPL_ABSURD:
        out.append(f"perplexity {result.perplexity:,.0f} is absurd for a trained language model (over "
                   f"{PPL_ABSURD:,.0f})")
    scored = {}
    for name, b in (result.accuracy_detail.get("benchmarks") or {}).items():
        chance = benchmarks.BENCHMARKS[name].chance if name in benchmarks.BENCHMARKS else None
        if chance is not None and isinstance(b, dict) and b.get("value") is not None and \
                (b.get("n") or 0) >= MIN_ITEMS:
            scored[name] = (b["value"], b.get("stderr") or 0.0, chance)
    if scored and all(v <= chance + max(se, 0.01) for v, se, chance in scored.values()):
        out.append("every benchmark is at chance: " + ", ".join(
            f"{n} {v:.3f} ± {se:.3f} (chance {c:g})" for n, (v, se, c) in scored.items()))
    gen = result.latency.get("generated") or []
    if len(gen) >= 4 and len(set(gen)) == 1:
        out.append(f"greedy generation repeats one token (id {gen[0]}) {len(gen)} times")
    return out
