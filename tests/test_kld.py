"""KL divergence to the baseline: the measure (exact over the vocabulary, llama-perplexity's statistics) and the
objective (frontier, hypervolume, reward, goals, an unmeasured value). The runtime checks against llama.cpp's own
tool are in test_targets.py."""
import math
from types import SimpleNamespace

import pytest
import torch

from agentic_compression.evaluation import measure
from agentic_compression.goals import Goals, judge
from agentic_compression.loop.pareto import ParetoFrontier
from agentic_compression.reward import reward
from agentic_compression.schemas import EvaluationResult, ParetoSolution, Strategy


def test_kl_divergence_is_exact_against_a_brute_force_sum():
    g = torch.Generator().manual_seed(0)
    ref, cand = torch.randn(300, 50, generator=g) * 3, torch.randn(300, 50, generator=g) * 3
    labels = torch.randint(0, 50, (300,), generator=g)
    k = measure.KLDivergence()
    k.add(cand, ref, labels)
    st = k.stats()
    kl = []
    for r, c in zip(ref.double().tolist(), cand.double().tolist()):  # by the definition, one position at a time
        zr, zc = math.log(sum(math.exp(x) for x in r)), math.log(sum(math.exp(x) for x in c))
        kl.append(sum(math.exp(a - zr) * ((a - zr) - (b - zc)) for a, b in zip(r, c)))
    mean = sum(kl) / len(kl)
    assert st["n"] == 300 and st["mean"] == pytest.approx(mean, rel=1e-9)
    sd = math.sqrt(sum((x - mean) ** 2 for x in kl) / 299)
    assert st["stderr"] == pytest.approx(sd / math.sqrt(300), rel=1e-9)
    assert st["max"] == pytest.approx(max(kl)) and st["median"] <= st["p90"] <= st["p99"] <= st["p99.9"] <= st["max"]
    same = (ref.argmax(-1) == cand.argmax(-1)).double().mean().item()
    assert st["same_top"] == pytest.approx(same)
    pq, pp = torch.softmax(cand.double(), -1), torch.softmax(ref.double(), -1)
    dp = pq[torch.arange(300), labels] - pp[torch.arange(300), labels]
    assert st["delta_p_rms"] == pytest.approx(dp.pow(2).mean().sqrt().item())
    assert st["mean_ln_ppl_ratio"] == pytest.approx((pp[torch.arange(300), labels].log() -
                                                     pq[torch.arange(300), labels].log()).mean().item())


class Toy:
    """Called like a transformers model: logits from a fixed random map of the token ids, plus noise."""

    device = torch.device("cpu")

    def __init__(self, w, g, noise=0.0):
        self.w = w + noise * torch.randn(w.shape, generator=g)

    def __call__(self, input_ids, **_):
        return SimpleNamespace(logits=self.w[input_ids])


def test_a_model_against_itself_diverges_by_nothing_and_another_by_something():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 40, generator=g)
    ids = torch.randint(0, 40, (300,), generator=g).tolist()
    a = measure.perplexity(Toy(w, g), ids, 64, 32, reference=measure.Reference(Toy(w, g)))
    assert a["kld"]["mean"] == pytest.approx(0.0, abs=1e-8) and a["kld"]["same_top"] == 1.0  # the rounding's floor
    assert a["kld"]["n"] == a["tokens"] == 299  # every scored token, once
    b = measure.perplexity(Toy(w, g, 0.5), ids, 64, 32, reference=measure.Reference(Toy(w, g)))
    assert b["kld"]["mean"] > 0.01 and b["kld"]["stderr"] > 0
    assert "kld" not in measure.perplexity(Toy(w, g), ids, 64, 32)  # no reference, no divergence
    with pytest.raises(ValueError, match="one vocabulary"):
        measure.KLDivergence().add(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def _peaked(g, n, vocab, temperature):
    """Logits shaped like a language model's: a Zipf-like spread over the vocabulary, a few likely tokens."""
    return torch.randn(n, vocab, generator=g, dtype=torch.float64) * temperature - torch.log(
        torch.arange(1, vocab + 1, dtype=torch.float64))[torch.randperm(vocab, generator=g)] * 2


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.5])
def test_the_stored_reference_changes_a_kl_divergence_by_under_a_thousandth(noise):
    """The reference as 16-bit log-probabilities (StoredLogProbs, as llama.cpp's --kl-divergence-base keeps it)
    against the exact float64 one: the mean KL divergence of a candidate 0.0001 to 0.3 nats from it moves by under
    0.1% (plus 1e-8), and the reference against itself by at most the rounding's floor, 1e-8 nats."""
    g = torch.Generator().manual_seed(3)
    ref = _peaked(g, 256, 4000, 3.0)
    cand = ref + noise * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4000, (256,), generator=g)
    exact, stored, itself = measure.KLDivergence(), measure.KLDivergence(), measure.KLDivergence()
    exact.add(cand, ref, labels)
    rounded = measure.StoredLogProbs.rounded(ref)
    stored.add(cand, rounded, labels)
    itself.add(ref, rounded, labels)
    e, s = exact.stats()["mean"], stored.stats()["mean"]
    assert 5e-5 < e < 0.3 and abs(s - e) <= 1e-3 * e + 1e-8, (e, s)
    assert itself.stats()["mean"] <= 1e-8
    assert abs(stored.stats()["delta_p_rms"] - exact.stats()["delta_p_rms"]) < 1e-4


