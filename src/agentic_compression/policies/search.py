"""Search that acts on the loop. Each searcher proposes the next strategy from the measured history; the normal
workers run it and the evaluator measures it like any other episode. The search state is the experiment's own
history (rebuilt on every decision, deterministic for a seed), so it persists and resumes with the experiment.

- ``grid``: the next untried grid point, in the built-in policy's order.
- ``tpe`` / ``nsga2``: Optuna's multi-objective TPE and NSGA-II over the registry's discrete search space
  (method, then its choices and grids), told every measured episode's objectives (failures as FAIL).
- ``bandit``: UCB1 over methods, each arm's reward from reward.py; inside an arm, the built-in policy's order.
- ``pbt``: population-based training of the recovery (LoRA) hyper-parameters on the best compressed candidate.
- ``random``: a seeded uniform choice among untried configurations (the baseline every searcher must beat).

With goals (goals.py), each measured episode's margins past the goals are Optuna's constraints (c-TPE; NSGA-II's
constrained domination), an infeasible pull earns the bandit a failure's reward, and PBT recovers only a candidate
whose size, latency and memory already meet the goals (LoRA can mend accuracy, not those). Random stays blind.

Each is a Policy (``--policy tpe`` ...); the LLM coordinator's ``search`` action calls the same policies (``search``),
seeded as the run is.
"""
from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

from ..reward import FAILED, reward
from ..schemas import OBJECTIVES, Strategy
from .base import PolicyView, candidate_steps, chainable, learned, m_action, single, wrecked_methods


def _rule(view: PolicyView, method: str | None = None) -> Strategy:
    from .rule import RulePolicy

    sub = replace(view, methods={method: view.methods[method]}) if method else view
    return RulePolicy(templates=False).decide(sub)


def _end(name: str, why: str) -> Strategy:
    return Strategy(action="end", reasoning=why, policy=name)


def _rewards(view: PolicyView, judged: bool = True) -> list[tuple[dict, float]]:
    """(history entry, reward) for every finished episode. ``judged``: one that breaks the run's goals earns what a
    failed one does (a candidate outside the feasible region is not a usable result)."""
    if view.baseline is None:
        return []
    base = view.baseline.objectives()
    return [(h, reward(h["objectives"] if h["status"] == "success" and not (judged and h.get("feasible") is False)
                       else None, base, view.reward)) for h in view.history]


def grid(view: PolicyView, method: str | None = None) -> Strategy:
    st = _rule(view, method)
    if st.action == "end":
        return st
    return st.model_copy(update={"action": "search", "reasoning": f"grid search over {method or 'all methods'}: "
                                 f"{st.reasoning}"})


# ---- Optuna: TPE and NSGA-II ----
class Dim(NamedTuple):
    """One parameter of the search space: its options (an ordered parameter's in their order, Param.ordered)."""

    options: list
    ordered: bool


def _space(view: PolicyView) -> dict[str, dict[str, Dim]]:
    """method -> {param: Dim} for the standalone methods available here (user-fixed parameters excluded)."""
    out = {}
    for name, m in sorted(view.methods.items()):
        if m.standalone:
            out[name] = {p.name: Dim(p.ordered() or p.options(), bool(p.ordered())) for p in m.params
                         if p.options() is not None and p.name not in view.overrides.get(name, {})}
    return out


def _distributions(space: dict[str, dict[str, Dim]]) -> dict:
    """The study's distributions: the method is categorical, and so is an unordered parameter; an ordered one
    (group size, sparsity, ratio) is the integer position in its ordered options, so TPE's density over it, and
    NSGA-II's crossover, see that 0.3 lies between 0.1 and 0.5."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    dists = {"method": CategoricalDistribution(list(space))}
    for m, params in space.items():
        dists.update({f"{m}.{p}": IntDistribution(0, len(d.options) - 1) if d.ordered
                      else CategoricalDistribution(d.options) for p, d in params.items()})
    return dists


def _encode(dist, options: list, value):
    """One of a parameter's options as the study holds it (an ordered one: its position)."""
    from optuna.distributions import IntDistribution

    return options.index(value) if isinstance(dist, IntDistribution) else value


