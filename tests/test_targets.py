"""Deployment targets: llama.cpp (GGUF) export, quantization types, measurement in the runtime, and a run there."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from agentic_compression import methods, targets
from agentic_compression.loop.workers import apply_strategy
from agentic_compression.schemas import Step, Strategy

LLAMACPP, ORT = targets.get("llamacpp"), targets.get("ortgenai")
# setup.sh installs every CPU target: CI runs these, and skips none
needs_cpp = pytest.mark.skipif(not LLAMACPP.available()[0], reason=LLAMACPP.available()[1])
needs_ort = pytest.mark.skipif(not ORT.available()[0], reason=ORT.available()[1])


def _ctx(data_dir=None):
    from agentic_compression.data import calibration_samples

    return methods.Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0))


def _runtime(target, out, n_ctx, logits_all=True):
    from agentic_compression.models.llamacpp_runtime import LlamaCpp
    from agentic_compression.targets.ortgenai import OrtGenAI

    if target is LLAMACPP:
        return LlamaCpp(out / "model.gguf", n_ctx=n_ctx, logits_all=logits_all)
    return OrtGenAI(out, n_ctx, logits_all=logits_all)


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(LLAMACPP, marks=needs_cpp, id="llamacpp"),
                                    pytest.param(ORT, marks=needs_ort, id="ortgenai")])
def test_the_f32_export_scores_every_token_as_transformers_does(tmp_path, tiny_dir, target):
    """lm-eval's log-likelihoods through the runtime (RuntimeLM) against lm-eval's HFLM on the PyTorch model: within
    1e-3 per token, also for choices that share a context; and serving mode decodes the same greedy tokens as
    transformers (what latency is timed on)."""
    from lm_eval.models.huggingface import HFLM

    from agentic_compression.evaluation import measure
    from agentic_compression.models import load
    from agentic_compression.targets.runtime_lm import RuntimeLM

    out = tmp_path / "f32"
    info = target.export(tiny_dir, out)
    assert info["conversion_check"]["ok"] and info["conversion_check"]["kl"] < 1e-3
    assert info["type"].lower() in ("f32", "fp32") and abs(info["bits_per_weight"] - 32) < 0.5
    model, tok = load(tiny_dir)
    cpp = _runtime(target, out, 256)
    reqs = [("The lighthouse keeper wrote", " that the storm had passed."), ("In 1874 the", " light was built"),
            ("A", " long answer with several tokens in it, to score")]
    hf, cl = HFLM(pretrained=model, tokenizer=tok, batch_size=1), RuntimeLM(cpp, tok, None, 256)
    for (ctx, cont) in reqs:
        c_ids, t_ids = hf._encode_pair(ctx, cont)
        assert cl._encode_pair(ctx, cont) == (c_ids, t_ids)
        (a, ga), = hf._loglikelihood_tokens([((ctx, cont), c_ids, t_ids)])
        (b, gb), = cl._loglikelihood_tokens([((ctx, cont), c_ids, t_ids)])
        assert abs(a - b) / len(t_ids) < 1e-3 and ga == gb
    # one call over choices that share their context, as lm-eval asks (the runtime reuses the context's state)
    choices = [hf._encode_pair("The lighthouse keeper wrote", c) for c in (" that", " that the storm", " a poem")]
    ours = cl._loglikelihood_tokens([((None, None), c, t) for c, t in choices])
    theirs = hf._loglikelihood_tokens([((None, None), c, t) for c, t in choices])
    assert all(abs(a - b) < 1e-3 * len(t) for (a, _), (b, _), (_, t) in zip(ours, theirs, choices))
    cpp.close()
    serving = _runtime(target, out, 64, logits_all=False)
    prompt = tok("The lighthouse on the northern cape")["input_ids"]
    ours = measure.latency(serving, prompt, 8, 0, 1)["generated"]
    assert ours == measure.latency(model, prompt, 8, 0, 1)["generated"]


@pytest.mark.slow
@needs_cpp
def test_a_quantization_type_chains_after_structured_pruning(tmp_path, tiny_dir, data_dir):
    """structured MLP pruning in PyTorch, then llama.cpp's Q8_0 on the exported result: a smaller GGUF that
    llama.cpp loads, whose recorded bits per weight are what its tensors hold."""
    from agentic_compression.models.llamacpp_runtime import LlamaCpp
    from agentic_compression.targets.llamacpp import tensor_facts

    s = Strategy(action="pipeline", steps=[Step(method="structured", params={"granularity": "mlp", "ratio": 0.25}),
                                           Step(method="gguf", params={"type": "Q8_0"})])
    res = apply_strategy(s, tiny_dir, tmp_path / "ckpt", _ctx(data_dir), target=LLAMACPP)
    assert res.error is None, res.error
    fmt = json.loads((tmp_path / "ckpt" / "acf_format.json").read_text())
    assert fmt["type"] == "Q8_0" and fmt["conversion_check"]["ok"]
    assert fmt == {**fmt, **tensor_facts(tmp_path / "ckpt" / "model.gguf")}
    assert fmt["tensor_types"].get("Q8_0", 0) > 0 and 8 < fmt["bits_per_weight"] < 32
    from agentic_compression.models import load

    dense = sum(p.numel() for p in load(tiny_dir)[0].parameters())
    assert fmt["num_params"] < dense  # the MLP lost a quarter of its channels
    cpp = LlamaCpp(tmp_path / "ckpt" / "model.gguf", n_ctx=64)
    assert torch.isfinite(cpp(torch.tensor([[1, 2, 3]])).logits).all()
    cpp.close()
    assert [s["method"] for s in res.steps] == ["structured", "gguf"] and res.export["type"] == "Q8_0"


@pytest.mark.slow
@needs_cpp
def test_per_tensor_types_override_the_quantization_type(tmp_path, tiny_dir):
    """gguf.tensor_types (what a mixed-precision allocation sets): the named tensors hold the type asked for, every
    other weight matrix the strategy's type."""
    from gguf import GGUFReader

    step = Step(method="gguf", params={"type": "Q8_0", "tensor_types": {"ffn_down": "q4_0"}})
    res = apply_strategy(Strategy(action="quantization", steps=[step]), tiny_dir, tmp_path / "ckpt", _ctx(),
                         target=LLAMACPP)
    assert res.error is None, res.error
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "ckpt" / "model.gguf")).tensors}
    assert {v for k, v in types.items() if "ffn_down" in k} == {"Q4_0"}
    assert {v for k, v in types.items() if k.endswith(("ffn_up.weight", "attn_q.weight"))} == {"Q8_0"}
    assert res.export["tensor_overrides"] == {"ffn_down": "q4_0"}


