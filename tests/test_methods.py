import json

import pytest
import torch

from agentic_compression import methods
from agentic_compression.methods import Context
from agentic_compression.models import load


@pytest.fixture
def ctx(data_dir):
    from agentic_compression.data import calibration_samples

    return Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0))


def _compress(tiny_dir, tmp_path, name, params, ctx):
    model, tok = load(tiny_dir)
    m = methods.get(name)()
    out = tmp_path / name
    m.save(m.apply(model, tok, params, ctx), tok, out)
    return out


def _forward_ok(path):
    model, tok = load(path)
    with torch.no_grad():
        logits = model(**tok("The quick brown fox", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    return model


def _layer_bytes(folder):
    import math
    import struct

    from agentic_compression.spec import _DTYPE_BYTES

    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(t["shape"]) * _DTYPE_BYTES[t["dtype"]] for k, t in header.items()
               if k.startswith("model.layers.") and "layernorm" not in k)


def _unpacked(linear):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(linear.weight_shape.tolist())
    return unpack_from_int32(linear.weight_packed, 4, shape)


@pytest.mark.parametrize("method,params", [("rtn", {"scheme": "W4A16", "group_size": 32}),
                                           ("gptq", {"scheme": "W4A16", "group_size": 64, "num_samples": 4,
                                                     "seq_len": 32})])
def test_4bit_checkpoint_reloads_holding_4bit_values(tiny_dir, tmp_path, ctx, method, params):
    out = _compress(tiny_dir, tmp_path, method, params, ctx)
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    w = qcfg["config_groups"]["group_0"]["weights"]
    assert (qcfg["quant_method"], w["num_bits"], w["group_size"]) == ("compressed-tensors", 4, params["group_size"])
    assert "lm_head" in qcfg["ignore"]
    model, _ = load(out)  # transformers keeps the packed layout until the first forward pass
    lin = model.model.layers[0].mlp.down_proj
    assert lin.weight_packed.dtype == torch.int32 and lin.weight_packed.shape == (64, 128 // 8)
    q = _unpacked(lin)
    assert q.shape == (64, 128) and q.min() >= -8 and q.max() <= 7 and len(torch.unique(q)) <= 16
    assert lin.weight_scale.shape == (64, 128 // params["group_size"])
    _forward_ok(out)
    # on disk, the decoder layers (all but the fp32 embedding) shrink to 4 bits + group scales
    assert _layer_bytes(out) < 0.25 * _layer_bytes(tiny_dir)


def test_w8a8_checkpoint_stores_int8_weights_and_dynamic_activations(tiny_dir, tmp_path, ctx):
    out = _compress(tiny_dir, tmp_path, "rtn", {"scheme": "W8A8", "group_size": None}, ctx)
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["input_activations"]["num_bits"] == 8 and group["input_activations"]["dynamic"] is True
    model, _ = load(out)
    w = model.model.layers[1].self_attn.q_proj.weight
    assert w.dtype == torch.int8 and w.shape == (64, 64)
    _forward_ok(out)


def test_gptq_error_compensation_beats_rtn_on_calibrated_layers(tiny_dir, tmp_path, ctx, data_dir):
    """Both 4-bit; GPTQ (with the same grid) must reproduce the fp32 layer outputs at least as well as RTN."""
    from agentic_compression.data import calibration_samples

    params = {"scheme": "W4A16", "group_size": 64}
    rtn = _forward_ok(_compress(tiny_dir, tmp_path, "rtn", params, ctx))
    gptq = _forward_ok(_compress(tiny_dir, tmp_path, "gptq", {**params, "num_samples": 16, "seq_len": 64}, ctx))
    ref, tok = load(tiny_dir)
    x = torch.tensor(calibration_samples(tok, data_dir, 4, 64, seed=99))
    with torch.no_grad():
        target = ref(input_ids=x).logits
        err = {n: (m(input_ids=x).logits - target).pow(2).mean().item() for n, m in (("rtn", rtn), ("gptq", gptq))}
    assert err["gptq"] < err["rtn"]


def test_group_size_must_divide_every_linear_width():
    smollm2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    rtn = methods.get("rtn")
    assert "does not divide" in rtn.check({"scheme": "W4A16", "group_size": 128}, smollm2)
    assert rtn.check({"scheme": "W4A16", "group_size": 64}, smollm2) is None
    assert "per-channel" in rtn.check({"scheme": "W8A8", "group_size": 64}, smollm2)
    assert "not one of" in rtn.check({"scheme": "W3A16"}, smollm2)
    assert "takes no parameter" in rtn.check({"bits": 4}, smollm2)
    assert "outside" in methods.get("gptq").check({"num_samples": 0, "group_size": 64}, smollm2)


def test_registry_reports_availability_with_reason(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llmcompressor" else real(n, *a))
    ok, why = methods.get("gptq").available()
    assert not ok and "llmcompressor" in why
    assert "gptq" not in methods.available_methods()
