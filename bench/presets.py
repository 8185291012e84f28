"""Does acf beat the preset a practitioner would pick by hand? One run of the default policy on one target, with the
target's community presets measured beside it (presets.py) and the importance-matrix versions of the llama.cpp
presets added as reference rows; then a table of every preset, the imatrix rows and acf's recommended candidate:
size, stored bits per weight, mean KL divergence to the target's f32 export (± its standard error), its 99.9th
percentile, same top token %, perplexity, and decode latency as a ratio to the preset's (each timed beside the same
baseline, paired), with the strategy that made each row.

    .venv/bin/python bench/presets.py --data-dir ../shared/data --target llamacpp [--model smollm2-135m]
        [--episodes 10] [--extra Q4_0] [--without Q4_1] [--budget 4.5] [--out DIR]

Goals (issue 29): llama.cpp: mean KLD <= 0.5x imatrix Q4_K_M's at <= 1.0x its size and <= 1.0x its latency; ORT
GenAI: <= 0.5x the default int4's KLD at <= 1.1x its size. The verdict is printed under the table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _row(label: str, r: dict | None, how: str) -> dict:
    return {"label": label, "r": r, "how": how}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target", default="llamacpp", choices=["llamacpp", "ortgenai"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--limit", type=int, default=50, help="benchmark items (the bench judges KL divergence)")
    ap.add_argument("--extra", default="", help="more llama.cpp types measured with and without an importance "
                    "matrix, e.g. Q4_0 (Gemma 3's source is Q4_K_M: compare at a lower budget)")
    ap.add_argument("--without", default="", help="also measure acf's 6-bit allocation with these types excluded, "
                    "e.g. Q4_1 (SmolLM2's own weights are a dequantized Q4_1, which Q4_1 stores without loss)")
    ap.add_argument("--budget", type=float, action="append", default=[], help="also measure acf's allocation "
                    "(gguf_mixed with an importance matrix) at this many bits per weight, e.g. 4.5 (Q4_0's)")
    ap.add_argument("--out", type=Path, default=Path("experiments"))
    ap.add_argument("--policy", default=None, help="the run's policy (default: acf's default)")
    a = ap.parse_args()

    from agentic_compression import targets
    from agentic_compression.cli import main as acf

    t = targets.get(a.target)
    if a.target == "llamacpp":  # the imatrix versions beside the presets, measured the same way (bench only)
        extra = {**t.presets, **{x: [{"method": "gguf", "params": {"type": x}}] for x in a.extra.split(",") if x}}
        t.presets = {**extra, **{f"{k} imatrix": [{**s[0], "params": {**s[0]["params"], "imatrix": True}}]
                                 for k, s in extra.items() if k != "Q8_0"}}  # 8 bits are near-lossless anyway
        for b in a.budget:
            t.presets[f"acf {b:g} bits"] = [{"method": "gguf_mixed", "params": {"avg_bits": b, "imatrix": True}}]
        if a.without:
            t.presets[f"acf 6.0 bits without {a.without}"] = [{"method": "gguf_mixed", "params": {
                "avg_bits": 6.0, "imatrix": True, "exclude": a.without}}]
    name = f"presets-{a.target}-{Path(a.model).name.lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["run", "--model", a.model, "--data-dir", str(a.data_dir), "--output-dir", str(a.out), "--experiment",
            name, "--targets", a.target, "--max-episodes", str(a.episodes), "--limit", str(a.limit),
            "--no-skills", *(["--policy", a.policy] if a.policy else [])]
    t0 = time.time()
    assert acf(argv) == 0
    final = json.loads((a.out / name / "final_results.json").read_text())
    print(f"\n{' '.join(['acf', *map(shlex.quote, argv)])}  ({(time.time() - t0) / 60:.0f} min)\n")

    rows = [_row(p["label"], {**p["objectives"], "kld_detail": p["kld"], "perplexity": p["perplexity"],
                              "runtime": p["runtime"]} if p["objectives"] else None,
                 "preset: " + " -> ".join(f"{s['method']}({s['params']})" for s in p["steps"]))
            for p in final["presets"]]
    pick = (final.get("goals") or {}).get("recommended") or final["balanced"]
    ep = next((e for e in final["episodes"] if e["episode_id"] == pick), None)
    if ep is not None:
        rows.append(_row(f"acf {pick}", {**ep["objectives"], "kld_detail": ep["kld"], "perplexity": ep["perplexity"],
                                         "runtime": ep["runtime"]},
                         " -> ".join(f"{s['method']}({s['params']})" for s in ep["steps"])))
    head = (f"{'row':<34} {'MB':>7} {'bpw':>6} {'mean KLD ± SE':>18} {'p99.9':>7} {'same top':>8} {'ppl':>7} "
            f"{'latency':>8}  strategy")
    print(head)
    lead = "Q4_K_M" if a.target == "llamacpp" else "int4"
    ref = next((r["r"] for r in rows if r["r"] and r["label"].endswith(f" {lead}")), None)
    for row in rows:
        r = row["r"]
        if r is None:
            print(f"{row['label']:<34} failed  {row['how']}")
            continue
        k = r["kld_detail"] or {}
        lat = f"{r['latency_ms'] / ref['latency_ms']:.2f}x" if ref else "-"
        print(f"{row['label']:<34} {r['model_size_gb'] * 1e3:>7.1f} {r['runtime'].get('bits_per_weight', 0):>6.2f} "
              f"{k.get('mean', float('nan')):>9.4f} ± {k.get('stderr', float('nan')):.4f} "
              f"{k.get('p99.9', float('nan')):>7.3f} {100 * k.get('same_top', float('nan')):>7.1f}% "
              f"{r['perplexity']:>7.2f} {lat:>8}  {row['how']}")
    print(f"\nlatency: decode ms/token as a ratio to {lead}'s, each paired with the target's f32 baseline; KLD over "
          f"{(rows[0]['r'] or {}).get('kld_detail', {}).get('n', '?')} WikiText-2 tokens")
    mine = rows[-1]["r"] if ep is not None else None
    bar = next((r["r"] for r in rows if r["r"] and r["label"].endswith(f"{lead} imatrix")), ref)
    if mine and bar and mine.get("kld") is not None:
        k, s, l = mine["kld"] / bar["kld"], mine["model_size_gb"] / bar["model_size_gb"], \
            mine["latency_ms"] / bar["latency_ms"]
        size_cap, name_bar = (1.0, f"{lead} imatrix") if a.target == "llamacpp" else (1.1, lead)
        ok = k <= 0.5 and s <= size_cap and (a.target != "llamacpp" or l <= 1.0)
        print(f"goal: KLD <= 0.5x {name_bar}'s at <= {size_cap}x its size" +
              (" and <= 1.0x its latency" if a.target == "llamacpp" else "") +
              f": {k:.2f}x, {s:.2f}x, {l:.2f}x -> {'met' if ok else 'not met'}")


if __name__ == "__main__":
    main()
