"""Human-readable outputs of an experiment folder: the self-contained Plotly page and a text table."""
from __future__ import annotations

import html
import json
import shlex
import sys
from pathlib import Path

from .files import read_json
from .objectives import OBJECTIVES, SPECS, stderr

_LABELS = {o.name: o.label for o in SPECS}


def _where(runtime: dict | None) -> str:
    """' @ llama.cpp Q4_K_M' for a candidate measured outside transformers, else ''."""
    if not runtime or runtime.get("target", "transformers") == "transformers":
        return ""
    return f" @ {runtime.get('runtime')} {runtime.get('type', '')}".rstrip()


def _rows(final: dict) -> list[dict]:
    b = final["baseline"]
    rows = []
    if ref := final.get("reference"):
        r = ref["result"]
        rows.append({"id": "reference", "label": "transformers fp32, what you started from (timed beside each "
                     "target's baseline)", "objectives": {k: r.get(k) for k in OBJECTIVES}, "status": "success",
                     "perplexity": r["perplexity"]})
    rows.append({"id": "baseline", "label": "baseline (uncompressed)" + _where(b and b.get("runtime")),
                 "objectives": b and {k: b.get(k) for k in OBJECTIVES}, "status": "success",
                 "perplexity": b["perplexity"] if b else None})
    for name, other in list((final.get("baselines") or {}).items())[1:]:
        rows.append({"id": f"baseline-{name}", "label": "baseline (uncompressed)" + _where(other["runtime"]),
                     "objectives": other["objectives"], "status": "success", "perplexity": None})
    for p in final.get("presets") or []:  # the yardstick: measured like a candidate, never in the frontier
        rows.append({"id": p["id"], "label": f"community preset {p['label']}", "objectives": p["objectives"],
                     "status": "preset" if p["status"] == "success" else p["status"],
                     "perplexity": p["perplexity"], "error": p["error"]})
    for e in final["episodes"]:
        rows.append({"id": e["episode_id"], "label": _label(e), "objectives": e["objectives"], "status": e["status"],
                     "perplexity": e["perplexity"], "error": e["error"]})
    return rows


def reference_line(final: dict) -> str | None:
    """How much faster than transformers fp32 each target's baseline and the fastest candidate decode: ratios
    timed side by side (the candidate's through its paired ratio to its target's baseline)."""
    ref = final.get("reference")
    if not ref:
        return None
    base_ms = ref["result"]["latency_ms"]
    parts = [f"{n} f32 {1 / t['latency_ratio']:.1f}x" for n, t in ref["targets"].items() if t["latency_ratio"]]
    done = [e for e in final["episodes"] if e["status"] == "success" and e["objectives"]]
    if done:
        fast = min(done, key=lambda e: e["objectives"]["latency_ms"])
        parts.append(f"fastest candidate {fast['episode_id']} {base_ms / fast['objectives']['latency_ms']:.1f}x")
    return "faster than transformers fp32 (what you started from): " + ", ".join(parts)


def _label(e: dict) -> str:
    return " -> ".join(f"{s['method']}({', '.join(f'{k}={v}' for k, v in s['params'].items())})"
                       for s in e["steps"]) + _where(e.get("runtime"))


def recommendation(final: dict, exp_dir: Path) -> list[str]:
    """The run's recommendation in one sentence, every figure measured in the run (speed and size against what you
    started from, quality loss with its standard error), and the command that exports it."""
    pick = final.get("recommended")
    ep = next((e for e in final["episodes"] if e["episode_id"] == pick and e["objectives"]), None)
    if ep is None:
        why = "meets the goals" if final.get("goals") else "is on the frontier"
        return [f"recommended: keep the uncompressed model (no compressed candidate {why})"]
    o, ref = ep["objectives"], (final.get("reference") or {}).get("result") or final["baseline"]
    start = "transformers fp32 (what you started from)" if final.get("reference") else "the baseline"
    loss = []
    if k := ep.get("kld"):
        loss.append(f"KL divergence to it {k['mean']:.4f} ± {k['stderr']:.4f} nats/token (n={k['n']})")
    if o.get("accuracy") is not None:
        err = f" ± {ep['accuracy_stderr']:.3f}" if ep.get("accuracy_stderr") is not None else ""
        loss.append(f"accuracy {o['accuracy']:.3f}{err} (n={ep.get('accuracy_n')}) vs {ref['accuracy']:.3f}")
    cmd = Path(sys.argv[0]).name == "acf" and sys.argv[0] or "acf"
    speed = ref["latency_ms"] / o["latency_ms"]
    speed_said = f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower"
    return [f"recommended: {pick}, {_label(ep)}: {speed_said} and "
            f"{o['model_size_gb'] / ref['model_size_gb']:.2f}x the size of {start}; {', '.join(loss)}",
            f"export it: {cmd} export {shlex.quote(str(exp_dir))} --best --out "
            f"{shlex.quote(str(exp_dir))}-{pick}"]


