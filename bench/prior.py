"""Build the shipped prior (src/agentic_compression/prior.json, read by prior.py) from committed replay tables.

    .venv/bin/python bench/prior.py [--tables bench/grid_smollm2_l200_paired.json,bench/grid_smollm2_deploy.json]
                                    [--to src/agentic_compression/prior.json]

One entry per measured row: the model's family and size, the benchmark, the target the row was measured on, the
lead step's method, bits and parameters, its verdict (ok, failed, wrecked: perplexity over prior.WRECKED times the
baseline's), the reward it earned against the table's baseline (reward.py's default weights) and its ratios. Where
two tables measured the same strategy on the same model and target, the later table's row is kept (the committed
SmolLM2 tables at 50 and 200 items measured one grid; only the paired 200-item one is listed by default).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

TABLES = ("bench/grid_smollm2_l200_paired.json", "bench/grid_smollm2_deploy.json")


def entries(table: dict, family: str, config: dict) -> list[dict]:
    """The table's rows as prior entries; a failed row whose strategy acf's own checks now refuse (Method.check on
    the model's config, or no target of the table runs a step's format) is left out: no policy proposes it, so its
    failure teaches nothing."""
    from agentic_compression import methods, targets
    from agentic_compression.objectives import ratio
    from agentic_compression.policies import prior
    from agentic_compression.policies.rule import bits
    from agentic_compression.reward import reward
    from agentic_compression.schemas import Step

    base = table["baseline"]
    runs = [targets.get(t) for t in table["eval"].get("target", "transformers").split(",")]
    out = []
    for r in table["rows"]:
        steps = [Step(**s) for s in r["strategy"]["steps"]]
        if r["status"] != "success" and any(methods.get(s.method).check(s.params, config) or not any(
                t.offers(methods.get(s.method)) for t in runs) for s in steps):
            continue
        lead = steps[0]
        obj = r["objectives"]
        ppl = ratio(r["perplexity"], base["perplexity"]) if r.get("perplexity") and base.get("perplexity") else None
        out.append({"model": table["model"], "family": family, "num_params": base["num_params"],
                    "task": table["eval"]["benchmark"], "target": r.get("target") or table["eval"]["target"],
                    "key": r["key"], "method": lead.method, "bits": bits(lead), "params": lead.params,
                    "steps": len(r["strategy"]["steps"]), "verdict": prior.verdict(r["status"], ppl),
                    "reward": round(reward(obj, base), 4) if obj else None,
                    "perplexity_ratio": round(ppl, 4) if ppl else None,
                    "kld": obj.get("kld") if obj else None,
                    "accuracy_delta": round(obj["accuracy"] - base["accuracy"], 4) if obj else None,
                    "size_ratio": round(ratio(obj["model_size_gb"], base["model_size_gb"]), 4) if obj else None,
                    "latency_ratio": round(ratio(obj["latency_ms"], base["latency_ms"]), 4) if obj else None})
    return out


def model_of(model: str) -> tuple[str, dict]:
    """The model's family and config."""
    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.models import resolve

    path, canonical = resolve(model)
    return infer_spec(canonical, path, online=False).model_family, json.loads((path / "config.json").read_text())


def build(tables: list[Path], model=model_of) -> dict:
    """The prior's file from the tables, in order (a later table's row replaces an earlier one's for the same
    model, target and strategy)."""
    from agentic_compression.policies import prior

    kept: dict[tuple[str, str, str], dict] = {}
    sources = []
    for path in tables:
        t = json.loads(path.read_text())
        rows = entries(t, *model(t["model"]))
        kept.update({(e["model"], e["target"], e["key"]): e for e in rows})
        sources.append({"table": path.name, "experiment": t["experiment"], "model": t["model"], "rows": len(rows),
                        "left_out": len(t["rows"]) - len(rows)})
    return {"version": prior.VERSION, "built": date.today().isoformat(),
            "command": "bench/prior.py --tables " + ",".join(f"bench/{p.name}" for p in tables),
            "sources": sources, "entries": list(kept.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", default=",".join(t for t in TABLES if (REPO / t).is_file()))
    ap.add_argument("--to", type=Path, default=REPO / "src" / "agentic_compression" / "prior.json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = build([REPO / t for t in a.tables.split(",") if t])
    a.to.write_text(json.dumps(data, indent=1) + "\n")
    verdicts = [e["verdict"] for e in data["entries"]]
    print(f"wrote {a.to}: {len(verdicts)} entries ({verdicts.count('ok')} ok, {verdicts.count('wrecked')} wrecked, "
          f"{verdicts.count('failed')} failed) from {', '.join(s['table'] for s in data['sources'])}")


if __name__ == "__main__":
    main()
