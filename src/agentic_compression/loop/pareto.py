"""The Pareto frontier over the declared objectives (objectives.py: accuracy max; latency, memory, size, CO2 and
KL divergence min), its hypervolume, and a balanced pick. Objective vectors are compared after turning every
objective into one to minimise."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..objectives import OBJECTIVES, normalised, tolerances
from ..reward import RewardSettings, reward
from ..schemas import ParetoSolution

Vector = tuple[float, ...]


def to_min(objectives: Mapping[str, float | None]) -> Vector:
    """Objective dict -> vector to minimise (maximised objectives negated), in OBJECTIVES order. An objective that
    was not measured (None: a runtime without full logits has no KL divergence) reads 0 here; ``bounds`` makes it
    None, so it ties with everything and adds no hypervolume."""
    return tuple(-sign * (objectives.get(k) or 0.0) for k, sign in OBJECTIVES.items())


Bounds = tuple  # per objective, in to_min space: (low, high), POINT (no interval), or None (cannot tell apart)
POINT = ()


def bounds(intervals: Mapping[str, Sequence[float] | None] | None,
           objectives: Mapping[str, float | None] | None = None) -> Bounds:
    """A solution's confidence intervals, turned like to_min: absent objectives are POINT, None stays None, and an
    objective that was not measured (its value None in ``objectives``) is None: it can tell nothing apart."""
    out = []
    for k, sign in OBJECTIVES.items():
        iv = (intervals or {}).get(k, POINT)
        if objectives is not None and objectives.get(k) is None:
            iv = None
        out.append(iv if iv is None or iv == POINT else tuple(sorted((-sign * iv[0], -sign * iv[1]))))
    return tuple(out)


def compare(x: float, y: float, tol: float, ix=POINT, iy=POINT) -> int:
    """-1: x is better (smaller) beyond the noise, 1: worse, 0: a tie. The noise is the two confidence intervals
    when either value has one (a tie when they overlap; a point is its own interval), a measurement that cannot tell
    values apart (None) ties always, and otherwise the relative tolerance ``tol`` of ``y``."""
    if ix is None or iy is None:
        return 0
    if ix != POINT or iy != POINT:
        (lx, hx), (ly, hy) = ix if ix != POINT else (x, x), iy if iy != POINT else (y, y)
        return -1 if hx < ly else 1 if hy < lx else 0
    d = abs(y) * tol
    return -1 if x < y - d else 1 if x > y + d else 0


def _compare_all(a: Vector, b: Vector, tol: Vector | None, ia: Bounds | None, ib: Bounds | None) -> list[int]:
    n = len(b)
    return [compare(x, y, t, i, j) for x, y, t, i, j in zip(a, b, tol or (0.0,) * n, ia or (POINT,) * n,
                                                             ib or (POINT,) * n)]


def dominates(a: Vector, b: Vector, tol: Vector | None = None, ia: Bounds | None = None,
              ib: Bounds | None = None) -> bool:
    """a is no worse than b everywhere and better somewhere (both minimised). With ``tol`` (relative, per
    objective) differences within measurement noise are ties: a must be no worse than b beyond tol everywhere and
    better than b beyond tol somewhere. Where either has a confidence interval (``ia``, ``ib``: ``bounds``), the
    intervals decide instead: overlapping ones tie."""
    c = _compare_all(a, b, tol, ia, ib)
    return all(x <= 0 for x in c) and any(x < 0 for x in c)


def equivalent(a: Vector, b: Vector, tol: Vector | None = None, ia: Bounds | None = None,
               ib: Bounds | None = None) -> bool:
    return all(x == 0 for x in _compare_all(a, b, tol, ia, ib))


# Relative differences treated as noise: timings, RSS and energy vary run to run by a few percent; accuracy
# (paired, same items) is exact; sizes within 0.1% are the same format (recipe / config text differs by bytes).
DEFAULT_TOLERANCE = tolerances()


def hypervolume(points: Sequence[Vector], ref: Vector) -> float:
    """Exact volume dominated by ``points`` and bounded by ``ref`` (minimisation), by slicing along the first
    axis (HSO); points not strictly better than ``ref`` in every objective add nothing."""
    pts = [p for p in points if all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[0])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper > p[0]:
            volume += (upper - p[0]) * hypervolume([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume


class ParetoFrontier:
    def __init__(self, baseline: Mapping[str, float] | None = None, ref_factor: float = 2.0,
                 tolerance: Mapping[str, float] | None = None, reward: RewardSettings | None = None):
        self.solutions: list[ParetoSolution] = []
        self.reward = reward or RewardSettings()
        self.baseline = dict(baseline) if baseline else None
        self.ref_factor = ref_factor
        self.tolerance = dict(DEFAULT_TOLERANCE if tolerance is None else tolerance)
        self.tol: Vector = tuple(self.tolerance.get(k, 0.0) for k in OBJECTIVES)

    # -- normalisation: every objective relative to the baseline, so no unit dominates the hypervolume --
    def _norm(self, objectives: Mapping[str, float]) -> Vector:
        if not self.baseline:
            return to_min(objectives)
        rel = {k: normalised(k, objectives.get(k), self.baseline.get(k)) for k in OBJECTIVES}
        return tuple(-s * ((objectives.get(k) or 0.0) if rel[k] is None else rel[k]) for k, s in OBJECTIVES.items())

    def reference(self) -> Vector:
        """Accuracy 0 and ``ref_factor`` x the baseline for each cost (in baseline-normalised units)."""
        return tuple(0.0 if s > 0 else float(self.ref_factor) for s in OBJECTIVES.values())

    def add(self, solution: ParetoSolution) -> bool:
        """Insert if no member dominates it or matches it within noise; drop members it dominates.
        True when it entered."""
        for m in self.solutions:
            if self.beats(m, solution) or self._equivalent(solution, m):
                return False
        self.solutions = [m for m in self.solutions if not self.beats(solution, m)]
        self.solutions.append(solution)
        return True

    def beats(self, a: ParetoSolution, b: ParetoSolution) -> bool:
        """a dominates b beyond the noise: the tolerance, or the intervals where measured (pareto.compare)."""
        return dominates(to_min(a.objectives), to_min(b.objectives), self.tol, bounds(a.intervals, a.objectives),
                         bounds(b.intervals, b.objectives))

    def _equivalent(self, a: ParetoSolution, b: ParetoSolution) -> bool:
        return equivalent(to_min(a.objectives), to_min(b.objectives), self.tol, bounds(a.intervals, a.objectives),
                          bounds(b.intervals, b.objectives))

    def record_dominance(self, evaluated: Mapping[str, Mapping[str, float]],
                         intervals: Mapping[str, Mapping] | None = None) -> None:
        """Fill each member's ``dominates`` list with the ids of every evaluated candidate it dominates
        (``intervals``: each candidate's confidence intervals, where measured)."""
        iv = intervals or {}
        for s in self.solutions:
            v, own = to_min(s.objectives), bounds(s.intervals, s.objectives)
            s.dominates = sorted(e for e, o in evaluated.items() if e != s.episode_id and
                                 dominates(v, to_min(o), self.tol, own, bounds(iv.get(e), o)))

    def hypervolume(self) -> float:
        """The volume the members dominate, over the objectives that were measured: one that some member's
        measurement cannot tell apart (an interval of None: energy estimated from the latency and a power model,
        where RAPL is not readable) is left out, as it is left out of dominance, so its noise adds no volume."""
        blind = {i for s in self.solutions for i, b in enumerate(bounds(s.intervals, s.objectives)) if b is None}
        keep = [i for i in range(len(OBJECTIVES)) if i not in blind]
        ref = self.reference()
        return hypervolume([tuple(v[i] for i in keep) for v in (self._norm(s.objectives) for s in self.solutions)],
                           tuple(ref[i] for i in keep))

    def balanced(self, compressed: bool = False) -> ParetoSolution | None:
        """With a baseline: the member with the highest reward (reward.py: weighted relative changes against the
        baseline, an accuracy floor). Without one: the member closest to the ideal point, min-max normalised.
        ``compressed``: among the members other than the baseline (what a run recommends)."""
        members = [s for s in self.solutions if not compressed or s.episode_id != "baseline"]
        if not members:
            return None
        if self.baseline:
            return max(members, key=lambda s: reward(s.objectives, self.baseline, self.reward))
        vs = [to_min(s.objectives) for s in self.solutions]
        lo = [min(c) for c in zip(*vs)]
        span = [(max(c) - min(c)) or 1.0 for c in zip(*vs)]

        def dist(v: Vector) -> float:
            return sum(((x - l) / w) ** 2 for x, l, w in zip(v, lo, span)) ** 0.5

        return min(members, key=lambda s: dist(to_min(s.objectives)))

    def summary(self) -> list[dict]:
        return [{"episode_id": s.episode_id, "objectives": s.objectives, "steps": [st.model_dump() for st in
                 s.strategy.steps]} for s in self.solutions]