def read_final(exp_dir: Path) -> dict:
    return read_json(exp_dir / "final_results.json", "the experiment's summary",
                     "restore it, or 'acf resume' the experiment to write it again")


def table(exp_dir: Path) -> str:
    final = read_final(exp_dir)
    front = set(final["pareto_frontier"])
    head = f"{'episode':<12} {'status':<8} {'pareto':<6} " + " ".join(f"{k:>13}" for k in OBJECTIVES) + \
        f" {'ppl':>8}  strategy"
    lines = [head]
    for r in _rows(final):
        o = r["objectives"]
        vals = " ".join(f"{o[k]:>13.4g}" if o and o.get(k) is not None else f"{'-':>13}" for k in OBJECTIVES)
        ppl = f"{r['perplexity']:>8.2f}" if r.get("perplexity") else f"{'-':>8}"
        lines.append(f"{r['id']:<12} {r['status']:<8} {'*' if r['id'] in front else '':<6} {vals} {ppl}  {r['label']}")
    lines.append(f"termination: {final['termination_reason']}; balanced pick: {final['balanced']}; "
                 f"hypervolume: {final['hypervolume_history'][-1]['hypervolume']:.4f}")
    if ref := reference_line(final):
        lines.append(ref)
    if versus := final.get("versus_preset"):
        lines.append(f"against the closest community preset: {versus}")
    if goal := goal_line(final):
        lines.append(goal)
    if drift := drifted(final):
        lines.append(drift)
    return "\n".join([*lines, *recommendation(final, exp_dir)])


def goal_line(final: dict) -> str | None:
    """The goals' verdict: the recommended candidate (the smallest, then the fastest, feasible one), the best
    feasible per objective, and why the others are not feasible."""
    g = final.get("goals")
    if not g:
        return None
    said = ", ".join(f"{k} {v}" for k, v in g["goals"].items())
    if not g["recommended"]:
        return f"goals ({said}): no candidate is feasible"
    best = ", ".join(f"{k} {v}" for k, v in g["best_feasible"].items())
    out = [f"goals ({said}): recommended {g['recommended']} (the smallest, then the fastest, of "
           f"{len(g['feasible'])} feasible); best feasible: {best}"]
    out += [f"  {e['episode_id']} infeasible: {'; '.join(e['infeasible_because'])}" for e in final["episodes"]
            if e.get("feasible") is False]
    return "\n".join(out)


COLUMNS = ("episode", "status", "pareto", *OBJECTIVES, "accuracy_stderr", "accuracy_n", "perplexity", "strategy")


def _spread(final: dict) -> dict[str, dict]:
    """Each row's measured spread: accuracy's standard error and n, and the KL divergence's standard error."""
    out = {}
    for e in [*(final.get("presets") or []), *final["episodes"]]:
        out[e.get("episode_id", e.get("id"))] = {"accuracy_stderr": e.get("accuracy_stderr"),
                                                 "accuracy_n": e.get("accuracy_n"),
                                                 "kld_stderr": (e.get("kld") or {}).get("stderr")}
    for name, r in (("baseline", final.get("baseline")), ("reference", (final.get("reference") or {}).get("result"))):
        if r:
            out[name] = {"accuracy_stderr": r.get("accuracy_stderr"), "accuracy_n": r.get("accuracy_n"),
                         "kld_stderr": (r.get("kld_detail") or {}).get("stderr")}
    return out


def records(exp_dir: Path) -> list[dict]:
    """One flat record per row (the baseline, then each episode): what json and csv print."""
    final = read_final(exp_dir)
    front, spread = set(final["pareto_frontier"]), _spread(final)
    return [{"episode": r["id"], "status": r["status"], "pareto": r["id"] in front,
             **{k: (r["objectives"] or {}).get(k) for k in OBJECTIVES},
             "accuracy_stderr": spread.get(r["id"], {}).get("accuracy_stderr"),
             "accuracy_n": spread.get(r["id"], {}).get("accuracy_n"),
             "perplexity": r.get("perplexity"), "strategy": r["label"]} for r in _rows(final)]