@pytest.mark.slow
@needs_cpp
def test_mixed_precision_becomes_llamacpp_per_tensor_types(tmp_path, tiny_dir, data_dir):
    """gguf.avg_bits: every weight matrix's type (the token embedding too) chosen among the types llama.cpp stores
    at its row width, by measured sensitivity (gguf_types.py), each pattern naming exactly one tensor of the file,
    which holds that type; with an importance matrix too."""
    import re

    from gguf import GGUFReader

    from agentic_compression.targets.gguf_types import bits, fits

    for imatrix in (False, True):
        step = Step(method="gguf", params={"type": "Q8_0", "avg_bits": 6.0, "imatrix": imatrix, "imatrix_samples": 4})
        ckpt = tmp_path / f"ckpt-{imatrix}"
        res = apply_strategy(Strategy(action="quantization", steps=[step]), tiny_dir, ckpt, _ctx(data_dir),
                             target=LLAMACPP)
        assert res.error is None, res.error
        mixed, overrides = res.export["mixed"], res.export["tensor_overrides"]
        assert len(overrides) == 2 * 7 + 1 and mixed["avg_bits"] <= 6 and len(set(overrides.values())) > 1
        types = {t.name: t.tensor_type.name for t in GGUFReader(str(ckpt / "model.gguf")).tensors}
        shapes = {t.name: int(t.shape[0]) for t in GGUFReader(str(ckpt / "model.gguf")).tensors}  # row width first
        for pattern, ggml_type in overrides.items():
            (name,) = [n for n in types if re.search(pattern, n)]
            assert types[name] == ggml_type.upper() == mixed["file_types"][name] and fits(types[name], shapes[name])
        assert "token_embd.weight" in {n for p in overrides for n in types if re.search(p, n)}
        assert all(bits(t) <= 8.5 for t in mixed["file_types"].values() if t not in ("F32", "F16"))


@needs_cpp
def test_the_importance_matrix_is_made_once_and_read_as_the_allocation_weighs_columns(tmp_path, tiny_dir, data_dir):
    """An experiment's importance-matrix candidates share one llama-imatrix file (kept in its statistics); the
    allocation weighs each column by that file's in_sum2 / counts, which is the mean squared input of the column
    that PyTorch measures on the same windows (up to the text's re-tokenisation, which moves the chunks' edges)."""
    from agentic_compression.models import load
    from agentic_compression.models.stats_cache import input_stats
    from agentic_compression.targets.llamacpp import convert, gguf_names, imatrix_file, imatrix_importance

    model, tok = load(tiny_dir)
    windows = _ctx(data_dir).calibration(tok, 4, 512)
    convert(tiny_dir, tmp_path / "f32.gguf")
    made, reused = imatrix_file(tmp_path / "f32.gguf", model, tok, windows, tmp_path / "stats", tmp_path)
    again, reused_again = imatrix_file(tmp_path / "f32.gguf", model, tok, windows, tmp_path / "stats", tmp_path)
    assert (reused, reused_again, again) == (False, True, made) and made.parent == tmp_path / "stats"
    assert [p.name for p in (tmp_path / "stats").iterdir()] == [made.name]  # no temporary file left
    imp = imatrix_importance(made, gguf_names(model, tmp_path / "f32.gguf"))
    torch_side = {n: s["sq_sum"] / int(s["tokens"]) for n, s in input_stats(model, windows, None).items()}
    assert set(imp) == set(torch_side) and len(imp) == 2 * 7  # every block Linear; the embedding has no input
    for n, want in torch_side.items():  # seen: mean ratio 0.92-1.00, correlation 0.90-1.00 (o_proj the lowest)
        assert 0.85 < float(imp[n].mean() / want.mean()) < 1.15, n
        assert float(torch.corrcoef(torch.stack([imp[n], want]))[0, 1]) > 0.85, n


