"""Replay policies against a measured grid: hypervolume versus episodes, relative to the grid's full hypervolume.

    .venv/bin/python bench/replay.py [--table bench/grid_smollm2_l200_paired.json] [--episodes 15] [--seeds 20]
                                     [--policies rule,random,tpe,nsga2,bandit,pbt] [--llm-base-url URL --llm-model M]

Every policy sees what it would see in a real run (the model's spec and config, the registry's available methods
that the table's targets run, the same --set overrides the grid used, the history of measured episodes, the
frontier; not the skill memory, nor the shipped prior built from these tables) and its proposals are
answered from the table. A proposal the grid did not measure is skipped (added to `tried`, no episode spent), the
same rule for every policy. Seeded policies run over --seeds seeds; deterministic ones give the same curve for
each seed. Prints median [p25, p75] of HV / full HV at selected episodes, and the episode each policy first
reaches 0.97. Each figure is given twice: plain, and with interval ties (`tied`: a gain inside its measurement's
error counts as none: an accuracy within 1.96 standard errors above the baseline's, a paired latency whose interval
holds the baseline's, are read as the baseline's), each over its own full hypervolume.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


def load_env(table_path: Path):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from grid import OVERRIDES

    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.methods import available_methods
    from agentic_compression.models import resolve
    from agentic_compression.schemas import EvaluationResult
    from agentic_compression.targets import get

    table = json.loads(table_path.read_text())
    path, canonical = resolve(table["model"])
    spec = infer_spec(canonical, path, online=False)
    config = json.loads((path / "config.json").read_text())
    base = EvaluationResult(**table["baseline"])
    rows = {r["key"]: r for r in table["rows"]}
    targets = [get(t) for t in table["eval"].get("target", "transformers").split(",")]  # older tables: none
    methods = {n: m for n, m in available_methods().items() if any(t.offers(m) for t in targets)}  # as a run's
    return spec, config, methods, base, rows, OVERRIDES


def tied(row: dict, base) -> dict:
    """A row's objectives with every gain inside its measurement's error read as no gain: the baseline's value
    where the accuracy is within 1.96 standard errors above it, or a measured interval holds it."""
    from agentic_compression.objectives import OBJECTIVES

    out, b = dict(row["objectives"]), base.objectives()
    se = row.get("accuracy_stderr")
    if se and b["accuracy"] < out["accuracy"] <= b["accuracy"] + 1.96 * se:
        out["accuracy"] = b["accuracy"]
    for k, iv in (row.get("intervals") or {}).items():
        v = out.get(k)
        if iv and v is not None and b.get(k) is not None and OBJECTIVES[k] * (v - b[k]) > 0 and iv[0] <= b[k] <= iv[1]:
            out[k] = b[k]
    return out


def volume(points: list[dict], rows: dict, base, ties: bool) -> float:
    """The hypervolume of the baseline and the measured rows ``points`` (keys), as a run computes it (a dominated
    point adds nothing; an objective some row cannot tell apart is left out), plain or with interval ties."""
    from agentic_compression.loop.pareto import ParetoFrontier
    from agentic_compression.schemas import ParetoSolution, Strategy

    f = ParetoFrontier(baseline=base.objectives(), tolerance={})
    f.solutions = [ParetoSolution(episode_id=k, objectives=tied(rows[k], base) if ties else rows[k]["objectives"],
                                  intervals=rows[k].get("intervals") or {}, strategy=Strategy(action="pipeline"))
                   for k in points]
    f.solutions.append(ParetoSolution(episode_id="baseline", objectives=base.objectives(), strategy=Strategy(
        action="pipeline")))
    return f.hypervolume()


def replay(policy, env, episodes: int, goal=None, keys: list | None = None) -> tuple[list[float], int | None]:
    """Hypervolume after each episode (the frontier starts with the baseline, as in a run), and with ``goal`` (a
    Goals) the episode whose candidate first met it (feasible, at its size target), or None. Episodes are judged
    against the goals as a run judges them, and the policy sees the verdicts. ``keys`` receives the key of each
    episode's successful row (None for a failed one), in order."""
    from agentic_compression import goals as G
    from agentic_compression.goals import Goals
    from agentic_compression.loop.pareto import ParetoFrontier
    from agentic_compression.policies import PolicyView
    from agentic_compression.schemas import ParetoSolution, Strategy

    spec, config, methods, base, rows, overrides = env
    frontier = ParetoFrontier(baseline=base.objectives(), tolerance={})
    frontier.add(ParetoSolution(episode_id="baseline", objectives=base.objectives(), strategy=Strategy(
        action="pipeline")))
    history: list[dict] = []
    tried: set[str] = set()
    curve, met_at = [], None
    goal = goal or Goals()
    for ep in range(episodes):
        st = None
        for _ in range(500):
            view = PolicyView(spec=spec, model_config=config, methods=methods, baseline=base,
                              frontier=frontier.summary(), history=history, tried=set(tried),
                              episodes_left=episodes - ep, seconds_left=1e9, overrides=overrides, goals=goal)
            st = policy.decide(view)
            if st.action == "end" or st.key() in rows:
                break
            tried.add(st.key())  # not in the grid: skipped
        if st is None or st.action == "end" or st.key() not in rows:
            curve.extend([frontier.hypervolume()] * (episodes - ep))
            break
        row = rows[st.key()]
        tried.add(st.key())
        ok = row["status"] == "success"
        if keys is not None:
            keys.append(st.key() if ok else None)
        eid = f"episode_{ep:03d}"
        entered = ok and frontier.add(ParetoSolution(episode_id=eid, objectives=row["objectives"], strategy=st,
                                                     intervals=row.get("intervals") or {}))
        history.append({"episode_id": eid, "strategy": st.model_dump(), "status": row["status"],
                        "objectives": row["objectives"], "error": row["error"], "entered_frontier": entered,
                        "relative": relative(row, base) if ok else None})
        if ok and goal.active():  # judged only on what goals read: the objectives and the accuracy's stderr
            measured = base.model_construct(**row["objectives"], accuracy_stderr=row["accuracy_stderr"])
            why = G.judge(measured, base, goal)
            history[-1].update(feasible=not why, infeasible_because=why,
                               goal_violations=G.violations(measured, base, goal))
            if met_at is None and G.met(measured, base, goal):
                met_at = ep + 1
        curve.append(frontier.hypervolume())
    return curve, met_at