def markdown(exp_dir: Path) -> str:
    """A GitHub table, ready for a model card or an issue: accuracy ± its standard error, costs as measured."""
    final = read_final(exp_dir)

    lines = ["| episode | status | Pareto | " + " | ".join(o.label for o in SPECS) + " | perplexity | strategy |",
             "|---|---|:-:|" + "---:|" * (len(SPECS) + 1) + "---|"]
    for r in records(exp_dir):
        values = " | ".join(o.shown(r[o.name], stderr(r, o.name) or None) for o in SPECS)
        ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        lines.append(f"| {r['episode']} | {r['status']} | {'✓' if r['pareto'] else ''} | {values} | {ppl} "
                     f"| `{r['strategy']}` |")
    lines.append("")
    lines.append(f"Stopped: {final['termination_reason']}. Balanced pick: {final['balanced']}. "
                 f"Hypervolume: {final['hypervolume_history'][-1]['hypervolume']:.4f}.")
    said, *cmd = recommendation(final, exp_dir)
    lines += ["", said[0].upper() + said[1:] + ".", *(f"`{c.split(': ', 1)[1]}`" for c in cmd)]
    if ref := reference_line(final):
        lines += ["", ref[0].upper() + ref[1:] + "."]
    if versus := final.get("versus_preset"):
        lines += ["", f"Against the closest community preset: {versus}."]
    if goal := goal_line(final):
        lines += ["", *goal.splitlines()]
    return "\n".join(lines)


def render(exp_dir: Path, fmt: str = "table") -> str:
    """The experiment as a text table, Markdown, JSON or CSV."""
    if fmt == "table":
        return table(exp_dir)
    if fmt == "markdown":
        return markdown(exp_dir)
    rows = records(exp_dir)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().rstrip("\n")


DRIFT = 0.15  # control workload slower or faster than at the baseline by more than this: timings not comparable


def drifted(final: dict) -> str | None:
    """A warning naming the episodes timed while the machine itself ran at another speed than for the baseline
    (measure.control_ms), whose latency and CO2 therefore do not compare with the baseline's. An episode whose
    latency was paired with the baseline's (timed in turn with it) is exempt: the drift moved both alike."""
    off = {e["episode_id"]: e["relative"]["machine_speed"] for e in final["episodes"]
           if (e.get("relative") or {}).get("machine_speed") and abs(e["relative"]["machine_speed"] - 1) > DRIFT
           and "latency_ms" not in (e.get("intervals") or {})}
    if not off:
        return None
    return ("warning: the machine's own speed drifted: a fixed control workload took "
            + ", ".join(f"{v:.2f}x ({eid})" for eid, v in off.items())
            + " its time at the baseline, so those episodes' latency and CO2 differences are partly the machine's; "
              "re-run on a quiet machine, or with fewer --threads")


def sensitivity_chart(episode: dict):
    """A mixed-precision episode's measured per-layer sensitivity to its lowest format, coloured by the format each
    layer was given."""
    import plotly.graph_objects as go

    m = episode["mixed"]
    sens, fmts = m["sensitivity"], m["formats"]
    low = {n: min(sens[n], key=fmts.get) for n in sens}  # each layer's fewest-bits format (llama.cpp: by width)
    layers = list(sens)
    fig = go.Figure([go.Bar(name=f"given {fmt}", x=[n for n in layers if m["assignment"][n] == fmt],
                            y=[sens[n][low[n]] for n in layers if m["assignment"][n] == fmt])
                     for fmt in dict.fromkeys(m["assignment"].values())])
    fig.update_layout(title=f"{episode['episode_id']}: each layer's sensitivity to its fewest-bits format "
                      f"({', '.join(sorted(set(low.values())))}; next-token KL, nats) and "
                      f"the format it was given ({m['avg_bits']:.2f} bits on average, budget {m['budget_bits']:g})",
                      height=400, xaxis={"categoryorder": "array", "categoryarray": layers})
    return fig


