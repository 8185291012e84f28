"""A model card (Hugging Face's format: YAML metadata, then Markdown) in every successful checkpoint: what it is, how
it was made, how well it did against the baseline, where it was measured, and how to load it. Built with
huggingface_hub's ModelCard / ModelCardData / EvalResult, so the metadata (model-index included) is what the Hub
reads."""
from __future__ import annotations

import platform
from pathlib import Path

from . import methods
from .objectives import SPECS, stderr
from .schemas import Episode, EvaluationResult

CARD = "README.md"


def build_tags(steps) -> list[str]:
    """The card's Hub tags: acf's own, then each step's method's (the format it writes and the algorithm)."""
    return ["acf", "compressed"] + sorted({t for s in steps if s.method in methods.REGISTRY
                                           for t in methods.get(s.method).tags})


def machine() -> str:
    import os

    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPU threads, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def _row(name: str, unit: str, mine: float | None, base: float | None, err: float | None = None,
         base_err: float | None = None, lower_is_better: bool = True) -> str:
    if mine is None or base is None:
        return f"| {name} | - | - | - |"
    pm = f" ± {err:.3g}" if err is not None else ""
    bpm = f" ± {base_err:.3g}" if base_err is not None else ""
    ratio = f"{mine / base:.3f}×" if base else "-"
    return f"| {name}{unit} | {mine:.4g}{pm} | {base:.4g}{bpm} | {ratio} |"


def kld_row(r: EvaluationResult) -> str:
    """KL divergence from the baseline's next-token distributions, with llama-perplexity's statistics."""
    d = r.kld_detail
    if r.kld is None:
        return "| KL divergence to the baseline | not measured in this runtime | 0 | - |"
    more = ", ".join(f"{k} {d[k]:.4g}" for k in ("median", "p99", "p99.9") if k in d)
    top = f"; same top token {d['same_top']:.1%}, Δp RMS {d['delta_p_rms']:.2%}" if "same_top" in d else ""
    return (f"| KL divergence to the baseline (nats/token, n={d.get('n')} tokens{'; ' + more if more else ''}{top}) "
            f"| {r.kld:.4g} ± {d.get('stderr', 0):.2g} | 0 | - |")


def _how_to_load(tags: list[str]) -> str:
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'model = AutoModelForCausalLM.from_pretrained("PATH")  # this folder',
             'tokenizer = AutoTokenizer.from_pretrained("PATH")', "```"]
    if "compressed-tensors" in tags:
        lines += ["", "On a GPU, vLLM serves compressed-tensors checkpoints with low-bit kernels:", "",
                  "```python", "from vllm import LLM", "", 'llm = LLM("PATH")', "```"]
    if "peft" in tags:
        lines += ["", "The LoRA adapter in `adapter/` is loaded on top by `model.load_adapter(\"PATH/adapter\")` "
                      "(acf's loader does this)."]
    if "low-rank" in tags:
        lines += ["", "Low-rank factors: load with `agentic_compression.models.load(\"PATH\")`."]
    return "\n".join(lines)


def _runtime_section(runtime: dict) -> str:
    """What the file stores, for a runtime's own format: type, bits per weight, tensors by type (and each tensor's
    type, for a per-tensor allocation), the conversion check."""
    if runtime.get("target", "transformers") == "transformers":
        return ""
    lines = [f"## Format\n\n{runtime.get('runtime')} ({runtime.get('version')}): {runtime.get('format')} "
             f"{runtime.get('type')}"]
    if bpw := runtime.get("bits_per_weight"):
        lines.append(f"- {bpw:.3f} stored bits per weight over all tensors ({runtime.get('num_params', 0):,} "
                     "weights)")
    if types := runtime.get("tensor_types"):
        lines.append("- tensors by type: " + ", ".join(f"{t} {n}" for t, n in sorted(types.items())))
    if c := runtime.get("conversion_check"):
        lines.append(f"- the f32 export was checked against the PyTorch model on {c.get('tokens')} tokens: "
                     f"next-token KL {c.get('kl')}, top-1 agreement {c.get('top1_agreement')}")
    if held := (runtime.get("mixed") or {}).get("file_types"):
        rows = "\n".join(f"| {n} | {t} |" for n, t in held.items())
        lines.append(f"\n<details><summary>each tensor's type (allocated by measured sensitivity under "
                     f"{runtime['mixed'].get('budget_bits')} bits per weight)</summary>\n\n| tensor | type |\n"
                     f"|---|---|\n{rows}\n\n</details>")
    return "\n".join(lines) + "\n"


