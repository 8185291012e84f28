import pytest

from agentic_compression import methods
from agentic_compression.data import calibration_samples
from agentic_compression.loop.workers import apply_strategy
from agentic_compression.policies.pipelines import TEMPLATES, Probe, holds, instantiate, parse_condition
from agentic_compression.schemas import Step, Strategy

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64,
           "num_key_value_heads": 3}


def test_conditions_parse_and_decide():
    assert holds("ppl_ratio > 1.05", {"ppl_ratio": 1.2}) and not holds("ppl_ratio > 1.05", {"ppl_ratio": 1.0})
    assert holds("ppl_ratio<=1", {"ppl_ratio": 1.0})
    for bad in ("accuracy_drop > 2", "ppl_ratio >> 1", "ppl_ratio > x", ""):
        with pytest.raises(ValueError, match="is not"):
            parse_condition(bad)


def test_templates_exist_and_fit_the_model():
    assert set(TEMPLATES) == {"aggressive_compression", "balanced_quality", "quick_eval", "accuracy_focus"}
    avail = methods.available_methods()
    bq = instantiate("balanced_quality", SMOLLM2, avail)
    assert [s.method for s in bq.steps] == ["gptq", "lora"] and bq.steps[0].params["group_size"] == 64
    assert bq.steps[1].condition == "ppl_ratio > 1.05" and bq.action == "pipeline"
    ag = instantiate("aggressive_compression", SMOLLM2, avail)
    assert [s.method for s in ag.steps] == ["structured", "distill", "gptq"]  # distil before quantizing
    assert instantiate("balanced_quality", SMOLLM2, {k: v for k, v in avail.items() if k != "lora"}) is None
    over = instantiate("quick_eval", SMOLLM2, avail, {"rtn": {"scheme": "W8A16"}})
    assert over.steps[0].params["scheme"] == "W8A16"


@pytest.fixture
def ctx(tiny_dir, data_dir):
    return methods.Context(calibration=lambda tok, n, L: calibration_samples(tok, data_dir, n, L, seed=0),
                           probe=Probe(data_dir, tiny_dir, tokens=256), extras={"teacher": tiny_dir})


@pytest.mark.parametrize("condition,ran", [("ppl_ratio > 100", False), ("ppl_ratio > 0", True)])
def test_conditional_step_runs_only_when_its_condition_holds(tiny_dir, tmp_path, ctx, condition, ran):
    strategy = Strategy(action="pipeline", steps=[
        Step(method="magnitude", params={"sparsity": 0.3}),
        Step(method="lora", params={"steps": 2, "seq_len": 32}, condition=condition)])
    res = apply_strategy(strategy, tiny_dir, tmp_path / "ckpt", ctx)
    assert res.error is None
    assert [s["ran"] for s in res.steps] == [True, ran]
    assert res.steps[1]["facts"]["ppl_ratio"] > 1.0  # 30% of the weights gone: the probe sees it


def test_a_failing_step_names_itself_and_leaves_nothing(tiny_dir, tmp_path, ctx):
    strategy = Strategy(action="pipeline", steps=[Step(method="magnitude", params={"sparsity": 0.3}),
                                                  Step(method="structured", params={"granularity": "head",
                                                                                    "ratio": 0.2})])
    res = apply_strategy(strategy, tiny_dir, tmp_path / "ckpt", ctx)
    assert res.failed_step == 1 and "step 1 (structured) failed" in res.error
    assert "removes no key/value head group" in res.error
    assert not (tmp_path / "ckpt").exists()
    bad = Strategy(action="pipeline", steps=[Step(method="rtn"), Step(method="lora", condition="vibes > 1")])
    res = apply_strategy(bad, tiny_dir, tmp_path / "ckpt2", ctx)
    assert res.failed_step == 1 and "vibes" in res.error


def test_the_probe_reads_the_runs_calibration_text(tiny_dir, data_dir, tmp_path):
    from agentic_compression.models import load

    text = tmp_path / "calib.txt"
    text.write_text("the cat sat on the mat. " * 400)
    model, tok = load(tiny_dir)
    wiki, own = Probe(data_dir, tiny_dir, tokens=128), Probe(data_dir, tiny_dir, source=str(text), tokens=128)
    assert wiki._ppl(model, tok) != own._ppl(model, tok)  # --calibration reaches the step conditions' probe