def _suggest(trial, name: str, dist, options: list):
    """Sample one parameter and return its value (an ordered one is sampled as its position)."""
    from optuna.distributions import IntDistribution

    if isinstance(dist, IntDistribution):
        return options[trial.suggest_int(name, dist.low, dist.high)]
    return trial.suggest_categorical(name, dist.choices)


class OptunaPolicy:
    def __init__(self, sampler: str = "tpe", seed: int = 0, population: int = 4):
        self.name, self.seed, self.population = sampler, seed, population

    def _sampler(self, n_done: int):
        import optuna

        seed = self.seed * 1000 + n_done  # deterministic, and not the same draw twice
        if self.name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True, group=True,
                                          constant_liar=True)

    def decide(self, view: PolicyView, method: str | None = None) -> Strategy:
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        space = _space(view)
        if method:
            space = {method: space[method]}
        if not candidate_steps(replace(view, methods={m: view.methods[m] for m in space})):
            return _end(self.name, "every configuration of the search space was tried")
        dists = _distributions(space)
        # the objectives every measured episode has (KL divergence is missing in a runtime without full logits)
        keys = [k for k in OBJECTIVES if all(h["objectives"].get(k) is not None for h in view.history
                                             if h["status"] == "success")]
        study = optuna.create_study(directions=["maximize" if OBJECTIVES[k] > 0 else "minimize" for k in keys],
                                    sampler=self._sampler(len(view.history)))
        def point(strategy: dict) -> dict | None:  # a single-step strategy of the space as the study's params
            steps = strategy["steps"]
            if len(steps) != 1 or steps[0]["method"] not in space or strategy.get("base", "base") != "base":
                return None
            m = steps[0]["method"]
            params = {"method": m}
            for p, d in space[m].items():
                if (v := steps[0]["params"].get(p)) not in d.options:
                    return None
                params[f"{m}.{p}"] = _encode(dists[f"{m}.{p}"], d.options, v)
            return params

        for h in view.history:  # tell what was measured
            if (params := point(h["strategy"])) is None:
                continue
            ok = h["status"] == "success"
            study.add_trial(create_trial(
                params=params, distributions={k: dists[k] for k in params},
                values=[h["objectives"][k] for k in keys] if ok else None,
                state=TrialState.COMPLETE if ok else TrialState.FAIL,
                # the goals as Optuna's constraints (<= 0 kept): c-TPE and NSGA-II's constrained domination
                system_attrs={f"constraints:{g}": v for g, v in (h.get("goal_violations") or {}).items()}))
        for pending in view.pending:  # proposed in this batch, not measured: running trials (TPE's constant liar)
            if (params := point(pending.model_dump())) is not None:
                study.enqueue_trial(params)
                running = study.ask()
                running.suggest_categorical("method", dists["method"].choices)
                m = params["method"]
                for p, d in space[m].items():
                    _suggest(running, f"{m}.{p}", dists[f"{m}.{p}"], d.options)
        for _ in range(200):
            trial = study.ask()
            m = trial.suggest_categorical("method", list(space))
            chosen = {p: _suggest(trial, f"{m}.{p}", dists[f"{m}.{p}"], d.options) for p, d in space[m].items()}
            step = view.step(m, chosen)
            st = single(m_action(view, step), step)
            if view.methods[m].check(step.params, view.model_config) is None and st.key() not in view.tried:
                told = sum(t.state != TrialState.RUNNING for t in study.trials)
                return st.model_copy(update={"policy": self.name, "reasoning": (
                    f"{'NSGA-II' if self.name == 'nsga2' else 'multi-objective TPE'} proposal after {told} "
                    f"told trials (seed {self.seed})")})
            study.tell(trial, state=TrialState.PRUNED)  # tried already or does not fit this model
        st = _rule(view, method)  # the sampler keeps landing on tried points: take the next untried one
        return st.model_copy(update={"policy": self.name,
                                     "reasoning": f"{self.name}: sampler exhausted, next untried: {st.reasoning}"})


