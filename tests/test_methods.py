import copy
import json
import re

import pytest
import torch

from agentic_compression import formats, methods
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
    formats.save(m.apply(model, tok, params, ctx), tok, out)
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

    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    width = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}  # safetensors dtypes
    return sum(math.prod(t["shape"]) * width[t["dtype"]] for k, t in header.items()
               if k.startswith("model.layers.") and "layernorm" not in k)


def _unpacked(linear):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(linear.weight_shape.tolist())
    return unpack_from_int32(linear.weight_packed, 4, shape)


@pytest.mark.parametrize("method,params", [("rtn", {"scheme": "W4A16", "group_size": 32}),
                                           ("gptq", {"scheme": "W4A16", "group_size": 64, "num_samples": 4,
                                                     "seq_len": 32}),
                                           pytest.param("autoround", {"scheme": "W4A16", "group_size": 32, "iters": 3,
                                                                      "num_samples": 8, "seq_len": 32,
                                                                      "batch_size": 4}, marks=pytest.mark.slow)])
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


def test_the_registry_rejects_a_taken_name_and_registered_is_temporary():
    class Impostor(methods.Method):
        name = "rtn"
        action = "quantization"

    class Temporary(methods.Method):
        name = "acf_test_temporary"
        action = "quantization"

    with pytest.raises(ValueError, match="method name 'rtn' is taken by RTN"):
        methods.register(Impostor)
    assert methods.get("rtn").__name__ == "RTN"
    with methods.registered(Temporary):
        assert "acf_test_temporary" in methods.available_methods()
    assert "acf_test_temporary" not in methods.REGISTRY


def test_awq_runs_on_cpu_and_stores_4bit(tiny_dir, tmp_path, ctx):
    """llm-compressor's AWQ pins its activation cache, which fails without an accelerator; ours runs on CPU."""
    out = _compress(tiny_dir, tmp_path, "awq", {"group_size": 32, "num_samples": 8, "seq_len": 64, "n_grid": 4}, ctx)
    model, _ = load(out)
    q = _unpacked(model.model.layers[1].mlp.up_proj)
    assert q.shape == (128, 64) and q.min() >= -8 and q.max() <= 7
    _forward_ok(out)


@pytest.mark.parametrize("mode,cls,dtype", [("int8", "Linear8bitLt", torch.int8), ("nf4", "Linear4bit", torch.uint8)])
def test_bitsandbytes_checkpoint_reloads_quantized(tiny_dir, tmp_path, ctx, mode, cls, dtype):
    out = _compress(tiny_dir, tmp_path, "bnb", {"mode": mode}, ctx)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"
    model = _forward_ok(out)
    lin = model.model.layers[0].self_attn.o_proj
    assert type(lin).__name__ == cls and lin.weight.dtype == dtype
    if mode == "nf4":  # two 4-bit values per byte
        assert lin.weight.numel() == 64 * 64 // 2
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32


def _zeros(model):
    from agentic_compression.methods.pruning import decoder_linears

    return {n: (m.weight == 0).float().mean().item() for n, m in decoder_linears(model)}


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "wanda"])
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_pruned_checkpoint_reloads_with_its_zeros(tiny_dir, tmp_path, ctx, method, structure):
    params = {"sparsity": 0.5, "mask_structure": structure}
    if method != "magnitude":
        params |= {"num_samples": 8, "seq_len": 64}
    out = _compress(tiny_dir, tmp_path, method, params, ctx)
    model = _forward_ok(out)
    zeros = _zeros(model)
    assert len(zeros) == 14 and all(0.49 <= z <= 0.51 for z in zeros.values()), zeros
    assert (model.model.embed_tokens.weight == 0).float().mean() < 0.01  # embedding / tied head untouched
    if structure == "2:4":
        w = model.model.layers[0].mlp.gate_proj.weight
        assert ((w.reshape(-1, 4) == 0).sum(1) >= 2).all()


def test_magnitude_keeps_the_largest_weights(tiny_dir, tmp_path, ctx):
    ref, _ = load(tiny_dir)
    model = _forward_ok(_compress(tiny_dir, tmp_path, "magnitude", {"sparsity": 0.3}, ctx))
    w0, w1 = ref.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
    kept, dropped = w0[w1 != 0].abs(), w0[w1 == 0].abs()
    assert dropped.max() <= kept.min() and torch.equal(w1[w1 != 0], w0[w1 != 0])