def _quality_chart(rows: list[dict], spread: dict[str, dict], colour: list[str], text: list[str]):
    """Accuracy and KL divergence against size on disk, each with its standard error as an error bar."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy ± 1 standard error", "KL divergence to the "
                                                        "baseline ± 1 standard error (nats/token)"))
    size = [r["objectives"].get("model_size_gb") for r in rows]
    for col, (key, err) in enumerate((("accuracy", "accuracy_stderr"), ("kld", "kld_stderr")), 1):
        fig.add_trace(go.Scatter(x=size, y=[r["objectives"].get(key) for r in rows], mode="markers", text=text,
                                 marker={"size": 9, "color": colour}, showlegend=False,
                                 error_y={"type": "data", "array": [spread.get(r["id"], {}).get(err) or 0
                                                                    for r in rows]}), row=1, col=col)
        fig.update_xaxes(title_text=_LABELS["model_size_gb"], row=1, col=col)
    fig.update_layout(title="Quality against size, with the measurements' standard errors (red: Pareto-optimal)",
                      height=450)
    return fig


def write_visualization(exp_dir: Path) -> Path:
    import plotly.graph_objects as go

    final = read_final(exp_dir)
    front = set(final["pareto_frontier"])
    rows = [r for r in _rows(final) if r["objectives"]]
    colour = ["crimson" if r["id"] in front else "steelblue" for r in rows]
    text = [f"{r['id']}: {r['label']}" for r in rows]
    o = {k: [r["objectives"].get(k) for r in rows] for k in OBJECTIVES}
    dims = [{"label": _LABELS[k], "values": o[k]} for k in OBJECTIVES]
    splom = go.Figure(go.Splom(
        dimensions=dims, text=text, diagonal_visible=False,
        marker={"size": 10, "color": colour,
                "symbol": ["star" if r["id"] == "baseline" else "diamond" if r["id"].startswith("preset:") else "circle"
                           for r in rows]}))
    splom.update_layout(title="All evaluated candidates (red: Pareto-optimal, star: baseline, diamond: community "
                        "preset)", height=900)
    cube = go.Figure(go.Scatter3d(x=o["model_size_gb"], y=o["latency_ms"], z=o["accuracy"], mode="markers",
                                  text=text, marker={"size": 6, "color": colour}))
    cube.update_layout(title="3-D: size on disk, decode latency, accuracy (red: Pareto-optimal)", height=600,
                       scene={"xaxis_title": _LABELS["model_size_gb"], "yaxis_title": _LABELS["latency_ms"],
                              "zaxis_title": _LABELS["accuracy"]})
    par = go.Figure(go.Parcoords(
        line={"color": [1 if r["id"] in front else 0 for r in rows], "colorscale": [[0, "steelblue"], [1, "crimson"]]},
        dimensions=dims))
    par.update_layout(title="Parallel coordinates over the objectives (red: Pareto-optimal)", height=450)
    hv = final["hypervolume_history"]
    hv_fig = go.Figure(go.Scatter(x=[h["after"] for h in hv], y=[h["hypervolume"] for h in hv], mode="lines+markers"))
    hv_fig.update_layout(title="Hypervolume of the frontier after each episode (baseline-normalised)", height=350)
    bars = [sensitivity_chart(e) for e in final["episodes"] if e.get("mixed")]
    spread = _spread(final)
    quality = _quality_chart(rows, spread, colour, text)

    def cell(r: dict, k: str) -> str:
        v = (r["objectives"] or {}).get(k)
        err = spread.get(r["id"], {}).get({"accuracy": "accuracy_stderr", "kld": "kld_stderr"}.get(k, ""))
        return "<td>-</td>" if v is None else f"<td>{v:.4g}{f' ± {err:.2g}' if err else ''}</td>"

    cells = "".join(
        f"<tr><td>{html.escape(r['id'])}</td><td>{r['status']}</td><td>{'yes' if r['id'] in front else ''}</td>"
        + "".join(cell(r, k) for k in OBJECTIVES)
        + f"<td>{html.escape(r['label'])}</td></tr>" for r in _rows(final))
    drift, goal, versus = drifted(final), goal_line(final), final.get("versus_preset")
    said = recommendation(final, exp_dir)
    warning = f"<p><b>{html.escape(said[0])}</b></p>" + "".join(f"<pre>{html.escape(c)}</pre>" for c in said[1:]) + \
        (f"<p style='color:crimson'>{html.escape(drift)}</p>" if drift else "") + \
        (f"<p><b>Against the closest community preset:</b> {html.escape(versus)}</p>" if versus else "") + \
        (f"<pre>{html.escape(goal)}</pre>" if goal else "")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>acf: "
        f"{html.escape(final['experiment'])}</title></head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(final['experiment'])}</h1><p>model {html.escape(final['model'])}, dataset "
        f"{html.escape(final['dataset'])}; stopped: {html.escape(str(final['termination_reason']))}; balanced pick: "
        f"{final['balanced']}</p>{warning}"
        "<table border=1 cellpadding=4><tr><th>episode</th><th>status</th><th>Pareto</th>"
        + "".join(f"<th>{_LABELS[k]}</th>" for k in OBJECTIVES) + "<th>strategy</th></tr>" + cells + "</table>"
        + splom.to_html(full_html=False, include_plotlyjs=True)
        + "".join(f.to_html(full_html=False, include_plotlyjs=False) for f in (quality, cube, par, hv_fig, *bars))
        + "</body></html>")
    out = exp_dir / "pareto_visualization.html"
    out.write_text(page, encoding="utf-8")
    return out
