"""Checkpoint formats: every PyTorch-side method's result is in the format it declares, in memory, saved and loaded
back; a LoRA adapter rides on any base; a model in two formats at once is refused; the bits per weight recorded
are the stored bytes over the logical parameters."""
import pytest
import torch

from agentic_compression import formats
from agentic_compression.methods import Context, available_methods, get
from agentic_compression.models import load

SMALL = {"num_samples": 2, "seq_len": 32, "steps": 2, "iters": 2, "batch_size": 1}  # where a method takes them
TORCH_SIDE = [pytest.param(n, marks=pytest.mark.slow) if n == "autoround" else n  # 12 s
              for n in sorted(n for n, m in available_methods().items() if not m.final and m.standalone)]


@pytest.fixture(scope="module")
def ctx(data_dir):
    from agentic_compression.data import calibration_samples

    return Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0))


@pytest.mark.parametrize("name", TORCH_SIDE)
def test_each_method_produces_the_format_it_declares(tiny_dir, tmp_path, ctx, name):
    m = get(name)
    params = m.resolve({k: v for k, v in SMALL.items() if any(p.name == k for p in m.params)})
    if name in ("rtn", "gptq", "awq", "autoround", "mixed"):
        params["group_size"] = 32
    model, tok = load(tiny_dir)
    done = m().apply(model, tok, params, ctx)
    assert formats.of(done).name == m.produces
    formats.save(done, tok, tmp_path / name)
    assert formats.stored_as(tmp_path / name).name == m.produces
    again = formats.load(tmp_path / name)
    assert formats.of(again).name == m.produces
    if m.produces in ("compressed-tensors", "bitsandbytes") and not (tmp_path / name / "adapter").is_dir():
        # quantized weights count as the weights they stand for (factorised or pruned models compute with fewer)
        assert formats.logical_params(again) == formats.logical_params(load(tiny_dir)[0])


def test_bits_per_weight_are_the_stored_bytes_over_the_logical_weights(tiny_dir, tmp_path, ctx):
    model, tok = load(tiny_dir)
    n = formats.logical_params(model)
    formats.save(model, tok, tmp_path / "dense")
    assert formats.describe(tmp_path / "dense", n) == {"format": "dense", "adapter": False,
                                                      "bits_per_weight": pytest.approx(32.0, abs=0.1)}
    q = get("rtn")().apply(model, tok, {"scheme": "W4A16", "group_size": 32}, ctx)
    formats.save(q, tok, tmp_path / "w4")
    d = formats.describe(tmp_path / "w4", formats.logical_params(formats.load(tmp_path / "w4")))
    # 4-bit blocks plus their scales; the (untied, float) embedding and head keep most of this tiny model at 32
    stored = sum(f.stat().st_size for f in (tmp_path / "w4").glob("*.safetensors"))
    assert d["format"] == "compressed-tensors" and d["bits_per_weight"] == pytest.approx(8 * stored / n, abs=1e-3)
    assert d["bits_per_weight"] < 32


def test_an_adapter_rides_on_a_compressed_base_and_keeps_its_bytes(tiny_dir, tmp_path, ctx):
    from agentic_compression.loop.workers import apply_strategy
    from agentic_compression.schemas import Step, Strategy

    st = Strategy(action="pipeline", steps=[Step(method="rtn", params={"scheme": "W4A16", "group_size": 32}),
                                            Step(method="lora", params={**get("lora").resolve({}), "steps": 2,
                                                                        "seq_len": 32, "merge": False})])
    only_rtn = Strategy(action="pipeline", steps=st.steps[:1])
    assert apply_strategy(only_rtn, tiny_dir, tmp_path / "rtn", ctx).error is None
    res = apply_strategy(st, tiny_dir, tmp_path / "both", ctx)
    assert res.error is None, res.error
    assert formats.stored_as(tmp_path / "both").name == "compressed-tensors"
    assert formats.describe(tmp_path / "both", 1)["adapter"] is True
    assert (tmp_path / "both" / "model.safetensors").read_bytes() == (tmp_path / "rtn" / "model.safetensors"
                                                                      ).read_bytes()  # the base, byte for byte
    model = formats.load(tmp_path / "both")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_a_model_in_two_formats_at_once_is_refused(tiny_dir, ctx):
    model, tok = load(tiny_dir)
    model = get("asvd")().apply(model, tok, {"rank_ratio": 0.5, "targets": "mlp", "alpha": 0.0}, ctx)
    model.model.layers[0].self_attn.q_proj.quantization_scheme = object()  # what llm-compressor attaches
    with pytest.raises(ValueError, match="low-rank and compressed-tensors at once"):
        formats.of(model)


def test_the_format_registry_rejects_a_taken_name():
    class Other(formats.Format):
        name = "dense"

    with pytest.raises(ValueError, match="format name 'dense' is taken"):
        formats.register(Other)


def test_each_format_is_run_by_the_targets_that_declare_it():
    from agentic_compression.targets import TARGETS

    def runtimes(fmt):
        return {t.name for t in TARGETS.values() if fmt in t.runs}

    assert runtimes("compressed-tensors") == {"transformers", "ortgenai", "vllm"}
    assert runtimes("bitsandbytes") == runtimes("low-rank") == {"transformers"}
    assert runtimes("dense") == {"transformers", "llamacpp", "ortgenai", "vllm"}
    assert all(runtimes(f) for f in formats.FORMATS if f != "other"), "a format no target runs"


def test_a_checkpoint_quantized_by_another_library_is_recognised_and_not_plain(tiny_dir, tmp_path):
    """A Hub GPTQ/AWQ base: acf writes no such format, but it must still be told apart (transformers loads it;
    a runtime's converter cannot read it as dense weights)."""
    import json
    import shutil

    from agentic_compression.loop.workers import plain

    folder = tmp_path / "hub-gptq"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq",
                                                                                   "bits": 4}}))
    assert formats.stored_as(folder).name == "other" and not plain(folder)
    assert formats.stored_as(tiny_dir).name == "dense" and plain(tiny_dir)