# ---- UCB1 bandit over methods ----
class BanditPolicy:
    name = "bandit"

    def __init__(self, c: float = 1.0):
        self.c = c

    def decide(self, view: PolicyView, method: str | None = None) -> Strategy:
        arms = sorted({s.method for s in candidate_steps(view)})
        if method:
            arms = [a for a in arms if a == method]
        if not arms:
            return _end(self.name, "every configuration of every arm was tried")
        pulls: dict[str, list[float]] = {}
        for h, r in _rewards(view):
            for s in h["strategy"]["steps"][:1]:
                pulls.setdefault(s["method"], []).append(r)
        best: dict[str, float] = {}  # per method, its best family's learned reward in the skill memory
        for (m, _), v in learned(view).items():
            best[m] = max(v, best.get(m, -1.0))
        for a in wrecked_methods(view) & set(arms) - set(pulls):  # the memory says it wrecks such a model
            pulls[a] = [FAILED]  # counted as one failed pull
        pending = Counter(p.steps[0].method for p in view.pending if p.steps)  # pulled in this batch, no reward yet
        untried = [a for a in arms if a not in pulls and a not in pending]
        total = sum(len(v) for v in pulls.values()) + sum(pending.values())
        if untried:  # what the skill memory (and the shipped prior) rewards first, then the spec's preference
            pref = view.spec.preferred_methods
            arm = min(untried, key=lambda a: (-best.get(a, 0.0), pref.index(a) if a in pref else len(pref), a))
            why = f"arm {arm} never pulled"
        else:
            def mean(a: str) -> float:
                return sum(pulls[a]) / len(pulls[a]) if pulls.get(a) else 0.0

            def ucb(a: str) -> float:  # a pending pull counts in n (it narrows the bound) but not in the mean
                return mean(a) + self.c * math.sqrt(2 * math.log(total) / (len(pulls.get(a, [])) + pending[a]))
            arm = max(arms, key=lambda a: (ucb(a), a))
            why = (f"UCB1: arm {arm} mean reward {mean(arm):.3f} over {len(pulls.get(arm, []))} pulls"
                   f"{f' (+{pending[arm]} pending)' if pending[arm] else ''}, bound {ucb(arm):.3f}")
        st = _rule(view, arm)
        return st.model_copy(update={"policy": self.name, "reasoning": f"{why}; {st.reasoning}"})


# ---- population-based training of the recovery hyper-parameters ----
@dataclass
class PBT:
    """Truncation-selection PBT over hyper-parameters. ``space``: name -> ("log", lo, hi) | ("int", lo, hi) |
    ("choice", [values]). A generation's bottom ``quantile`` is replaced by a copy of a top-``quantile`` member,
    explored (numbers x0.8 or x1.25, a choice moves to a neighbour); the other members continue (``continue_``)."""

    space: dict[str, tuple]
    population: int = 4
    quantile: float = 0.25
    seed: int = 0
    continue_: Callable[[dict], dict] | None = None

    def initial(self) -> list[dict]:
        rng = random.Random(f"{self.seed}|pbt|0")
        out = []
        for _ in range(self.population):
            p = {}
            for k, spec in self.space.items():
                if spec[0] == "log":
                    p[k] = float(math.exp(rng.uniform(math.log(spec[1]), math.log(spec[2]))))
                elif spec[0] == "int":
                    p[k] = rng.randint(spec[1], spec[2])
                else:
                    p[k] = rng.choice(spec[1])
            out.append(p)
        return out

    def explore(self, params: dict, rng: random.Random) -> dict:
        out = dict(params)
        for k, spec in self.space.items():
            if spec[0] in ("log", "int"):
                v = out[k] * rng.choice((0.8, 1.25))
                v = min(max(v, spec[1]), spec[2])
                out[k] = int(round(v)) if spec[0] == "int" else float(v)
            else:
                opts = spec[1]
                i = opts.index(out[k]) + rng.choice((-1, 1))
                out[k] = opts[min(max(i, 0), len(opts) - 1)]
        return out

    def next_generation(self, scored: list[tuple[dict, float]], generation: int) -> list[dict]:
        """``scored``: the finished generation's (params, reward). Returns the next generation's params."""
        rng = random.Random(f"{self.seed}|pbt|{generation}")
        ranked = sorted(scored, key=lambda x: -x[1])
        k = max(1, int(len(ranked) * self.quantile))
        top, keep = ranked[:k], ranked[:len(ranked) - k]
        nxt = [self.continue_(p) if self.continue_ else dict(p) for p, _ in keep]
        nxt += [self.explore(rng.choice(top)[0], rng) for _ in range(len(ranked) - len(keep))]
        return nxt


