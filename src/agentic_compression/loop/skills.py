"""The skill memory: what worked for which model and task, kept across experiments in SQLite.

``record(context, episode)`` stores a real outcome (success or failure, accuracy change against the baseline, size
and latency ratios, the reward); ``recommend(context)`` ranks method families (method + bits) by their outcomes on
similar experiments: the same model family, a similar size (log-distance of parameter counts) and the same task
weigh most. Each recommendation carries its count and a confidence that grows with it. Given the shipped prior
(prior.py), its entries join the user's outcomes at a lower weight, except for a family the user's own outcomes on a
similar model already cover: the user's runs override the prior.

Writes are single transactions (SQLite's journal makes them atomic; WAL lets readers and another experiment's
writer proceed). A file that is not a readable database is reported, renamed aside (never deleted) and replaced by
a fresh one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..objectives import ratio

log = logging.getLogger("acf.skills")

_SCHEMA = """CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY, created REAL NOT NULL, experiment TEXT, model TEXT, family TEXT, num_params INTEGER,
    task TEXT, method TEXT, bits INTEGER, strategy TEXT, success INTEGER NOT NULL, accuracy_delta REAL,
    size_ratio REAL, latency_ratio REAL, reward REAL, error TEXT)"""


def default_path() -> Path:
    return Path(os.environ.get("ACF_SKILLS", Path.home() / ".local" / "share" / "acf" / "skills.sqlite"))


@dataclass
class SkillContext:
    model: str
    family: str
    num_params: int
    task: str
    experiment: str = ""
    targets: tuple[str, ...] = ()  # the run's runtimes: a prior entry's reward counts on its own target only


class SkillMemory:
    def __init__(self, path: Path | None = None, prior: list[dict] | None = None):
        self.path = Path(path or default_path())
        self.prior = prior or []  # prior.load()'s entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set_aside: Path | None = None
        try:
            self._init()
        except sqlite3.DatabaseError as e:
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, self.set_aside)
            log.warning("skill memory %s is not a readable database (%s); set aside as %s, starting a new one",
                        self.path, e, self.set_aside)
            self._init()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def _init(self) -> None:
        with self._connect() as con:
            con.execute(_SCHEMA)
            con.execute("SELECT count(*) FROM outcomes").fetchone()

    def record(self, ctx: SkillContext, strategy: dict, success: bool, objectives: dict | None,
               baseline: dict, reward: float, error: str | None = None) -> None:
        from ..policies.rule import bits
        from ..schemas import Step

        lead = strategy["steps"][0] if strategy["steps"] else {"method": "none", "params": {}}
        rel = (lambda k: ratio(objectives[k], baseline.get(k, 0.0)) if objectives else None)
        delta = objectives["accuracy"] - baseline["accuracy"] if objectives else None
        with self._connect() as con:  # one transaction
            con.execute("INSERT INTO outcomes (created, experiment, model, family, num_params, task, method, bits, "
                        "strategy, success, accuracy_delta, size_ratio, latency_ratio, reward, error) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (time.time(), ctx.experiment, ctx.model, ctx.family, ctx.num_params, ctx.task,
                         lead["method"], bits(Step(**lead)), json.dumps(strategy, sort_keys=True), int(success),
                         delta, rel("model_size_gb"), rel("latency_ms"), reward, (error or "")[-500:] or None))

    def count(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT count(*) FROM outcomes").fetchone()[0]

    def recommend(self, ctx: SkillContext, top: int | None = 5) -> list[dict[str, Any]]:
        """Method families ranked by similarity-weighted mean reward over past outcomes (failures score -1), the
        user's and the prior's (a prior entry measured on a target this run does not have gives its verdict, not
        its reward). ``wrecked_rate``: the weighted share of outcomes that wrecked the model (the prior's verdicts),
        with its ``verdict_confidence``; ``source``: "prior" where no outcome of the family is the user's."""
        from ..policies import prior

        with self._connect() as con:  # the user's own: full weight, and their rewards count
            rows = [(*r, False, True, True) for r in con.execute(
                "SELECT family, num_params, task, method, bits, success, accuracy_delta, size_ratio, reward "
                "FROM outcomes").fetchall()]

        def similarity(family: str, n: int | None, task: str) -> float:
            w = (1.0 if family == ctx.family else 0.3) * (1.0 if task == ctx.task else 0.5)
            return w * math.exp(-abs(math.log10(max(n or 1, 1) / max(ctx.num_params, 1))))  # 10x the size -> /e

        covered: dict[tuple[str, int], float] = {}
        for family, n, task, method, b, *_ in rows:
            covered[(method, b)] = covered.get((method, b), 0.0) + similarity(family, n, task)
        for e in self.prior:
            if covered.get((e["method"], e["bits"]), 0.0) >= prior.WEIGHT:  # the user's own outcomes decide
                continue
            # a reward earned in another runtime says nothing here (its latency, its bytes); a verdict holds anywhere
            rewarded = not ctx.targets or e["target"] in ctx.targets
            rows.append((e["family"], e["num_params"], e["task"], e["method"], e["bits"], e["verdict"] == "ok",
                         e["accuracy_delta"], e["size_ratio"], e["reward"], e["verdict"] == "wrecked", False,
                         rewarded))
        groups: dict[tuple[str, int], dict[str, Any]] = {}
        for family, n, task, method, b, ok, dacc, size, rew, wrecked, mine, rewarded in rows:
            wv = similarity(family, n, task) * (1.0 if mine else prior.WEIGHT)  # the weight of its verdict
            w = wv if rewarded else 0.0  # the weight of its reward
            g = groups.setdefault((method, b), {"w": 0.0, "wv": 0.0, "reward": 0.0, "n": 0, "ok": 0, "dacc": [],
                                                "size": [], "wrecked": 0.0, "mine": False})
            g["w"] += w
            g["wv"] += wv
            g["reward"] += w * (rew if ok else -1.0)
            g["wrecked"] += wv * wrecked
            g["n"] += 1
            g["ok"] += ok
            g["mine"] |= mine
            if ok:
                g["dacc"].append(dacc)
                g["size"].append(size)
        out = []
        for (method, b), g in groups.items():
            mean = g["reward"] / g["w"] if g["w"] else 0.0
            out.append({"method": method, "bits": b, "count": g["n"], "success_rate": g["ok"] / g["n"],
                        "mean_reward": round(mean, 4),
                        "mean_accuracy_delta": round(sum(g["dacc"]) / len(g["dacc"]), 4) if g["dacc"] else None,
                        "mean_size_ratio": round(sum(g["size"]) / len(g["size"]), 4) if g["size"] else None,
                        "wrecked_rate": round(g["wrecked"] / g["wv"], 3) if g["wv"] else 0.0,
                        "verdict_confidence": round(1 - 1 / (1 + g["wv"]), 3),
                        "source": "memory" if g["mine"] else "prior",
                        "similarity": round(g["w"] / g["n"], 3),
                        "confidence": round(1 - 1 / (1 + g["w"]), 3)})
        out.sort(key=lambda r: (-r["mean_reward"] * r["confidence"], r["method"]))
        return out[:top]