def test_wanda_drops_large_weights_on_silent_inputs_that_magnitude_would_keep(tiny_dir, tmp_path, ctx):
    """Wanda weighs |W| by its input's norm: down_proj inputs 0-7 are silenced (their up_proj rows zeroed), so their
    weights go first in every row although they are the largest; magnitude pruning keeps them."""
    model, tok = load(tiny_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:8] = 0
        model.model.layers[0].mlp.down_proj.weight[:, :8] = 10.0
    out = {}
    for method in ("wanda", "magnitude"):
        pruned = methods.get(method)().apply(copy.deepcopy(model), tok, {"sparsity": 0.25, "num_samples": 4,
                                                                         "seq_len": 32}, ctx)
        out[method] = pruned.model.layers[0].mlp.down_proj.weight
    assert (out["wanda"][:, :8] == 0).all() and (out["wanda"] == 0).sum(1).eq(128 // 4).all()
    assert (out["magnitude"][:, :8] == 10.0).all()


def test_asvd_factorises_into_two_smaller_linears_and_reloads(tiny_dir, tmp_path, ctx):
    from agentic_compression.formats.low_rank import LOWRANK_FILE, LowRankLinear
    from agentic_compression.methods.asvd import rank_for

    model, tok = load(tiny_dir)
    before = sum(p.numel() for p in model.parameters())
    m = methods.get("asvd")()
    model = m.apply(model, tok, {"rank_ratio": 0.5, "targets": "all", "num_samples": 4, "seq_len": 32}, ctx)
    out = tmp_path / "asvd"
    assert formats.of(model).name == "low-rank"
    formats.save(model, tok, out)
    assert formats.stored_as(out).name == "low-rank"
    ranks = json.loads((out / LOWRANK_FILE).read_text())["ranks"]
    assert len(ranks) == 14 and ranks["model.layers.0.mlp.down_proj"] == rank_for(128, 64, 0.5) == 21
    reloaded = _forward_ok(out)
    down = reloaded.model.layers[0].mlp.down_proj
    assert isinstance(down, LowRankLinear) and down.down.weight.shape == (21, 128) and down.up.weight.shape == (64, 21)
    after = sum(p.numel() for p in reloaded.parameters())
    assert after < before
    from agentic_compression.loop.spec import safetensors_params

    assert safetensors_params(out)[0] < safetensors_params(tiny_dir)[0]  # fewer parameters on disk
    ids = tok("Low rank layers", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, reloaded(**ids).logits, atol=1e-5)


def test_asvd_is_the_best_rank_r_fit_in_the_activation_scaled_norm():
    """ASVD truncates W S, so no rank-r matrix (plain SVD's included) has a smaller ||(W - W_r) S||_F."""
    from agentic_compression.methods.asvd import factorise

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32, bias=True)
    scale = torch.rand(48) * 10 + 0.01  # some input channels carry far larger activations
    asvd, svd = factorise(lin, scale, 8, alpha=1.0), factorise(lin, None, 8, alpha=0.0)
    dense = lambda f: f.up.weight @ f.down.weight  # noqa: E731
    err = lambda f, s: ((lin.weight - dense(f)) * s).norm().item()  # noqa: E731
    assert err(asvd, scale) < err(svd, scale)
    assert err(svd, torch.ones(48)) < err(asvd, torch.ones(48))  # plain SVD wins the unscaled norm
    full = factorise(lin, scale, 32, alpha=0.5)
    assert torch.allclose(dense(full), lin.weight, atol=1e-5) and torch.equal(full.up.bias, lin.bias)


@pytest.mark.parametrize("granularity,ratio,field,expected", [("mlp", 0.25, "intermediate_size", 96),
                                                               ("head", 0.5, "num_key_value_heads", 1),
                                                               ("layer", 0.5, "num_hidden_layers", 1)])
