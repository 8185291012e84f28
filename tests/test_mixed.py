"""Mixed precision: the exact bit allocation against brute force, the measured sensitivities, and a checkpoint whose
layers hold the formats the allocation chose."""
import itertools
import json
import random

import pytest
import torch

from agentic_compression import methods
from agentic_compression.loop.workers import apply_strategy
from agentic_compression.methods.mixed import allocate, fake_quant, sensitivities
from agentic_compression.schemas import Step, Strategy


def _brute(numels, costs, bits, avg):
    best = None
    for pick in itertools.product(range(len(bits)), repeat=len(numels)):
        if sum(bits[f] * n for f, n in zip(pick, numels)) <= avg * sum(numels) + 1e-9:
            c = sum(costs[i][f] for i, f in enumerate(pick))
            best = c if best is None or c < best else best
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_allocation_is_the_brute_force_optimum_within_the_budget(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    bits = sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(2, 3)))
    numels = [rng.choice([64, 128, 192, 256, 512]) * rng.randint(1, 3) for _ in range(n)]
    # lower bits cost more (sensitivity falls with precision), with ties and near-ties
    costs = [sorted((round(rng.random(), 2) for _ in bits), reverse=True) for _ in range(n)]
    avg = rng.uniform(bits[0], bits[-1])
    pick = allocate(numels, costs, bits, avg)
    assert sum(bits[f] * k for f, k in zip(pick, numels)) <= avg * sum(numels) + 1e-9
    assert sum(costs[i][f] for i, f in enumerate(pick)) == pytest.approx(_brute(numels, costs, bits, avg))


def test_the_budget_ends_are_uniform_and_below_them_is_an_error():
    numels, costs = [100, 300, 200], [[0.5, 0.1], [0.9, 0.0], [0.2, 0.1]]
    assert allocate(numels, costs, [4, 8], 4.0) == [0, 0, 0]
    assert allocate(numels, costs, [4, 8], 8.0) == [1, 1, 1]
    assert allocate(numels, costs, [4, 8], 6.0) == [0, 1, 0]  # the 300-weight layer buys the most for 1,200 bits
    with pytest.raises(ValueError, match="below the smallest format"):
        allocate(numels, costs, [4, 8], 3.9)


def test_rounding_is_compressed_tensors_symmetric_grid():
    w = torch.randn(8, 64)
    q = fake_quant(w, 4, 32)
    for g in range(2):  # per group of 32 inputs: at most 16 levels, on a grid of absmax / 7.5
        block = w[:, 32 * g: 32 * (g + 1)]
        scale = block.abs().amax(-1, keepdim=True) / 7.5
        levels = q[:, 32 * g: 32 * (g + 1)] / scale
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.round().min() >= -8 and levels.round().max() <= 7
    assert (fake_quant(w, 8, None) - w).abs().max() < (q - w).abs().max()


def test_sensitivities_are_measured_and_leave_the_model_as_it_was(tiny_dir):
    from agentic_compression.models import load

    model, tok = load(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = [tok("The lighthouse keeper wrote that the storm had passed over the northern cape")["input_ids"]] * 2
    sens = sensitivities(model, windows, {"W4A16": 4, "W8A16": 8}, 32)
    assert len(sens) == 2 * 7  # 2 blocks x q, k, v, o, gate, up, down
    assert all(s["W4A16"] > s["W8A16"] >= 0 for s in sens.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mixed_writes_the_allocated_formats_into_one_compressed_tensors_checkpoint(tmp_path, tiny_dir, data_dir):
    from agentic_compression.data import calibration_samples
    from agentic_compression.models import load

    ctx = methods.Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0))
    step = Step(method="mixed", params={"avg_bits": 6.0, "group_size": 32, "num_samples": 2, "seq_len": 64})
    res = apply_strategy(Strategy(action="quantization", steps=[step]), tiny_dir, tmp_path / "ckpt", ctx)
    assert res.error is None, res.error
    plan = res.steps[0]["measured"]["mixed"]
    assert set(plan["assignment"].values()) == {"W4A16", "W8A16"} and 4 < plan["avg_bits"] <= 6.0
    groups = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]["config_groups"]
    by_bits = {g["weights"]["num_bits"]: set(g["targets"]) for g in groups.values()}
    assert by_bits == {b: {n for n, f in plan["assignment"].items() if f == fmt} for fmt, b in
                       (("W4A16", 4), ("W8A16", 8))}
    model, _ = load(tmp_path / "ckpt")  # reloads as compressed-tensors, each layer with the bits it was given
    for name, fmt in plan["assignment"].items():
        assert model.get_submodule(name).quantization_scheme.weights.num_bits == int(fmt[1])
    # the most sensitive layer at 4 bits got 8
    worst = max(plan["sensitivity"], key=lambda n: plan["sensitivity"][n]["W4A16"] - plan["sensitivity"][n]["W8A16"])
    assert plan["assignment"][worst] == "W8A16"


def test_the_report_charts_each_layers_sensitivity_by_the_format_it_was_given():
    from agentic_compression.report import sensitivity_chart

    m = {"formats": {"W4A16": 4, "W8A16": 8}, "avg_bits": 5.0, "budget_bits": 5.0,
         "sensitivity": {"a": {"W4A16": 0.3, "W8A16": 0.01}, "b": {"W4A16": 0.1, "W8A16": 0.0},
                         "c": {"W4A16": 0.5, "W8A16": 0.02}},
         "assignment": {"a": "W4A16", "b": "W4A16", "c": "W8A16"}}
    fig = sensitivity_chart({"episode_id": "episode_003", "mixed": m})
    bars = {b.name: (list(b.x), list(b.y)) for b in fig.data}
    assert bars == {"given W4A16": (["a", "b"], [0.3, 0.1]), "given W8A16": (["c"], [0.5])}
    assert "episode_003" in fig.layout.title.text and "W4A16" in fig.layout.title.text


def test_sensitivities_are_measured_once_per_model_and_reused_from_the_experiment_folder(tmp_path, tiny_dir):
    """stats_cache: a second plan on the same weights and windows (another budget) reuses the stored sensitivities;
    changed weights, or a torn file, are measured again."""
    from agentic_compression.methods.mixed import plan
    from agentic_compression.models import load

    model, tok = load(tiny_dir)
    windows = [tok("The lighthouse keeper wrote that the storm had passed over the northern cape")["input_ids"]]
    stats = tmp_path / "statistics"
    first = plan(model, windows, 6.0, 32, stats=stats)
    second = plan(model, windows, 5.0, 32, stats=stats)
    assert not first["sensitivity_reused"] and second["sensitivity_reused"]
    assert second["sensitivity"] == first["sensitivity"] and len(list(stats.iterdir())) == 1
    (f,) = stats.iterdir()
    f.write_text(f.read_text()[:50])  # torn
    assert not plan(model, windows, 5.0, 32, stats=stats)["sensitivity_reused"]
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    changed = plan(model, windows, 5.0, 32, stats=stats)
    assert not changed["sensitivity_reused"] and len(list(stats.iterdir())) == 2