@pytest.mark.slow
@needs_cpp
def test_autoround_writes_a_gguf_that_llamacpp_runs_with_its_own_rounding(tmp_path, tiny_dir, data_dir):
    """autoround_gguf: auto-round's GGUF writer, checked against the PyTorch model in llama.cpp (same tokens, a
    perplexity ratio recorded), holding the type asked for, and rounded otherwise than llama.cpp's own Q4_0."""
    import numpy as np
    from gguf import GGUFReader

    def run(step, name):
        res = apply_strategy(Strategy(action="quantization", steps=[step]), tiny_dir, tmp_path / name,
                             _ctx(data_dir), target=LLAMACPP)
        assert res.error is None, res.error
        return res.export, {t.name: t for t in GGUFReader(str(tmp_path / name / "model.gguf")).tensors}

    ar, ar_t = run(Step(method="autoround_gguf", params={"type": "q4_0", "num_samples": 4, "seq_len": 64}), "ar")
    plain, plain_t = run(Step(method="gguf", params={"type": "Q4_0"}), "plain")
    assert ar["quantizer"].startswith("auto-round") and "perplexity" in ar["check"], ar.get("check")
    assert ar["tensor_types"].get("Q4_0", 0) > 0 and 4 < ar["bits_per_weight"] < 9
    name = "blk.0.ffn_down.weight"
    assert ar_t[name].tensor_type.name == plain_t[name].tensor_type.name == "Q4_0"
    assert not np.array_equal(np.asarray(ar_t[name].data), np.asarray(plain_t[name].data))


@pytest.mark.slow
@needs_ort
def test_int4_onnx_chains_after_structured_pruning(tmp_path, tiny_dir, data_dir):
    s = Strategy(action="pipeline", steps=[Step(method="structured", params={"granularity": "mlp", "ratio": 0.25}),
                                           Step(method="ort", params={"precision": "int4", "block_size": 32})])
    res = apply_strategy(s, tiny_dir, tmp_path / "ckpt", _ctx(data_dir), target=ORT)
    assert res.error is None, res.error
    fmt = json.loads((tmp_path / "ckpt" / "acf_format.json").read_text())
    weights = sum((tmp_path / "ckpt" / f).stat().st_size for f in ("model.onnx", "model.onnx.data")
                  if (tmp_path / "ckpt" / f).exists())
    assert fmt["type"] == "int4" and fmt["bits_per_weight"] == pytest.approx(8 * weights / fmt["num_params"])
    assert fmt["bits_per_weight"] < 16  # int4 blocks with scales, embeddings in fp32: far under fp32's 32
    out = _runtime(ORT, tmp_path / "ckpt", 64)
    assert torch.isfinite(torch.from_numpy(out.logits([1, 2, 3]))).all()


def _graph_ops(folder: Path) -> dict:
    """(op type, bits) -> count of the ONNX graph's MatMul and Gather nodes."""
    import collections

    import onnx

    g = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return dict(collections.Counter((n.op_type, next((a.i for a in n.attribute if a.name == "bits"), None))
                                    for n in g.graph.node if n.op_type.startswith(("MatMul", "Gather"))))


@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize("method,params,bits", [
    ("gptq", {"scheme": "W4A16", "group_size": 32, "num_samples": 8, "seq_len": 64}, {4}),
    ("mixed", {"avg_bits": 6.0, "group_size": 32, "num_samples": 2, "seq_len": 64}, {4, 8})])
def test_llmcompressor_integers_run_in_onnx_as_they_are(tmp_path, tiny_dir, data_dir, method, params, bits):
    """A GPTQ (or mixed W4/W8) candidate exported to ONNX Runtime GenAI through the AutoGPTQ layout its builder
    reads: the decoder's Linears become MatMulNBits of the candidate's own bit widths, the head and embeddings stay
    float as in the candidate, and the runtime's next-token distribution equals the compressed-tensors model's."""
    res = apply_strategy(Strategy(action="quantization", steps=[Step(method=method, params=params)]), tiny_dir,
                         tmp_path / "ckpt", _ctx(data_dir), target=ORT)
    assert res.error is None, res.error
    fmt = json.loads((tmp_path / "ckpt" / "acf_format.json").read_text())
    assert fmt["from"] == "compressed-tensors" and fmt["type"] == "+".join(f"int{b}" for b in sorted(bits))
    assert fmt["conversion_check"]["kl"] < 1e-4 and fmt["conversion_check"]["top1_agreement"] == 1.0
    ops = _graph_ops(tmp_path / "ckpt")
    assert {b for (op, b) in ops if op == "MatMulNBits"} == bits
    assert ops[("MatMul", None)] == 1 and not any(op == "GatherBlockQuantized" for op, _ in ops)  # head, embeddings
    if method == "mixed":  # each Linear at the width the allocation gave it
        assignment = res.steps[0]["measured"]["mixed"]["assignment"]
        assert ops[("MatMulNBits", 8)] == sum(f == "W8A16" for f in assignment.values())
    assert not list(tmp_path.glob(".stage-*"))