def test_structured_pruning_removes_structure_into_a_smaller_config(tiny_dir, tmp_path, ctx, granularity, ratio,
                                                                     field, expected):
    ref, _ = load(tiny_dir)
    out = _compress(tiny_dir, tmp_path, "structured",
                    {"granularity": granularity, "ratio": ratio, "num_samples": 4, "seq_len": 32}, ctx)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg[field] == expected
    model = _forward_ok(out)  # a plain transformers checkpoint: the smaller config loads as is
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ref.parameters())
    if granularity == "head":
        assert cfg["num_attention_heads"] == 2 and model.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    if granularity == "mlp":
        assert model.model.layers[1].mlp.down_proj.weight.shape == (64, 96)
    with torch.no_grad():  # generation with the KV cache works on the pruned model
        tok = load(out)[1]
        model.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=4, do_sample=False)


def test_structured_mlp_pruning_keeps_the_channels_that_matter(tiny_dir, ctx):
    """A channel whose down-projection column is zero contributes nothing: it must be among the first removed."""
    from agentic_compression.methods.structured import prune_mlp
    from agentic_compression.models.architecture import of_model
    from agentic_compression.models.stats_cache import input_stats

    model, tok = load(tiny_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :8] = 0
        gate_before = model.model.layers[0].mlp.gate_proj.weight[8:].clone()
    inputs = input_stats(model, ctx.calibration(tok, 4, 32), None)
    prune_mlp(model, of_model(model), inputs, ratio=0.0625)  # 128 -> 120 channels: exactly 8 go
    kept_gate = model.model.layers[0].mlp.gate_proj.weight
    assert kept_gate.shape == (120, 64) and torch.equal(kept_gate, gate_before)


def _run_chain(tiny_dir, tmp_path, ctx, chain):
    from agentic_compression.loop.workers import apply_strategy
    from agentic_compression.schemas import Step, Strategy

    out = tmp_path / "chain" / "ckpt"
    out.parent.mkdir()
    res = apply_strategy(Strategy(action="pipeline", steps=[Step(method=m, params=p) for m, p in chain]),
                         tiny_dir, out, ctx)
    assert res.error is None, res.error
    assert not list(out.parent.glob(".stage-*"))  # scratch copies between steps are cleaned up
    return out


@pytest.fixture
def train_ctx(ctx, tiny_dir):
    return Context(calibration=ctx.calibration, extras={"teacher": tiny_dir})


def test_qlora_trains_an_adapter_on_an_nf4_base(tiny_dir, tmp_path, train_ctx):
    out = _run_chain(tiny_dir, tmp_path, train_ctx, [("qlora", {"steps": 3, "seq_len": 32, "lr": 1e-3})])
    assert (out / "adapter" / "adapter_config.json").is_file()
    model = _forward_ok(out)
    lin = model.model.layers[0].mlp.up_proj
    assert type(lin.base_layer).__name__ == "Linear4bit"
    assert lin.lora_B["default"].weight.abs().sum() > 0  # peft starts B at zero: nonzero means trained and loaded


def test_lora_after_4bit_quantization_keeps_the_packed_base(tiny_dir, tmp_path, train_ctx):
    out = _run_chain(tiny_dir, tmp_path, train_ctx, [("rtn", {"scheme": "W4A16", "group_size": 32}),
                                                     ("lora", {"steps": 3, "seq_len": 32, "lr": 1e-3})])
    import struct

    with open(out / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["model.layers.0.mlp.up_proj.weight_packed"]["dtype"] == "I32"  # still 4-bit on disk
    model = _forward_ok(out)
    assert model.model.layers[1].self_attn.q_proj.lora_B["default"].weight.abs().sum() > 0


def test_lora_recovery_of_a_pruned_model_merges_and_keeps_the_zeros(tiny_dir, tmp_path, train_ctx):
    pruned = _forward_ok(_compress(tiny_dir, tmp_path, "magnitude", {"sparsity": 0.5}, train_ctx))
    out = _run_chain(tiny_dir, tmp_path, train_ctx, [("magnitude", {"sparsity": 0.5}),
                                                     ("lora", {"steps": 3, "seq_len": 32, "lr": 1e-3})])
    assert not (out / "adapter").exists()  # merged into the float weights
    model = _forward_ok(out)
    w, w0 = model.model.layers[0].mlp.up_proj.weight, pruned.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w == 0, w0 == 0) and not torch.equal(w, w0)


