"""Per-tensor llama.cpp types (targets/gguf_types.py): the knapsack is exact, the rounding is llama.cpp's own."""
import itertools
import math

import pytest
import torch

from agentic_compression.targets import get
from agentic_compression.targets.gguf_types import allocate, bits, fits, rounded

LLAMACPP = get("llamacpp")
needs_cpp = pytest.mark.skipif(not LLAMACPP.available()[0], reason=LLAMACPP.available()[1])


def test_stored_bits_and_row_widths_are_llama_cpps():
    assert (bits("Q4_0"), bits("Q8_0"), bits("Q4_K"), bits("Q6_K"), bits("IQ4_XS")) == (4.5, 8.5, 4.5, 6.5625, 4.25)
    assert fits("Q4_0", 576) and not fits("Q4_K", 576) and fits("Q4_K", 1536) and not fits("Q8_0", 48)


def test_the_allocation_is_exact_against_brute_force():
    """Every assignment of types to 5 matrices (a type a matrix does not offer excluded), the cheapest within the
    budget: the knapsack finds the same summed sensitivity, for several budgets."""
    g = torch.Generator().manual_seed(3)
    types = ("Q8_0", "Q6_K", "Q4_K", "Q4_0", "Q3_K")
    numels = {"a": 576 * 256, "b": 576 * 512, "c": 1536 * 256, "d": 576 * 768, "e": 256 * 256}
    sens = {}
    for n in numels:
        noise = torch.rand(len(types), generator=g).tolist()
        sens[n] = {t: (9 - bits(t)) ** 2 * (1 + x) for t, x in zip(types, noise)}
    del sens["a"]["Q6_K"], sens["d"]["Q3_K"]  # not offered at those widths
    total = sum(numels.values())
    for budget in (4.0, 4.6, 5.3, 6.0, 7.5, 8.5):
        best = math.inf
        for combo in itertools.product(*(list(sens[n]) for n in numels)):
            stored = sum(bits(t) * numels[n] for n, t in zip(numels, combo))
            if stored <= budget * total + 1e-6:
                best = min(best, sum(sens[n][t] for n, t in zip(numels, combo)))
        got = allocate(sens, numels, budget)
        assert sum(bits(t) * numels[n] for n, t in got.items()) <= budget * total + 1e-6
        assert all(t in sens[n] for n, t in got.items())
        assert sum(sens[n][t] for n, t in got.items()) == pytest.approx(best), budget
    with pytest.raises(ValueError):
        allocate(sens, numels, 3.0)


@needs_cpp
@pytest.mark.slow
def test_the_rounding_is_what_llama_quantize_writes(tmp_path, tiny_dir, data_dir):
    """A down projection rounded in Python (ggml_quantize_chunk, gguf-py's dequantize) equals the tensor llama-quantize
    wrote for that type, element for element, with and without an importance vector."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from agentic_compression.models import load
    from agentic_compression.targets.llamacpp import quantize

    LLAMACPP.export(tiny_dir, tmp_path / "f32")
    model, _ = load(tiny_dir)
    w = model.model.layers[1].mlp.down_proj.weight.data
    for qtype in ("Q4_0", "Q5_1", "IQ4_NL", "Q8_0"):
        quantize(tmp_path / "f32" / "model.gguf", tmp_path / f"{qtype}.gguf", "Q8_0",
                 tensor_types={"blk\\.1\\.ffn_down": qtype.lower()})
        (t,) = [t for t in GGUFReader(str(tmp_path / f"{qtype}.gguf")).tensors if t.name == "blk.1.ffn_down.weight"]
        assert t.tensor_type.name == qtype
        theirs = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(w.shape).copy())
        assert torch.equal(rounded(w, qtype), theirs), qtype
    imp = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(0)) * 10
    assert not torch.equal(rounded(w, "Q4_0", imp), rounded(w, "Q4_0"))  # the importance changes the rounding


def test_the_rules_first_llama_cpp_episode_is_the_per_tensor_allocation_with_an_importance_matrix(tiny_weights_dir):
    """On a llama.cpp run the rule starts with what is most likely to beat the preset: every type per tensor, under a
    budget near the preset's size, rounded with the importance matrix."""
    import json

    from agentic_compression.loop.spec import infer_spec
    from agentic_compression.methods import available_methods
    from agentic_compression.policies import PolicyView, RulePolicy
    from agentic_compression.targets import get

    llamacpp = get("llamacpp")
    if not llamacpp.available()[0]:
        pytest.skip(llamacpp.available()[1])
    avail = {n: m for n, m in available_methods().items() if llamacpp.offers(m)}
    view = PolicyView(spec=infer_spec("tiny", tiny_weights_dir, online=False), methods=avail, baseline=None,
                      model_config=json.loads((tiny_weights_dir / "config.json").read_text()), frontier=[],
                      history=[], tried=set(), episodes_left=10, seconds_left=1e6, skill_recommendations=[])
    (step,) = RulePolicy().decide(view).steps
    assert step.method == "gguf_mixed" and step.params["imatrix"] is True and step.params["avg_bits"] == 6.0
