"""The evaluation engine: several benchmarks in one pass, their aggregate and relative scores, the result cache
keyed by checkpoint content, and latency/memory that tell a bigger model from a smaller one."""
import json
import shutil

import pytest

from agentic_compression.config import EvalSettings
from agentic_compression.evaluation import Evaluator, cache_dir


@pytest.fixture
def settings():
    return EvalSettings(benchmark="arc_easy,winogrande,humaneval", limit=6, max_new_tokens=8, ppl_tokens=256,
                        ppl_window=128, ppl_stride=64,
                        prompt_tokens=16, decode_tokens=4, warmup=1, repeats=2, batch_size=8, threads=1)


def _evaluator(settings, data_dir, tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return Evaluator(settings, data_dir, AutoTokenizer.from_pretrained(tiny_dir), work)


@pytest.mark.slow
def test_several_benchmarks_aggregate_and_cache(settings, data_dir, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACF_EVAL_CACHE", str(tmp_path / "cache"))
    ev = _evaluator(settings, data_dir, tiny_dir, tmp_path)
    first = ev.evaluate(tiny_dir)
    per = first.accuracy_detail["benchmarks"]
    assert set(per) == {"arc_easy", "winogrande", "humaneval"} and all(v["n"] == 6 for v in per.values())
    assert per["arc_easy"]["metric"] == "acc_norm,none" and per["winogrande"]["metric"] == "acc,none"
    assert per["humaneval"]["metric"] == "pass@1" and per["arc_easy"]["stderr"] > 0
    assert first.accuracy == pytest.approx(sum(v["value"] for v in per.values()) / 3)
    assert first.accuracy_n == 18 and first.relative["accuracy:winogrande"] == 1.0
    assert "cached_from" not in first.accuracy_detail and len(list(cache_dir().glob("*.json"))) == 1

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)  # the same weights elsewhere: the same fingerprint
    again = ev.evaluate(copy)
    assert again.accuracy_detail["cached_from"] and again.latency == first.latency

    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "acf_note": "changed"}))
    changed = ev.evaluate(copy)  # another checkpoint: measured
    assert "cached_from" not in changed.accuracy_detail and len(list(cache_dir().glob("*.json"))) == 2

    for entry in cache_dir().glob("*.json"):  # an entry of another layout (no runtime facts): measured again
        entry.write_text(json.dumps({k: v for k, v in json.loads(entry.read_text()).items() if k != "runtime"}))
    remeasured = ev.evaluate(copy)
    assert "cached_from" not in remeasured.accuracy_detail and remeasured.runtime["format"] == "dense"
    for entry in cache_dir().glob("*.json"):
        entry.write_text("{broken")  # a damaged entry is measured again, not trusted
    assert "cached_from" not in ev.evaluate(copy).accuracy_detail

    other = _evaluator(settings.model_copy(update={"seed": 99}), data_dir, tiny_dir, tmp_path)
    assert other.request_key != ev.request_key  # another item subset: another cache key


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not _cuda(), reason="no CUDA device: the GPU path (CUDA events, CUDA peak memory) runs only on a GPU machine"))])
@pytest.mark.slow
def test_a_bigger_model_is_slower_and_heavier(settings, data_dir, tiny_dir, tmp_path, device):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    big = tmp_path / "big"
    LlamaForCausalLM(cfg).save_pretrained(big)
    tok.save_pretrained(big)
    ev = _evaluator(settings.model_copy(update={"benchmark": "piqa", "cache": False, "repeats": 5,
                                                "device": device}), data_dir, tiny_dir, tmp_path)
    small, large = ev.evaluate(tiny_dir), ev.evaluate(big)
    assert large.memory_gb > small.memory_gb + 0.05  # ~45M more fp32 parameters
    assert large.latency_ms > small.latency_ms and large.size_bytes > 10 * small.size_bytes
    assert large.latency["decode_ms_per_token"]["n"] == 5 * 4
    assert large.latency["control_ms"] > 0 and large.relative["machine_speed"] > 0
    if device == "cuda":  # the model's memory is the CUDA peak: at least its fp32 weights, on the device
        weights = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) * 4
        assert large.memory["source"] == "torch.cuda.max_memory_allocated"
        assert weights <= large.memory["model_peak_bytes"] < 3 * weights
        assert large.latency["timer"] == "cuda events"
    else:
        assert large.memory["source"].startswith("VmHWM") and large.latency["timer"] == "perf_counter"


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_is_a_clear_error(settings, data_dir, tiny_dir, tmp_path):
    from agentic_compression.errors import UserError

    with pytest.raises(UserError, match="--device cuda.*no CUDA device"):
        _evaluator(settings.model_copy(update={"device": "cuda"}), data_dir, tiny_dir, tmp_path)