@pytest.mark.slow
def test_distillation_moves_a_pruned_student_towards_the_teacher(tiny_dir, tmp_path, train_ctx, data_dir):
    from agentic_compression.data import calibration_samples

    teacher, tok = load(tiny_dir)
    x = torch.tensor(calibration_samples(tok, data_dir, 2, 32, seed=77))

    def kl(model):
        with torch.no_grad():
            t, s = torch.log_softmax(teacher(input_ids=x).logits, -1), torch.log_softmax(model(input_ids=x).logits, -1)
            return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean").item()

    pruned = _forward_ok(_compress(tiny_dir, tmp_path, "magnitude", {"sparsity": 0.5}, train_ctx))
    out = _run_chain(tiny_dir, tmp_path, train_ctx, [("magnitude", {"sparsity": 0.5}),
                                                     ("distill", {"steps": 20, "seq_len": 32, "lr": 1e-3})])
    student = _forward_ok(out)
    assert kl(student) < kl(pruned)
    assert (student.model.layers[0].mlp.up_proj.weight == 0).float().mean() >= 0.5  # still pruned


def test_distillation_refuses_a_quantized_student(tiny_dir, tmp_path, train_ctx):
    from agentic_compression.loop.workers import apply_strategy
    from agentic_compression.schemas import Step, Strategy

    out = tmp_path / "d" / "ckpt"
    out.parent.mkdir()
    res = apply_strategy(Strategy(action="pipeline", steps=[Step(method="bnb", params={"mode": "nf4"}),
                                                            Step(method="distill", params={"steps": 2})]),
                         tiny_dir, out, train_ctx)
    assert res.failed_step == 1 and "before quantization" in res.error and not out.exists()


@pytest.mark.parametrize("method,params", [("rtn", {"scheme": "W4A16", "group_size": 32}), ("bnb", {"mode": "nf4"}),
                                           ("bnb", {"mode": "int8"})])
def test_quantization_keeps_the_logical_parameter_count(tiny_dir, tmp_path, ctx, method, params):
    from agentic_compression.formats import logical_params

    ref, _ = load(tiny_dir)
    model, _ = load(_compress(tiny_dir, tmp_path, method, params, ctx))
    assert logical_params(model) == logical_params(ref) == sum(p.numel() for p in ref.parameters())


def test_each_method_has_a_typed_config_that_refuses_what_check_refused_and_keeps_strategy_keys():
    """Method.config(): generated from the method's Params, validated when a policy makes a step. Unknown names and
    values outside a parameter's domain are one-line ParamErrors; numbers keep their type (a strategy's key hashes
    them), so the strategies of a table measured before typed configs resolve to the same keys."""
    from pathlib import Path

    from agentic_compression.methods import ParamError
    from agentic_compression.schemas import Step, Strategy

    gptq = methods.get("gptq")
    assert gptq.validated({"scheme": "W8A16"}) == {**gptq.defaults(), "scheme": "W8A16"}
    for bad, says in [({"bits": 4}, "takes no parameter 'bits'"), ({"scheme": "W3A16"}, "is not one of"),
                      ({"num_samples": 32.5}, "not a whole number"), ({"num_samples": True}, "not a number"),
                      ({"dampening_frac": 0.5}, "outside [0.001, 0.2]"), ({"group_size": "64"}, "is not one of")]:
        with pytest.raises(ParamError, match=re.escape(says)):
            gptq.validated(bad)
        assert says in gptq.check(bad, {})
    asvd = methods.get("asvd")
    assert type(asvd.validated({"alpha": 1})["alpha"]) is int and type(asvd.validated({"alpha": .5})["alpha"]) is float
    assert set(asvd.config().model_fields) == {p.name for p in asvd.params}
    table = json.loads((Path(__file__).parents[1] / "bench" / "grid_smollm2_l200.json").read_text())
    for row in (r for r in table["rows"] if len(r["strategy"]["steps"]) == 1):  # templates store theirs as written
        st = Strategy(action=row["strategy"]["action"], steps=[
            Step(method=s["method"], params=methods.get(s["method"]).validated(s["params"]))
            for s in row["strategy"]["steps"]])
        assert st.key() == row["key"], row["strategy"]