def relative(row: dict, base) -> dict[str, float]:
    """What a run's history holds for an episode: its objectives and perplexity over the baseline's."""
    from agentic_compression.objectives import ratio

    out = {k: ratio(v, getattr(base, k)) for k, v in row["objectives"].items() if v is not None and getattr(base, k)}
    if row.get("perplexity") and base.perplexity:
        out["perplexity"] = row["perplexity"] / base.perplexity
    return out


def full_hypervolume(env, ties: bool = False) -> float:
    """Every measured point's volume (a dominated one adds none)."""
    base, rows = env[3], env[4]
    return volume([k for k, r in rows.items() if r["status"] == "success"], rows, base, ties)


def make_policy(name: str, seed: int, args):
    from agentic_compression.policies import RulePolicy, search

    if name == "rule":
        return RulePolicy()
    if name == "llm":
        from agentic_compression.config import LLMSettings
        from agentic_compression.policies.llm import LLMPolicy

        return LLMPolicy(LLMSettings(base_url=args.llm_base_url, model=args.llm_model, mode=args.llm_mode,
                                     temperature=0.7, timeout_s=300))
    return search.make(name, seed)


SEEDED = {"random", "tpe", "nsga2", "pbt", "llm"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", type=Path, default=REPO / "bench" / "grid_smollm2_l200_paired.json")
    ap.add_argument("--episodes", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--policies", default="rule,random,tpe,nsga2,bandit,pbt")
    ap.add_argument("--at", default="3,5,10,15")
    ap.add_argument("--goal", help="goal mode, e.g. max_accuracy_drop=0.01,target_size_ratio=0.35: episodes until "
                    "the first feasible candidate at the target, per policy")
    ap.add_argument("--llm-base-url")
    ap.add_argument("--llm-model", default="gpt-4o")
    ap.add_argument("--llm-mode", default="prompt")
    a = ap.parse_args()
    env = load_env(a.table)
    full, full_tied = full_hypervolume(env), full_hypervolume(env, ties=True)
    rows = env[4]
    paired = any(r.get("intervals") for r in rows.values())
    print(f"table: {a.table} (latency {'paired with the baseline' if paired else 'unpaired: measured before pairing'})")
    print(f"grid: {len(rows)} strategies ({sum(r['status'] == 'success' for r in rows.values())} measured), "
          f"full hypervolume {full:.4f}, with interval ties {full_tied:.4f}\n")
    if a.goal:
        return goal_mode(env, a)
    at = [int(x) for x in a.at.split(",") if int(x) <= a.episodes]
    print("| policy | " + " | ".join(f"HV/full @{k} (tied)" for k in at) + " | first episode >= 0.97 (median) |")
    print("|---|" + "---|" * (len(at) + 1))
    for name in a.policies.split(","):
        seeds = range(a.seeds) if name in SEEDED else range(1)
        curves, tied_curves = [], []
        for s in seeds:
            keys: list = []
            curves.append([hv / full for hv in replay(make_policy(name, s, a), env, a.episodes, keys=keys)[0]])
            tied_curves.append([volume([k for k in keys[:n] if k], env[4], env[3], ties=True) / full_tied
                                for n in range(1, a.episodes + 1)])

        def cell(k: int) -> str:
            med = []
            for cs in (curves, tied_curves):
                xs = sorted(c[k - 1] for c in cs)
                q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
                med.append((statistics.median(xs), q[0], q[2]))
            (m, lo, hi), (t, _, _) = med
            return f"{m:.3f} [{lo:.3f}, {hi:.3f}] ({t:.3f})"

        firsts = [next((i + 1 for i, v in enumerate(c) if v >= 0.97), None) for c in curves]
        reached = [f for f in firsts if f is not None]
        first = f"{statistics.median(reached):g} ({len(reached)}/{len(curves)} runs)" if reached else "never"
        print(f"| {name}{' (' + str(len(curves)) + ' seeds)' if len(curves) > 1 else ''} | "
              + " | ".join(cell(k) for k in at) + f" | {first} |")


def goal_mode(env, a) -> None:
    from agentic_compression import goals as G
    from agentic_compression.goals import Goals

    goal = Goals(**dict(kv.split("=", 1) for kv in a.goal.split(",")), stop_when_met=True)
    base, rows = env[3], env[4]
    reachable = [k for k, r in rows.items() if r["status"] == "success" and G.met(
        base.model_construct(**r["objectives"], accuracy_stderr=r["accuracy_stderr"]), base, goal)]
    print(f"goal: {goal.model_dump(exclude_none=True)}; {len(reachable)} of the grid's strategies meet it\n")
    print(f"| policy | episodes to the first candidate that meets the goal: median [p25, p75] | runs that met it "
          f"within {a.episodes} |")
    print("|---|---|---|")
    for name in a.policies.split(","):
        seeds = range(a.seeds) if name in SEEDED else range(1)
        hits = [replay(make_policy(name, s, a), env, a.episodes, goal)[1] for s in seeds]
        # a run that never met it counts as episodes + 1 in the quantiles (it needs more than the budget)
        xs = sorted(h if h is not None else a.episodes + 1 for h in hits)
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        fmt = lambda v: f"{v:g}" if v <= a.episodes else f">{a.episodes}"  # noqa: E731
        print(f"| {name}{' (' + str(len(xs)) + ' seeds)' if len(xs) > 1 else ''} | {fmt(statistics.median(xs))} "
              f"[{fmt(q[0])}, {fmt(q[2])}] | {sum(h is not None for h in hits)}/{len(hits)} |")


if __name__ == "__main__":
    main()