def test_a_stored_reference_is_read_back_as_it_was_scored(tmp_path):
    """The baseline's evaluation stores its log-probabilities (keep); a candidate reading them (StoredLogProbs
    .reader) gets the KL divergence it gets scoring the baseline itself (Reference); a text that scores more
    positions than were stored is refused."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(50, 50, generator=g)
    ids = torch.randint(0, 50, (200,), generator=g).tolist()
    base, cand = Toy(w, g), Toy(w, g, 0.3)
    measure.perplexity(base, ids, 64, 32, keep=tmp_path / "ref")
    store = measure.StoredLogProbs(tmp_path / "ref")
    assert store.complete() and not list(tmp_path.glob("ref.tmp*"))
    live = measure.perplexity(cand, ids, 64, 32, reference=measure.Reference(base))["kld"]
    reader = store.reader()
    read = measure.perplexity(cand, ids, 64, 32, reference=reader)["kld"]
    reader.close()  # every stored position was read
    assert read == live and read["n"] == 199
    with pytest.raises(ValueError, match="holds 199 positions"):
        measure.perplexity(cand, ids + ids[:40], 64, 32, reference=store.reader())


def _solution(eid, kld, interval=None, **objectives):
    base = {"accuracy": 0.5, "latency_ms": 10.0, "memory_gb": 1.0, "model_size_gb": 1.0, "co2_grams": 1.0}
    return ParetoSolution(episode_id=eid, strategy=Strategy(action="quantization"),
                          objectives={**base, **objectives, "kld": kld},
                          intervals={"kld": interval} if interval else {})


def test_kld_decides_dominance_by_its_intervals_and_an_unmeasured_one_ties():
    f = ParetoFrontier(tolerance={})
    assert f.add(_solution("q4_0", 0.27, [0.26, 0.28]))
    assert f.add(_solution("imatrix", 0.03, [0.028, 0.032]))  # same costs, less divergence: dominates
    assert [s.episode_id for s in f.solutions] == ["imatrix"]
    assert not f.add(_solution("close", 0.031, [0.029, 0.033]))  # within the error: a tie, not a new point
    assert not f.add(_solution("vllm", None))  # the same costs and a divergence nobody measured: nothing new
    assert f.add(_solution("vllm", None, model_size_gb=0.9, latency_ms=12.0))  # a trade-off on the other axes
    assert {s.episode_id for s in f.solutions} == {"imatrix", "vllm"}


def test_kld_is_read_on_its_fixed_scale_by_the_hypervolume_and_the_reward():
    base = {"accuracy": 0.5, "latency_ms": 10.0, "memory_gb": 1.0, "model_size_gb": 1.0, "co2_grams": 1.0, "kld": 0.0}
    f = ParetoFrontier(baseline=base, tolerance={})
    f.add(_solution("a", 0.05, [0.04, 0.06], model_size_gb=0.25))
    hv_a = f.hypervolume()
    g = ParetoFrontier(baseline=base, tolerance={})
    g.add(_solution("b", 0.25, [0.24, 0.26], model_size_gb=0.25))
    assert hv_a > g.hypervolume() > 0  # a zero baseline divides nothing: the scale (0.5 nats) does
    assert reward(_solution("a", 0.05).objectives, base) - reward(_solution("b", 0.25).objectives, base) == \
        pytest.approx(2.5 * 0.2 / 0.5)
    assert reward(base, base) == 0.0


def _result(kld, runtime="llama.cpp"):
    return EvaluationResult(accuracy=0.5, accuracy_stderr=0.05, accuracy_n=100, benchmark="hellaswag", latency_ms=10,
                            memory_gb=1, model_size_gb=1, size_bytes=10**9, num_params=10**8, co2_grams=1,
                            energy_kwh=1, eval_seconds=1, kld=kld, runtime={"runtime": runtime})


def test_the_kld_goal_judges_the_mean_and_an_unmeasured_divergence_is_not_feasible():
    g = Goals(max_kld=0.05)
    assert g.active() and judge(_result(0.04), _result(0.0), g) == []
    assert judge(_result(0.06), _result(0.0), g) == ["KL divergence 0.0600 > 0.05 nats/token"]
    assert judge(_result(None, "vllm"), _result(0.0), g) == ["KL divergence not measured in vllm"]
    assert _result(None).intervals["kld"] is None and "kld" not in _result(0.01).intervals


def test_a_preset_takes_the_largest_group_size_the_widths_allow(tiny_weights_dir):
    from agentic_compression import methods, targets
    from agentic_compression.loop import presets
    from agentic_compression.loop.spec import read_config

    cfg = read_config(tiny_weights_dir)  # widths 64 and 128: group 128 does not divide the attention width
    avail = {n: m for n, m in methods.REGISTRY.items() if n == "gptq"}
    ((target, name, strategy),) = presets.declared({"transformers": targets.get("transformers")}, cfg, avail)
    assert (target, name) == ("transformers", "GPTQ W4A16")
    assert strategy.steps[0].params == {"scheme": "W4A16", "group_size": 64}
    ((_, _, why),) = presets.declared({"transformers": targets.get("transformers")}, cfg, {})
    assert why == "gptq is not available here (acf methods says why)"


@pytest.mark.slow
def test_every_run_measures_its_targets_presets_beside_the_frontier(tmp_path, tiny_dir, data_dir):
    """The transformers target's preset (GPTQ W4A16) is measured once, as a candidate is, kept out of the frontier
    and the episode count, shown as a reference row, and the recommendation is compared with it."""
    import json

    from agentic_compression.cli import main
    from agentic_compression.report import table

    assert main(["run", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
                 "--experiment", "p", "--max-episodes", "1", "--limit", "8", "--ppl-tokens", "256", "--repeats", "2",
                 "--threads", "1", "--force", "--no-skills", "--policy", "random"]) == 0
    final = json.loads((tmp_path / "p" / "final_results.json").read_text())
    (p,) = final["presets"]
    assert p["id"] == "preset:transformers:GPTQ W4A16" and p["status"] == "success", p
    assert p["steps"][0]["params"]["group_size"] == 64 and p["objectives"]["kld"] > 0 and p["kld"]["n"] == 255
    assert p["id"] not in final["pareto_frontier"] and final["episodes_run"] == 1
    assert (tmp_path / "p" / "presets" / "transformers-GPTQ_W4A16" / "results.json").is_file()
    text = table(tmp_path / "p")
    assert "preset:transformers:GPTQ W4A16" in text and "community preset transformers GPTQ W4A16" in text
    if final["versus_preset"]:  # the balanced pick measured: compared with the preset of its target
        assert final["versus_preset"].startswith(final["balanced"]) and "of transformers GPTQ W4A16" in \
            final["versus_preset"] and "against the closest community preset" in text


def test_a_wrecked_candidate_is_pruned_after_its_first_tokens_and_a_close_one_is_not():
    """measure.perplexity with limits: a candidate whose first 512 or so scored tokens (whole windows) put its
    perplexity far past twice the baseline's (at 3 standard errors) raises Pruned with the slice's numbers; one past
    a KL limit too; a mild candidate is measured in full; without a reference nothing is judged."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(50, 50, generator=g) * 3
    ids = torch.randint(0, 50, (1500,), generator=g).tolist()
    wrecked, mild = Toy(w, g, 6.0), Toy(w, g, 0.05)
    with pytest.raises(measure.Pruned, match=r"perplexity .*x the baseline's on the first 543 tokens") as e:
        measure.perplexity(wrecked, ids, 64, 32, reference=measure.Reference(Toy(w, g)),
                           prune={"perplexity_ratio": 2.0})
    assert e.value.partial["tokens"] == e.value.partial["kld"]["n"] == 63 + 15 * 32  # the window reaching 512
    assert e.value.partial["perplexity"] > 2 * measure.perplexity(Toy(w, g), ids[:513], 64, 32)["perplexity"]
    full = measure.perplexity(mild, ids, 64, 32, reference=measure.Reference(Toy(w, g)),
                              prune={"perplexity_ratio": 2.0, "kld": 0.5})
    assert full["tokens"] == 1499 and 0 < full["kld"]["mean"] < 0.05
    with pytest.raises(measure.Pruned, match="KL divergence .* the limit is 0.0001"):
        measure.perplexity(mild, ids, 64, 32, reference=measure.Reference(Toy(w, g)), prune={"kld": 1e-4})
    assert measure.perplexity(wrecked, ids, 64, 32, prune={"perplexity_ratio": 2.0})["tokens"] == 1499
    head = measure.perplexity(mild, ids, 64, 32, reference=measure.Reference(Toy(w, g)), upto=measure.SLICE)
    assert head["tokens"] == head["kld"]["n"] == 63 + 15 * 32  # the slice alone: the window reaching 512, no more


