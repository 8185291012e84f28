"""Calibration statistics computed once per experiment (stats_cache.py): the input activation sums are what a
forward pass measures, a second method on the same weights and windows reuses them without a forward pass, and
changed weights or windows are measured again."""
import pytest
import torch

from agentic_compression import methods
from agentic_compression.loop.workers import apply_strategy
from agentic_compression.models import load, stats_cache
from agentic_compression.schemas import Step, Strategy


@pytest.fixture
def windows(tiny_dir):
    _, tok = load(tiny_dir)
    texts = ["The lighthouse keeper wrote that the storm had passed.", "In 1874 the light was built on the cape."]
    return [tok(t)["input_ids"] for t in texts]


def test_input_sums_are_the_inputs_each_linear_saw(tiny_dir, windows):
    model, _ = load(tiny_dir)
    name = "model.layers.1.mlp.down_proj"
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, 128)))
    stats = stats_cache.input_stats(model, windows, None)
    h.remove()
    x = torch.cat(seen)
    assert int(stats[name]["tokens"]) == sum(map(len, windows)) == x.shape[0]
    assert torch.allclose(stats[name]["abs_sum"], x.abs().sum(0)) and torch.allclose(stats[name]["sq_sum"],
                                                                                     x.pow(2).sum(0))
    assert len(stats) == 2 * 7


def test_a_second_method_reuses_the_inputs_and_changed_weights_are_measured_again(tiny_dir, windows, tmp_path,
                                                                                  monkeypatch):
    model, _ = load(tiny_dir)
    folder = tmp_path / "statistics"
    first = stats_cache.input_stats(model, windows, folder)

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran although the statistics were stored")

    monkeypatch.setattr("agentic_compression.models.stats_cache.forward_with_hooks", no_forward)
    again = stats_cache.input_stats(model, windows, folder)
    assert all(torch.equal(first[n]["sq_sum"], again[n]["sq_sum"]) for n in first)
    with pytest.raises(AssertionError, match="a forward pass ran"):
        stats_cache.input_stats(model, windows[:1], folder)  # other windows
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1
    with pytest.raises(AssertionError, match="a forward pass ran"):
        stats_cache.input_stats(model, windows, folder)  # other weights


@pytest.mark.parametrize("step", [Step(method="asvd", params={"rank_ratio": 0.5, "num_samples": 2, "seq_len": 32}),
                                  Step(method="structured", params={"granularity": "mlp", "ratio": 0.25,
                                                                    "num_samples": 2, "seq_len": 32})],
                         ids=["asvd", "structured"])
def test_an_episode_with_stored_statistics_writes_the_same_checkpoint(tiny_dir, data_dir, tmp_path, step):
    from safetensors.torch import load_file

    from agentic_compression.data import calibration_samples

    calib = lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0)  # noqa: E731
    s = Strategy(action="pipeline", steps=[step])
    plain = apply_strategy(s, tiny_dir, tmp_path / "plain", methods.Context(calibration=calib))
    ctx = methods.Context(calibration=calib, stats=tmp_path / "statistics")
    apply_strategy(s, tiny_dir, tmp_path / "first", ctx)
    second = apply_strategy(s, tiny_dir, tmp_path / "second", ctx)
    assert plain.error is None and second.error is None and len(list((tmp_path / "statistics").iterdir())) == 1
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "second" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_wanda_episode_at_another_sparsity_reads_the_stored_norms(tiny_dir, data_dir, tmp_path,
                                                                           monkeypatch):
    """Wanda's norms come from the dense incoming checkpoint, so another sparsity reuses them: one forward pass for
    two episodes (counted), and the same zeros as an episode that measured its own."""
    from safetensors.torch import load_file

    from agentic_compression.data import calibration_samples
    forwards = []
    real = stats_cache.forward_with_hooks
    monkeypatch.setattr(stats_cache, "forward_with_hooks", lambda *a, **k: (forwards.append(1), real(*a, **k))[1])
    calib = lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0)  # noqa: E731

    def wanda(sparsity, out, stats):
        s = Strategy(action="pruning", steps=[Step(method="wanda", params={"sparsity": sparsity, "num_samples": 2,
                                                                           "seq_len": 32})])
        res = apply_strategy(s, tiny_dir, tmp_path / out, methods.Context(calibration=calib, stats=stats))
        assert res.error is None, res.error
        return load_file(tmp_path / out / "model.safetensors")

    stats = tmp_path / "statistics"
    wanda(0.5, "first", stats)
    assert len(forwards) == 1
    second = wanda(0.3, "second", stats)
    assert len(forwards) == 1  # read, not measured
    plain = wanda(0.3, "plain", None)
    assert len(forwards) == 2
    name = "model.layers.0.mlp.down_proj.weight"
    assert 0.29 <= (second[name] == 0).float().mean() <= 0.31
    assert all(torch.equal(second[k] == 0, plain[k] == 0) for k in plain)
