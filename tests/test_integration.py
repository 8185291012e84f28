"""The real SmolLM2-135M through the real CLI: 2 episodes with small limits (a few minutes on 2 cores)."""
import json

import pytest
import torch

from agentic_compression.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("integration")
    code = main(["run", "--no-presets", "--model", "smollm2-135m", "--dataset", "hellaswag", "--data-dir",
                 str(data_dir), "--output-dir", str(out), "--experiment", "smoke", "--max-episodes", "2",
                 "--limit", "24", "--ppl-tokens", "512", "--repeats", "2", "--set", "gptq.num_samples=16", "--set",
                 "gptq.seq_len=128", "--set", "autoround.num_samples=8", "--set", "autoround.seq_len=128"])
    # AutoRound's own 10 iterations: at 2 (its learning rate 1/iters) perplexity was 2.5x the baseline's, at 5 2.1x,
    # at 10 1.3x (SmolLM2, 8 windows of 128 tokens, 2026-12-07)
    assert code == 0
    return out / "smoke"


def test_two_real_episodes_enter_an_honest_frontier(run_dir):
    final = json.loads((run_dir / "final_results.json").read_text())
    assert final["complete"] and final["episodes_run"] == 2 and final["episodes_failed"] == 0
    base = final["baseline"]
    assert base["num_params"] == 134_515_008 and base["accuracy_n"] == 24
    assert 10 < base["perplexity"] < 40  # SmolLM2-135M on WikiText-2, not a broken model
    for ep in final["episodes"]:
        rel = ep["relative"]
        assert rel["model_size_gb"] < 0.5  # 4- or 8-bit Linear weights (fp32 embedding kept)
        assert rel["perplexity"] < 2.0  # compressed, not wrecked
    # membership is decided by measured timings, which a loaded machine bends: assert the frontier is consistent
    # instead (a baseline off the frontier is recorded as dominated by a member of it)
    solutions = json.loads((run_dir / "pareto_frontier.json").read_text())["solutions"]
    assert "baseline" in final["pareto_frontier"] or any("baseline" in s["dominates"] for s in solutions), solutions
    assert len(final["hypervolume_history"]) == 3


def test_first_real_episode_is_autoround_4bit_and_holds_4bit_values(run_dir):
    """The seed's rule: a small model starts with AutoRound."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from agentic_compression.models import load

    strategy = json.loads((run_dir / "episode_000" / "strategy.json").read_text())
    assert strategy["steps"][0]["method"] == "autoround" and strategy["steps"][0]["params"]["group_size"] == 64
    model, _ = load(run_dir / "episode_000" / "checkpoint")
    lin = model.model.layers[5].self_attn.o_proj
    q = unpack_from_int32(lin.weight_packed, 4, torch.Size(lin.weight_shape.tolist()))
    assert q.shape == (576, 576) and q.min() >= -8 and q.max() <= 7
    assert model.lm_head.weight.dtype == torch.float32  # tied head kept unquantized