@pytest.mark.slow
@pytest.mark.parametrize("target,method,params,says", [
    pytest.param(LLAMACPP, "gguf", {"type": "Q4_0"}, ("llama.cpp's converter failed", "NoSuchModelForCausalLM"),
                 marks=needs_cpp, id="llamacpp"),
    pytest.param(ORT, "ort", {"precision": "int4"}, ("model builder failed", "model is not currently supported"),
                 marks=needs_ort, id="ortgenai")])
def test_a_failed_conversion_fails_the_episode_with_the_converters_error(tmp_path, tiny_dir, target, method,
                                                                         params, says):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    res = apply_strategy(Strategy(action="quantization", steps=[Step(method=method, params=params)]),
                         broken, tmp_path / "ckpt", _ctx(), target=target)
    assert res.checkpoint is None and res.failed_step == 0
    assert all(x in res.error for x in says), res.error
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("steps,target,why", [
    ([("gguf", {"type": "Q4_0"}), ("structured", {})], "llamacpp", "must be the last step"),
    ([("gptq", {})], "llamacpp", "produces compressed-tensors checkpoints, which the llamacpp target does not run"),
    ([("gguf", {"type": "Q4_0"})], "transformers", "produces gguf checkpoints, which the transformers target"),
    ([("gptq", {"group_size": None})], "ortgenai", "group_size None is not a power-of-two block"),
    ([("rtn", {"scheme": "W8A8", "group_size": None})], "ortgenai", "W8A8 quantizes activations"),
    ([("gptq", {"group_size": 64}), ("lora", {})], "ortgenai", "exported to ONNX as they are, so it must be the last"),
])
def test_a_strategy_the_target_cannot_run_is_refused_before_any_work(tmp_path, steps, target, why):
    s = Strategy(action="pipeline", steps=[Step(method=m, params=p) for m, p in steps])
    res = apply_strategy(s, tmp_path / "never-loaded", tmp_path / "ckpt", _ctx(), target=targets.get(target))
    assert res.checkpoint is None and why in res.error


@pytest.mark.parametrize("base_file,content,target,why", [
    ("acf_format.json", {"format": "gguf"}, "transformers", "is a runtime's deployed file"),
    ("config.json", {"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors"}},
     "llamacpp", "the llamacpp target exports dense checkpoints"),
])
def test_a_base_no_export_can_start_from_is_refused(tmp_path, base_file, content, target, why):
    """Chaining on a GGUF/ONNX episode (never loaded back into PyTorch), or exporting a compressed checkpoint to a
    runtime that converts dense ones: one line, before any work, and nothing written."""
    base = tmp_path / "episode_001" / "checkpoint"
    base.mkdir(parents=True)
    (base / base_file).write_text(json.dumps(content))
    step = Step(method="gguf", params={"type": "Q4_0"}) if target == "llamacpp" else Step(method="structured")
    res = apply_strategy(Strategy(action="pipeline", steps=[step]), base, tmp_path / "ckpt", _ctx(),
                         target=targets.get(target))
    assert res.checkpoint is None and why in res.error and not (tmp_path / "ckpt").exists()


def test_ort_refuses_what_its_builder_cannot_build():
    config = {"hidden_size": 576, "intermediate_size": 1536}
    check = methods.get("ort").check
    assert "block_size 32 only" in check({"algo_config": "k_quant", "block_size": 64}, config)
    assert "does not divide" in check({"block_size": 128}, config)
    assert check({"algo_config": "k_quant", "block_size": 32}, config) is None
    assert "int4" in check({"precision": "int8", "matmul_mixed_precision": "last_matmul:int8"}, config)