def test_hopeless_judges_the_estimate_three_standard_errors_below_it():
    stats = {"n": 512, "mean": 0.30, "stderr": 0.05, "mean_ln_ppl_ratio": math.log(3.0),
             "mean_ln_ppl_ratio_stderr": 0.1}
    assert "perplexity 3x" in measure.hopeless(stats, {"perplexity_ratio": 2.0})  # 3x, at least 2.2x
    assert measure.hopeless(stats, {"perplexity_ratio": 2.5}) is None  # 3 e^-0.3 = 2.2 < 2.5: could be noise
    assert measure.hopeless(stats, {"kld": 0.1}) is not None and measure.hopeless(stats, {"kld": 0.2}) is None
    assert measure.hopeless(stats, {}) is None


def test_a_pruned_pass_leaves_no_half_written_reference(tmp_path):
    """A live reference that stores the baseline's log-probabilities for later candidates, stopped by a pruned pass
    (the worker closes it incomplete): nothing is stored, so the next candidate scores the baseline again instead of
    reading a store that ends at the slice."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(50, 50, generator=g) * 3
    ids = torch.randint(0, 50, (1500,), generator=g).tolist()
    ref = measure.Reference(Toy(w, g), tmp_path / "ref")
    with pytest.raises(measure.Pruned):
        measure.perplexity(Toy(w, g, 6.0), ids, 64, 32, reference=ref, prune={"perplexity_ratio": 2.0})
    ref.close(complete=False)
    assert not measure.StoredLogProbs(tmp_path / "ref").complete() and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_slice_is_judged_before_an_evaluation_process_and_in_one_when_no_reference_is_stored(
        data_dir, tiny_dir, tmp_path, fast_eval, monkeypatch):
    """A candidate far past a KL limit is pruned in the run's process, against the baseline's stored
    log-probabilities, before any process is started or latency timed; with no stored reference the evaluation
    process judges the same slice (after its paired latency) to the same numbers. (A candidate within the limits
    goes on to its full evaluation in every integration run, pruning being on by default.)"""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentic_compression.evaluation import Evaluator

    monkeypatch.setenv("ACF_EVAL_CACHE", str(tmp_path / "cache"))
    s = fast_eval.model_copy(update={"ppl_tokens": 640, "limit": 4})  # the slice: 127 + 7 x 64 = 575 tokens
    work = tmp_path / "work"
    work.mkdir()
    ev = Evaluator(s, data_dir, AutoTokenizer.from_pretrained(tiny_dir), work)
    ev.evaluate(tiny_dir)  # the baseline stores its log-probabilities
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    model.save_pretrained(tmp_path / "cand")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "cand")
    with pytest.raises(measure.Pruned, match="KL divergence") as here:
        ev.evaluate(tmp_path / "cand", prune={"kld": 1e-6})
    p = here.value.partial
    assert "before" in p["judged"] and "latency" not in p and 512 <= p["tokens"] < 512 + 64
    shutil.rmtree(work / "reference")
    with pytest.raises(measure.Pruned, match="KL divergence") as there:
        ev.evaluate(tmp_path / "cand", prune={"kld": 1e-6})
    q = there.value.partial
    assert "judged" not in q and q["latency"]["decode_ms_per_token"]["n"] > 0 and "benchmarks" not in q["phases"]
    assert (q["tokens"], q["kld"]["n"]) == (p["tokens"], p["kld"]["n"])
    assert q["kld"]["mean"] == pytest.approx(p["kld"]["mean"], rel=1e-3)
    assert q["perplexity"] == pytest.approx(p["perplexity"], rel=1e-4)
