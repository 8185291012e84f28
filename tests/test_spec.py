import time

import pytest

from agentic_compression.errors import UserError
from agentic_compression.loop.spec import classify, infer_spec, params_from_name
from agentic_compression.models import model_db


def test_local_spec_counts_parameters_exactly(tiny_weights_dir):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_weights_dir, dtype=torch.float32)
    spec = infer_spec("tiny", tiny_weights_dir)
    assert spec.source == "local"
    assert spec.num_params == sum(p.numel() for p in m.parameters())  # tied embedding stored once
    assert spec.dtype == "F32" and spec.model_family == "llama"


def test_smollm2_spec_is_small_and_prefers_autoround(smollm2_dir):
    spec = infer_spec("HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir)
    assert spec.num_params == 134_515_008
    assert spec.size_class == "small" and spec.preferred_methods[0] == "autoround"


def test_database_has_100_models_and_matches_short_names():
    assert len(model_db.MODEL_SIZE_DB) >= 100
    assert model_db.lookup("meta-llama/Llama-2-7b-hf") == (6_740_000_000, "llama")
    assert model_db.lookup("Llama-2-7b-hf")[0] == 6_740_000_000
    spec = infer_spec("mistralai/Mistral-7B-v0.1")
    assert spec.source == "database" and spec.size_class == "medium" and spec.preferred_methods[0] == "gptq"


@pytest.mark.parametrize("name,params", [("acme/foo-7b", 7e9), ("Qwen2-1.5B-x", 1.5e9), ("SmolLM2-135M", 135e6),
                                         ("org/Mixtral-8x7B-new", 56e9), ("model-70B-chat", 70e9)])
def test_regex_reads_sizes_from_names(name, params):
    assert params_from_name(name) == int(params)


def test_regex_source_and_large_class():
    spec = infer_spec("someone/brandnew-70b-chat")
    assert spec.source == "regex" and spec.size_class == "large" and spec.preferred_methods[0] == "gptq"


def test_unknowable_model_is_a_user_error():
    with pytest.raises(UserError, match="cannot infer"):
        infer_spec("someone/brandnew")


def test_hub_lookup_offline_is_skipped_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    spec = infer_spec("meta-llama/Llama-2-7b-hf", online=True)
    assert spec.source == "database"
    assert time.monotonic() - t < 10


def test_size_classes_follow_the_seed():
    assert classify(135_000_000)[0] == "small"
    assert classify(7_000_000_000)[1][:2] == ["gptq", "awq"]
    assert classify(70_000_000_000)[0] == "large"