@pytest.mark.slow
@needs_ort
def test_int4_onnx_with_the_builders_int8_groups(tmp_path, tiny_dir, data_dir):
    """ORT GenAI's per-module precision: llama.cpp's sensitive layers in int8 (mixed_layers) inside the int4 graph,
    as int8 MatMulNBits nodes that make the file larger; the head in int8 is refused for a tied head, whose graph
    the builder writes broken."""
    sizes, ops = {}, {}
    for mixed in (None, "mixed_layers:int8"):
        s = Strategy(action="quantization", steps=[Step(method="ort", params={
            "precision": "int4", "block_size": 32, "matmul_mixed_precision": mixed})])
        out = tmp_path / str(mixed)
        res = apply_strategy(s, tiny_dir, out, _ctx(data_dir), target=ORT)
        assert res.error is None, res.error
        ops[mixed] = _graph_ops(out)
        sizes[mixed] = json.loads((out / "acf_format.json").read_text())["bits_per_weight"]
    assert ops[None].get(("MatMulNBits", 8), 0) == 0 < ops["mixed_layers:int8"][("MatMulNBits", 8)], ops
    assert sizes[None] < sizes["mixed_layers:int8"]
    assert torch.isfinite(torch.from_numpy(_runtime(ORT, tmp_path / "mixed_layers:int8", 64).logits([1, 2]))).all()
    config = json.loads((tiny_dir / "config.json").read_text())
    assert "tied to the embedding" in methods.get("ort").check(
        {"matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}, config)
    assert methods.get("ort").check({"matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"},
                                    {**config, "tie_word_embeddings": False}) is None


def test_policies_never_chain_on_a_deployed_file():
    from agentic_compression.policies.base import chainable

    entry = {"status": "success", "strategy": {"steps": [{"method": "structured"}, {"method": "gguf"}]}}
    assert not chainable(entry) and chainable({**entry, "strategy": {"steps": [{"method": "structured"}]}})
    assert not chainable({"status": "failed", "strategy": {"steps": [{"method": "gptq"}]}})


def test_the_rule_policy_reads_bits_from_runtime_types():
    from agentic_compression.policies.rule import bits

    assert [bits(Step(method="gguf", params={"type": t})) for t in ("Q8_0", "Q6_K", "Q4_K_M", "IQ4_XS")] == \
        [8, 6, 4, 4]
    assert [bits(Step(method="ort", params={"precision": p})) for p in ("int8", "int4")] == [8, 4]
    assert bits(Step(method="gguf", params={"type": "Q8_0", "avg_bits": 5.0})) == 5
    assert bits(Step(method="mixed", params={"avg_bits": 4.5})) == 4


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory, smollm2_dir):
    out = tmp_path_factory.mktemp("smollm2-gguf") / "f32"
    LLAMACPP.export(smollm2_dir, out)
    return out


@needs_cpp
@pytest.mark.integration
def test_each_type_reloads_and_stores_the_bits_it_claims(tmp_path, smollm2_dir, smollm2_f32):
    """SmolLM2's width 576 is no multiple of 256, so K-types fall back per tensor: the recorded bits per weight are
    the file's, each type's file is smaller than the one before, and each reloads with a sane perplexity."""
    from agentic_compression.models import llamacpp_runtime as llamacpp
    from agentic_compression.models import load
    from agentic_compression.targets.llamacpp import quantize, tensor_facts

    model, tok = load(smollm2_dir)
    sizes, bands = [], {"Q8_0": (8, 9), "Q6_K": (6.5, 8.5), "Q5_K_M": (5.5, 7), "Q4_K_M": (5, 6.5),
                        "Q4_0": (4, 5.5), "IQ4_XS": (4, 5.5)}
    for t in next(p.choices for p in methods.get("gguf").params if p.name == "type"):
        out = tmp_path / f"{t}.gguf"
        quantize(smollm2_f32 / "model.gguf", out, t)
        facts = tensor_facts(out)
        lo, hi = bands[t]
        assert lo <= facts["bits_per_weight"] <= hi, (t, facts)
        assert facts["bits_per_weight"] * facts["num_params"] / 8 <= out.stat().st_size  # plus metadata
        check = llamacpp.compare(model, tok, out)  # the fp32 model against llama.cpp running this file
        assert "perplexity" in check and 1 / 1.5 < check["ratio"] < 1.02, (t, check)
        sizes.append(out.stat().st_size)
    assert sizes[:5] == sorted(sizes[:5], reverse=True)


@needs_cpp
@pytest.mark.integration
def test_an_importance_matrix_changes_the_weights_and_lowers_the_calibration_error(tmp_path, smollm2_dir,
                                                                                   smollm2_f32, data_dir):
    from agentic_compression import data
    from agentic_compression.models import load_tokenizer
    from agentic_compression.models.llamacpp_runtime import LlamaCpp
    from agentic_compression.targets.llamacpp import importance_matrix, quantize

    tok = load_tokenizer(smollm2_dir)
    windows = data.calibration_samples(tok, data_dir, 8, 512, 0, "wikitext2-first-half")
    f32 = smollm2_f32 / "model.gguf"
    importance_matrix(f32, "\n".join(tok.decode(w) for w in windows), tmp_path / "imatrix.gguf", 512)
    quantize(f32, tmp_path / "plain.gguf", "Q4_0")
    quantize(f32, tmp_path / "imat.gguf", "Q4_0", tmp_path / "imatrix.gguf")
    assert (tmp_path / "plain.gguf").read_bytes() != (tmp_path / "imat.gguf").read_bytes()

    def kl(path):  # mean next-token KL from the f32 model on two calibration windows
        ref, q = LlamaCpp(f32, n_ctx=512), LlamaCpp(path, n_ctx=512)
        total = 0.0
        for w in windows[:2]:
            lp = torch.log_softmax(torch.tensor(ref.logits(w)[: len(w)].copy()), -1)
            lq = torch.log_softmax(torch.tensor(q.logits(w)[: len(w)].copy()), -1)
            total += (lp.exp() * (lp - lq)).sum(-1).mean().item()
        return total / 2

    assert kl(tmp_path / "imat.gguf") < kl(tmp_path / "plain.gguf")


def _kld_llama_perplexity_way(f32, quant, text, n_ctx, chunks):
    """acf's KL divergence (measure.KLDivergence) on exactly the tokens llama-perplexity scores: the text in chunks of
    n_ctx tokens, each starting with BOS where the vocabulary adds one, the second half of each chunk scored."""
    from agentic_compression.evaluation import measure
    from agentic_compression.models.llamacpp_runtime import LlamaCpp

    ref, q = LlamaCpp(f32, n_ctx=n_ctx), LlamaCpp(quant, n_ctx=n_ctx)
    ids, bos = ref.tokenize(text), ref.llm.token_bos()
    k, first = measure.KLDivergence(), n_ctx // 2
    for c in range(chunks):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx]
        if ids[0] == bos:
            chunk[0] = bos
        lp, lq = torch.tensor(ref.logits(chunk)[:n_ctx].copy()), torch.tensor(q.logits(chunk)[:n_ctx].copy())
        k.add(lq[first:n_ctx - 1], lp[first:n_ctx - 1], torch.tensor(chunk[first + 1:]))
    ref.close()
    q.close()
    return k.stats()