LORA_SPACE = {"lr": ("log", 5e-5, 1e-3), "rank": ("choice", [4, 8, 16, 32]), "steps": ("int", 10, 60)}


class PBTPolicy:
    """PBT of LoRA's hyper-parameters on the compressed candidate with the highest reward that lost accuracy (so
    recovery has something to recover); until one exists, the built-in policy compresses."""

    name = "pbt"

    def __init__(self, seed: int = 0, population: int = 4):
        self.pbt = PBT(LORA_SPACE, population=population, seed=seed,
                       continue_=lambda p: {**p, "steps": min(int(p["steps"] * 1.5), LORA_SPACE["steps"][2])})

    def _target(self, view: PolicyView) -> dict | None:
        scored = [(h, r) for h, r in _rewards(view, judged=False)  # recovery may mend accuracy, nothing else:
                  if all(v <= 0 for g, v in (h.get("goal_violations") or {}).items() if g != "accuracy")
                  and chainable(h) and len(h["strategy"]["steps"]) == 1
                  and h["strategy"].get("base", "base") == "base" and view.baseline
                  and h["objectives"]["accuracy"] < view.baseline.accuracy]
        return max(scored, key=lambda x: x[1])[0] if scored else None

    def decide(self, view: PolicyView, method: str | None = None) -> Strategy:
        target = self._target(view) if "lora" in view.methods else None
        if target is None:
            st = _rule(view, method)
            return st.model_copy(update={"policy": self.name, "reasoning": "PBT needs a compressed candidate that "
                                         f"lost accuracy first; {st.reasoning}"})
        base = target["episode_id"]
        members = [(h["strategy"]["steps"][0]["params"], r) for h, r in _rewards(view, judged=False)
                   if h["strategy"].get("base") == base and h["strategy"]["steps"][0]["method"] == "lora"]
        gen, params = 0, self.pbt.initial()
        P = self.pbt.population
        while len(members) >= (gen + 1) * P:  # every finished generation breeds the next
            scored = [({k: m[k] for k in LORA_SPACE}, r) for m, r in members[gen * P:(gen + 1) * P]]
            gen += 1
            params = self.pbt.next_generation(scored, gen)
        member = len(members) - gen * P + sum(s.base == base and s.steps[0].method == "lora" for s in view.pending)
        if member >= P:  # a batch holds at most the rest of one generation: the next needs its rewards
            return _end(self.name, f"PBT generation {gen} is fully proposed; its rewards decide the next")
        p = params[member]
        step = view.step("lora", p)
        st = Strategy(action="lora", base=base, steps=[step], policy=self.name,
                      reasoning=f"PBT generation {gen}, member {member + 1}/{P} on {base}: "
                                f"lr {p['lr']:.2e}, rank {p['rank']}, steps {p['steps']}")
        if st.key() in view.tried:  # an identical member already ran: move on with the built-in policy
            return _rule(view).model_copy(update={"policy": self.name})
        return st


class RandomPolicy:
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def decide(self, view: PolicyView, method: str | None = None) -> Strategy:
        cands = [s for s in candidate_steps(view) if method in (None, s.method)]
        if not cands:
            return _end(self.name, "every configuration was tried")
        step = random.Random(f"{self.seed}|{len(view.tried)}").choice(cands)
        return single(m_action(view, step), step, reasoning="uniform random choice", policy=self.name)


ALGORITHMS = ("grid", "tpe", "nsga2", "bandit", "pbt", "random")  # what the LLM's search action may ask for


def search(view: PolicyView, algorithm: str, method: str | None = None, seed: int = 0) -> Strategy:
    """The LLM's ``search`` action: the search policy ``algorithm`` (seeded with the run's --search-seed) proposes
    the next untried configuration, of one method or of all; its strategy is labelled action "search"."""
    st = grid(view, method) if algorithm == "grid" else make(algorithm, seed).decide(view, method)
    return st if st.action == "end" else st.model_copy(update={"action": "search"})


def make(name: str, seed: int = 0) -> Any:
    return {"tpe": lambda: OptunaPolicy("tpe", seed), "nsga2": lambda: OptunaPolicy("nsga2", seed),
            "bandit": BanditPolicy, "pbt": lambda: PBTPolicy(seed), "random": lambda: RandomPolicy(seed)}[name]()