def model_card(ep: Episode, baseline: EvaluationResult, base_model: str, calibration: str, dataset: str):
    """The card of a successful episode's checkpoint (huggingface_hub.ModelCard)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    r = ep.result
    tags = build_tags(ep.strategy.steps)
    results = []
    for name, b in (r.accuracy_detail.get("benchmarks") or {}).items():
        if isinstance(b, dict) and b.get("value") is not None:
            results.append(EvalResult(task_type="text-generation", dataset_type=name, dataset_name=name,
                                      metric_type=str(b.get("metric", "accuracy")).split(",")[0],
                                      metric_value=round(float(b["value"]), 4)))
    if not results:
        results.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=r.benchmark,
                                  metric_type="accuracy", metric_value=round(r.accuracy, 4)))
    if r.perplexity is not None:
        results.append(EvalResult(task_type="text-generation", dataset_type="wikitext", dataset_name="WikiText-2",
                                  dataset_split="test (second half)", metric_type="perplexity",
                                  metric_value=round(r.perplexity, 3)))
    from .targets import TARGETS

    runtime = r.runtime or {}
    target = TARGETS.get(runtime.get("target", "transformers"), TARGETS["transformers"])
    tags += [runtime["format"]] if runtime.get("format") else []
    data = ModelCardData(base_model=base_model if "/" in base_model else None,
                         library_name="transformers" if target.name == "transformers" else None, tags=tags,
                         model_name=f"{Path(base_model).name}-{ep.episode_id}", eval_results=results,
                         pipeline_tag="text-generation")
    steps = "\n".join(f"{i + 1}. `{s.method}` {s.params}" + (f" (only if {s.condition})" if s.condition else "")
                      for i, s in enumerate(ep.strategy.steps))
    b = baseline
    titles = {"accuracy": f"accuracy ({r.benchmark}, n={r.accuracy_n})",
              "latency_ms": "decode latency (ms/token; paired with the baseline)" if "latency_ms" in r.intervals
              else "decode latency (ms/token, median)",
              "co2_grams": f"CO2 per 1,000 generated tokens ({r.energy.get('source', 'measured')}) (g)"}
    rows = ["| objective | this checkpoint | baseline | ratio |", "|---|---:|---:|---:|"]
    for o in SPECS:  # every declared objective, then what else was measured beside it
        rows.append(kld_row(r) if o.name == "kld" else
                    _row(titles.get(o.name, o.label), "", getattr(r, o.name), getattr(b, o.name),
                         stderr(r, o.name), stderr(b, o.name)))
        if o.name == "accuracy":
            rows.append(_row(f"perplexity (n={r.perplexity_tokens} tokens)", "", r.perplexity, b.perplexity))
        if o.name == "model_size_gb":
            rows.append(_row("parameters", "", r.num_params, b.num_params))
    table = "\n".join(rows)
    content = f"""---
{data.to_yaml()}
---

# {data.model_name}

A compressed version of `{base_model}`, found by [acf](https://github.com) (the Agentic Compression Framework) in
episode `{ep.episode_id}`. Every number below was measured by acf in that run; none is estimated.

## How it was made

Decided by the `{ep.strategy.policy or 'rule'}` policy: {ep.strategy.reasoning or '-'}

{steps}

Applied to: `{ep.strategy.base}`. Calibration data: `{calibration}`.

## Results

{table}

Accuracy is given with its standard error; latency is the median of the repeats.

Measured on: {machine()}, in {runtime.get('version') or 'transformers'} on the CPU.

{_runtime_section(runtime)}
## How to load

{target.how_to_run(data.model_name.lower()) or _how_to_load(tags)}
"""
    return ModelCard(content)


def write_card(checkpoint: Path, **kw) -> Path:
    path = Path(checkpoint) / CARD
    model_card(**kw).save(path)
    return path
