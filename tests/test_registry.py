"""The registries (registry.py): one generic type with lazy entries, collisions refused, and the contracts between
methods, formats and targets checked when something registers."""
import sys
import types

import pytest

from agentic_compression import methods, registry, targets
from agentic_compression.registry import Registry


def test_a_lazy_entry_is_imported_on_first_use_only(monkeypatch):
    mod = types.ModuleType("acf_test_plugin")
    mod.Thing = type("Thing", (), {"name": "thing"})
    monkeypatch.setitem(sys.modules, "acf_test_plugin", mod)
    r = Registry("widget", make=lambda cls: cls())
    r.add("thing", "acf_test_plugin:Thing")
    assert "thing" in r and list(r) == ["thing"] and "thing" not in r._held  # named, not imported
    assert isinstance(r["thing"], mod.Thing) and r["thing"] is r["thing"]  # one instance, kept


def test_a_module_registering_what_its_lazy_entry_names_fills_that_entry(monkeypatch):
    r = Registry("widget")
    mod = types.ModuleType("acf_test_self_registering")

    class Thing:
        name = "thing"
    Thing.__module__, Thing.__qualname__ = "acf_test_self_registering", "Thing"
    mod.Thing = Thing
    r.add("thing", "acf_test_self_registering:Thing")
    r.register(Thing)  # what the module's decorator does when the entry resolves: no collision
    assert r["thing"] is Thing


def test_a_taken_name_is_refused_never_replaced():
    r = Registry("widget")
    first = type("First", (), {"name": "x"})
    r.register(first)
    with pytest.raises(ValueError, match="widget name 'x' is taken by First"):
        r.register(type("Second", (), {"name": "x"}))
    assert r["x"] is first
    r.add("lazy", "somewhere:Else")
    with pytest.raises(ValueError, match="widget name 'lazy' is taken by somewhere:Else"):
        r.add("lazy", type("Other", (), {}))


def test_a_contract_checks_entries_already_there_and_every_later_one():
    r = Registry("widget")
    r.add("ok", 1)
    r.add("bad", -1)
    with pytest.raises(ValueError, match="widget 'bad' cannot be registered: negative"):
        r.contract(lambda name, v: "negative" if v < 0 else None)
    assert "bad" not in r and r["ok"] == 1
    with pytest.raises(ValueError, match="negative"):
        r.add("worse", -2)
    assert "worse" not in r


def test_an_unknown_name_says_which_are_known():
    r = Registry("widget")
    r.add("a", 1)
    with pytest.raises(KeyError):
        r["b"]
    assert r.unknown("b") == "unknown widget 'b' (known: a)"
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.get("nope")


def test_a_method_whose_format_no_target_runs_cannot_register():
    class Orphan(methods.Method):
        name, action, produces = "orphan", "quantization", "tflite"

    with pytest.raises(ValueError, match="method 'orphan' cannot be registered: it produces 'tflite', which no "
                                         "target runs"):
        methods.register(Orphan)
    assert "orphan" not in methods.REGISTRY


def test_every_method_produces_what_some_target_runs_and_every_target_runs_known_formats():
    for m in methods.REGISTRY.values():
        assert any(m.produces in t.runs for t in targets.TARGETS.values()), m.name
    own = set().union(*(t.writes for t in targets.TARGETS.values()))
    assert own == {"gguf", "onnx"}
    for t in targets.TARGETS.values():
        assert t.runs <= set(registry.FORMATS) | t.writes, t.name
    for m in methods.REGISTRY.values():  # a final method makes a target's own file, and only that target runs it
        assert m.final == (m.produces in own), m.name


def test_a_target_running_an_unregistered_format_cannot_register():
    class Nowhere(targets.Target):
        name, runtime, runs = "nowhere", "nowhere", frozenset({"dense", "tflite"})

    with pytest.raises(ValueError, match="target 'nowhere' cannot be registered: it runs tflite, which no format "
                                         "registers"):
        targets.register(Nowhere)
    assert "nowhere" not in targets.TARGETS


def test_what_the_policies_and_the_card_read_comes_from_the_methods_declarations():
    from agentic_compression.card import build_tags
    from agentic_compression.loop.spec import classify
    from agentic_compression.schemas import Step

    assert classify(135_000_000) == ("small", ["autoround", "gptq", "awq", "rtn"])
    assert classify(70_000_000_000) == ("large", ["gptq", "rtn"])
    assert methods.get("structured").region == "dense-smaller" and methods.get("structured").produces == "dense"
    assert build_tags([Step(method="gptq", params={}), Step(method="lora", params={})]) == \
        ["acf", "compressed", "compressed-tensors", "gptq", "lora", "peft", "quantized"]


def test_target_and_policy_names_are_checked_against_the_registry(tmp_path):
    from agentic_compression import policies
    from agentic_compression.config import RunConfig
    from agentic_compression.errors import UserError

    with pytest.raises(ValueError, match="unknown target 'tflite' \\(known: auto, transformers, llamacpp"):
        RunConfig(model="m", dataset="hellaswag", data_dir=tmp_path, eval={"target": "tflite"})
    with pytest.raises(UserError, match="unknown policy 'greedy'"):  # validation.py: a 400 from the API, exit 2
        policies.make("greedy")
    assert type(policies.make("nsga2")).__name__ == "OptunaPolicy" and "nsga2" in registry.POLICIES