def test_perplexity_on_any_text_file(settings, data_dir, tiny_dir, tmp_path):
    from agentic_compression.errors import UserError

    text = tmp_path / "domain.txt"
    text.write_text("Compression keeps what matters and drops the rest. " * 200)
    ev = _evaluator(settings.model_copy(update={"ppl_text": str(text), "ppl_tokens": 300}), data_dir, tiny_dir,
                    tmp_path)
    assert len(ev.request.ppl_ids) == 300
    wiki = _evaluator(settings.model_copy(update={"ppl_tokens": 300}), data_dir, tiny_dir, tmp_path)
    assert ev.request_key != wiki.request_key  # another text: another cache key
    with pytest.raises(UserError, match="has .* tokens, fewer than --ppl-tokens 100000"):
        _evaluator(settings.model_copy(update={"ppl_text": str(text), "ppl_tokens": 100000}), data_dir, tiny_dir,
                   tmp_path)


def test_the_report_names_episodes_timed_on_a_drifted_machine():
    from agentic_compression.report import drifted

    eps = [{"episode_id": "episode_000", "relative": {"machine_speed": 1.05}},
           {"episode_id": "episode_001", "relative": {"machine_speed": 1.6}},
           {"episode_id": "episode_002", "relative": None}]  # a failed episode
    msg = drifted({"episodes": eps})
    assert "1.60x (episode_001)" in msg and "episode_000" not in msg
    assert drifted({"episodes": eps[:1] + eps[2:]}) is None


@pytest.mark.slow
def test_evaluations_fork_from_one_zygote_that_a_timeout_or_its_death_does_not_break(data_dir, tiny_dir, tmp_path,
                                                                                       fast_eval, monkeypatch):
    """Each evaluation is a process forked from a zygote that made the imports once: two evaluations share it and
    measure the same; a zygote that died is replaced; a child past the timeout is killed and the evaluation fails
    saying so; closing the zygote ends it."""
    import os

    import psutil

    from agentic_compression.evaluation import EvaluationError, zygote

    monkeypatch.setenv("ACF_EVAL_CACHE", str(tmp_path / "cache"))
    zygote.close_all()
    ev = _evaluator(fast_eval.model_copy(update={"cache": False}), data_dir, tiny_dir, tmp_path)
    first = ev.evaluate(tiny_dir)
    z = zygote._IDLE[0]
    again = ev.evaluate(tiny_dir)
    assert zygote._IDLE == [z] and again.perplexity == first.perplexity and again.accuracy == first.accuracy
    os.kill(z.proc.pid, 9)
    z.proc.wait()
    assert ev.evaluate(tiny_dir).perplexity == first.perplexity and zygote._IDLE[0] is not z
    slow = _evaluator(fast_eval.model_copy(update={"cache": False, "timeout_s": 1}), data_dir, tiny_dir, tmp_path)
    with pytest.raises(EvaluationError, match="exceeded 1s"):
        slow.evaluate(tiny_dir)
    assert psutil.Process(zygote._IDLE[0].proc.pid).children() == []  # the child past the timeout is gone
    kept = zygote._IDLE[0].proc
    zygote.close_all()
    assert kept.poll() is not None and zygote._IDLE == []