@needs_cpp
@pytest.mark.integration
def test_kld_agrees_with_llama_perplexity_and_orders_the_types(tmp_path, smollm2_f32, data_dir):
    """Mean KL divergence from the f32 GGUF: Q8_0 < Q4_K_M < Q4_0 on SmolLM2, and acf's value for Q4_0 within 5%
    of what llama.cpp's own `llama-perplexity --kl-divergence` prints on the same tokens (it stores the reference
    as 16-bit log-probabilities; acf's is exact)."""
    import re
    import subprocess

    from agentic_compression.targets.llamacpp import quantize, tool

    exe = tool("llama-perplexity")
    assert exe is not None, "setup.sh builds llama-perplexity beside llama-quantize"
    f32 = smollm2_f32 / "model.gguf"
    text = tmp_path / "wiki.txt"
    text.write_text((data_dir / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")[:60000], encoding="utf-8")
    ours = {}
    for t in ("Q8_0", "Q4_K_M", "Q4_0"):
        quantize(f32, tmp_path / f"{t}.gguf", t)
        ours[t] = _kld_llama_perplexity_way(f32, tmp_path / f"{t}.gguf", text.read_text(encoding="utf-8"), 512, 4)
    assert ours["Q8_0"]["mean"] < ours["Q4_K_M"]["mean"] < ours["Q4_0"]["mean"], ours
    assert all(o["n"] == 4 * 255 for o in ours.values())
    run = [str(exe), "-c", "512", "--chunks", "4", "-t", "2", "--kl-divergence-base", str(tmp_path / "base.kld")]
    subprocess.run([*run, "-m", str(f32), "-f", str(text)], check=True, capture_output=True)
    out = subprocess.run([*run, "-m", str(tmp_path / "Q4_0.gguf"), "--kl-divergence"], check=True,
                         capture_output=True, text=True)
    theirs = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", out.stdout + out.stderr).group(1))
    assert abs(ours["Q4_0"]["mean"] / theirs - 1) < 0.05, (ours["Q4_0"]["mean"], theirs)
    same = float(re.search(r"Same top p:\s+([0-9.]+)", out.stdout + out.stderr).group(1)) / 100
    assert abs(ours["Q4_0"]["same_top"] - same) < 0.02


RUNTIMES = {"llamacpp": ("llama.cpp", "gguf", "model.gguf"), "ortgenai": ("onnxruntime-genai", "ort", "model.onnx")}


@needs_cpp
@needs_ort
@pytest.mark.integration
def test_a_run_across_two_targets_measures_each_candidate_in_its_runtime(tmp_path, data_dir):
    """Two episodes on SmolLM2 with targets llamacpp,ortgenai (a GGUF Q4_0 and a compressed-tensors W4, scripted:
    the rule policy's first llama.cpp pick is tested in test_gguf_types.py): each target's baseline is its f32 export,
    timed beside transformers fp32 (the reference) and scoring as it does; every candidate is measured in the
    runtime its last step targets, on the reference's latency scale; a runtime's own quantization shrinks the file."""
    from test_loop import Scripted

    from agentic_compression.config import EvalSettings, RunConfig
    from agentic_compression.loop.experiment import Experiment

    cfg = RunConfig(model="smollm2-135m", data_dir=data_dir, output_dir=tmp_path, experiment="t", max_episodes=2,
                    use_skills=False, eval=EvalSettings(target="llamacpp,ortgenai", limit=20, ppl_tokens=512,
                                                        repeats=2))
    exp = Experiment(cfg)
    exp.policy = Scripted([Step(method="gguf", params={"type": "Q4_0"}),
                           Step(method="rtn", params={"scheme": "W4A16", "group_size": 64})])
    exp.run()
    final = json.loads((tmp_path / "t" / "final_results.json").read_text())
    ref = final["reference"]
    assert final["targets"] == ["llamacpp", "ortgenai"] and ref["result"]["runtime"]["target"] == "transformers"
    for name, (runtime, _, weights) in RUNTIMES.items():
        b = final["baselines"][name]
        assert b["runtime"]["runtime"] == runtime and b["runtime"]["type"].lower() in ("f32", "fp32")
        assert Path(b["checkpoint"], weights).is_file()
        side = ref["targets"][name]
        assert 0 < side["latency_ratio"] and abs(side["size_ratio"] - 1) < 0.01
        # on the reference's scale: the baseline's paired ratio times transformers' own median
        assert b["objectives"]["latency_ms"] == pytest.approx(side["latency_ratio"] * ref["result"]["latency_ms"])
    # the f32 GGUF scores as transformers fp32 does: the same items right, perplexity within 0.5%, and its next-token
    # distributions those of transformers (KL divergence measured on the perplexity tokens)
    assert final["baseline"]["accuracy"] == ref["result"]["accuracy"]
    assert abs(final["baseline"]["perplexity"] / ref["result"]["perplexity"] - 1) < 0.005
    assert ref["result"]["kld"] == 0.0 and ref["result"]["kld_detail"]["reference"].startswith("itself")
    for name in RUNTIMES:
        assert 0 <= final["baselines"][name]["objectives"]["kld"] < 1e-5, (name, final["baselines"][name])
    # the community presets, measured in their runtimes beside the frontier and never in it
    presets = {p["id"]: p for p in final["presets"]}
    assert set(presets) == {"preset:llamacpp:Q4_K_M", "preset:llamacpp:Q8_0", "preset:ortgenai:int4"}, presets
    assert all(p["status"] == "success" and p["id"] not in final["pareto_frontier"] for p in presets.values())
    kld = {k.split(":")[-1]: p["objectives"]["kld"] for k, p in presets.items()}
    assert 0 < kld["Q8_0"] < kld["Q4_K_M"], kld
    assert presets["preset:llamacpp:Q4_K_M"]["runtime"]["type"] == "Q4_K_M"
    ok = [e for e in final["episodes"] if e["status"] == "success"]
    assert ok
    for e in ok:  # a PyTorch-only strategy goes to the first target listed, compressed-tensors to ONNX
        last = methods.get(e["steps"][-1]["method"])
        name = next((n for n, (_, m, _) in RUNTIMES.items() if last.name == m),
                    "ortgenai" if last.produces == "compressed-tensors" else "llamacpp")
        runtime, method, weights = RUNTIMES[name]
        assert e["runtime"]["runtime"] == runtime and Path(e["checkpoint"], weights).is_file()
        if e["steps"][-1]["method"] == method:
            assert e["relative"]["model_size_gb"] < 0.35
        # KL divergence to its target's baseline (the f32 export), on every scored perplexity token
        k = e["kld"]
        assert k["n"] == 512 - 1 and k["reference_runtime"] == runtime and e["objectives"]["kld"] == k["mean"] > 0
        assert e["intervals"]["kld"][0] <= k["mean"] <= e["intervals"]["kld"][1]
    _export_each_runtime(tmp_path / "t", final)


def _export_each_runtime(exp_dir, final):
    """`acf export` of the llama.cpp and the ONNX Runtime GenAI candidate: what each runtime's users load, reloaded
    there predicting what the measured file predicts; a different file is caught; the run recommends one."""
    import subprocess
    import sys

    from agentic_compression.cli import main
    from agentic_compression.errors import UserError
    from agentic_compression.export import verify
    from agentic_compression.report import table

    by = {e["runtime"]["target"]: e["episode_id"] for e in final["episodes"] if e["status"] == "success"}
    gguf, onnx = exp_dir.parent / "gguf", exp_dir.parent / "onnx"
    assert main(["export", str(exp_dir), by["llamacpp"], "--out", str(gguf)]) == 0
    assert (gguf / "model.gguf").read_bytes() == (exp_dir / by["llamacpp"] / "checkpoint" / "model.gguf").read_bytes()
    assert (gguf / "Modelfile").read_text().splitlines()[-1] == "FROM ./model.gguf"
    card = (gguf / "README.md").read_text()
    assert "llama-cli -m PATH/model.gguf" in card and "ollama create" in card and "stored bits per weight" in card
    assert main(["export", str(exp_dir), by["ortgenai"], "--out", str(onnx)]) == 0
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= {p.name for p in onnx.iterdir()}
    snippet = targets.ortgenai.SNIPPET.replace("PATH", str(onnx))
    assert snippet in (onnx / "README.md").read_text().replace("PATH", str(onnx))
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.startswith("The capital of France is"), ran.stderr[-2000:]
    with pytest.raises(UserError, match="does not predict what"):  # the check is real: the f32 file differs
        verify(Path(final["baselines"]["llamacpp"]["checkpoint"]), gguf, LLAMACPP)
    assert main(["export", str(exp_dir), by["llamacpp"], "--out", str(exp_dir.parent / "x"), "--format", "onnx"]) == 2
    assert not (exp_dir.parent / "x").exists()
    said = table(exp_dir).splitlines()[-2:]
    if final["recommended"]:
        assert said[0].startswith(f"recommended: {final['recommended']}") and " the size of " in said[0]
        assert said[1].endswith(f"export {exp_dir} --best --out {exp_dir}-{final['recommended']}")
        assert main(["export", str(exp_dir), "--best", "--out", str(exp_dir.parent / "best")]) == 0


# ---- vLLM (GPU): written, not run here; tested up to the engine call ----

class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


def test_vllm_perplexity_uses_the_same_windows_as_every_runtime(tiny_dir):
    """VLLMTarget.perplexity over a model whose prompt_nll reads the tiny PyTorch model's log-probabilities in vLLM's
    prompt_logprobs layout equals evaluation.measure.perplexity on that model: the windows, the BOS context and the
    tokens scored are the same."""
    from types import SimpleNamespace

    from agentic_compression.evaluation import measure
    from agentic_compression.models import load
    from agentic_compression.targets.vllm import VLLMTarget, prompt_nll

    model, tok = load(tiny_dir)

    class Scored:
        def prompt_nll(self, ids, scored):
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            layout = [None] + [{ids[i]: _Logprob(lp[i - 1, ids[i]].item()), 7: _Logprob(-1.0)}
                               for i in range(1, len(ids))]
            return prompt_nll(ids, layout, scored)

    ids = tok("The lighthouse keeper wrote that the storm had passed. " * 12)["input_ids"][1:]
    s = SimpleNamespace(ppl_window=48, ppl_stride=24)
    ours = VLLMTarget().perplexity(Scored(), ids, s, tok.bos_token_id)
    ref = measure.perplexity(model, ids, 48, 24, tok.bos_token_id)
    assert ours["tokens"] == ref["tokens"] and ours["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-5)


def test_vllm_stepper_gives_decode_one_engine_step_per_token(monkeypatch):
    """Decode (what every latency is timed with) through the Stepper: one greedy request per generation, the
    engine's own tokens, steps without output for the request skipped, an unfinished request aborted."""
    import sys
    from types import ModuleType, SimpleNamespace

    from agentic_compression.evaluation import measure
    from agentic_compression.targets import vllm as target

    fake = ModuleType("vllm")
    fake.SamplingParams = lambda **k: k
    fake.inputs = ModuleType("vllm.inputs")
    fake.inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake.inputs)

    class Engine:  # vLLM's LLMEngine as the Stepper drives it: add_request, step, abort_request
        def __init__(self):
            self.requests, self.aborted, self.calls = {}, [], 0

        def add_request(self, rid, prompt, params):
            assert params["temperature"] == 0.0 and params["ignore_eos"]
            self.requests[rid] = [prompt["prompt_token_ids"], [], params["max_tokens"]]

        def step(self):
            self.calls += 1
            if self.calls % 3 == 0:
                return []  # a step that scheduled nothing for this request
            outs = []
            for rid, (prompt, toks, limit) in self.requests.items():
                if len(toks) < limit:
                    toks.append(100 + len(prompt) + len(toks))
                    outs.append(SimpleNamespace(request_id=rid, outputs=[SimpleNamespace(token_ids=list(toks))]))
            return outs

        def has_unfinished_requests(self):
            return any(len(t) < lim for _, t, lim in self.requests.values())

        def abort_request(self, rids):
            self.aborted += rids
            for r in rids:
                self.requests[r][2] = len(self.requests[r][1])

    st = object.__new__(target.Stepper)
    st.engine, st.request, st.count, st.tokens, st.max_tokens = Engine(), None, 0, 0, 6
    st.device = torch.device("cpu")
    first = measure.latency(st, [1, 2, 3], 4, 0, 1)["generated"]
    assert first == [103, 104, 105, 106, 107]
    second = measure.latency(st, [1, 2], 4, 0, 1)["generated"]
    assert second == [102, 103, 104, 105, 106] and st.engine.aborted == ["acf-1"]
    # throughput: a fixed batch in flight at once, every request to its last token, the open one aborted first
    tp = target.VLLMTarget().throughput(st, [1, 2, 3], SimpleNamespace(decode_tokens=4))
    assert st.engine.aborted == ["acf-1", "acf-2"]
    assert (tp["batch"], tp["output_tokens"]) == (target.THROUGHPUT_BATCH, 4 * target.THROUGHPUT_BATCH)
    assert tp["tokens_per_s"] == pytest.approx(tp["output_tokens"] / tp["seconds"])


def test_vllm_is_refused_in_one_line_where_it_cannot_run(tiny_dir, data_dir, tmp_path, capsys):
    from agentic_compression.cli import main

    assert not targets.get("vllm").available()[0]  # no vLLM, no GPU on this machine
    code = main(["run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir",
                 str(tmp_path), "--target", "vllm", "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and any("target 'vllm' cannot run here" in line for line in err)
    assert not any("Traceback" in line for line in err)


def test_runtimes_take_the_threads_asked_then_omp_num_threads_then_the_cpus_they_may_use(monkeypatch):
    from agentic_compression.models.threads import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (default_threads(5), default_threads()) == (5, 3)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)  # as under `taskset -c 0`
    assert default_threads() == 1
