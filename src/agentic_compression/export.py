"""`acf export`: take one candidate out of an experiment as its runtime's users load it (a llama.cpp candidate as its
measured `.gguf` with an Ollama Modelfile and the llama-cli command, an ONNX Runtime GenAI candidate as the folder
`onnxruntime_genai.Model` opens, a PyTorch-side one as its checkpoint), with its model card, and prove that the copy
predicts what the episode's file predicts: both are loaded in that runtime and their next-token distributions on a
fixed text compared (mean KL at most RELOAD_KL nats). ``--format gguf|onnx`` converts a PyTorch-side candidate into
that runtime's f32 file instead (the runtime's converter, with its own check against the PyTorch model)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError
from .files import read_json
from .report import read_final

FORMATS = {"native": None, "gguf": "llamacpp", "onnx": "ortgenai"}  # --format -> the target that writes it
RELOAD_KL = 1e-6  # nats: the copy must predict what the measured file predicts
CONVERT_KL = 1e-3  # nats: a converted f32 file against the PyTorch checkpoint (the targets' own f32 tolerance)
CHECK_TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
              "structure in Paris. Its base is square, measuring 125 metres on each side.")


def pick(exp_dir: Path, episode: str | None, best: bool) -> str:
    if best == (episode is not None):
        raise UserError("name one episode, or pass --best (not both)", "e.g. acf export EXP episode_003 --out DIR")
    if not best:
        return episode
    final = read_final(exp_dir)
    choice = final.get("recommended", final.get("balanced"))  # runs before 'recommended' existed: the balanced pick
    if not choice or choice == "baseline":
        raise UserError(f"{exp_dir} recommends no compressed candidate (none is on the frontier, or meets the goals)",
                        "name an episode instead (see 'acf report')")
    return choice


def export(exp_dir: Path, episode: str | None, out: Path, best: bool = False, fmt: str = "native",
           push_to_hub: str | None = None, online: bool = False) -> tuple[Path, list[str]]:
    """Write the episode's candidate to ``out`` (which must not exist, or be empty) as its runtime loads it, verify
    it there, optionally push it. Returns the folder and how to run it (lines for the terminal)."""
    from . import targets

    if fmt not in FORMATS:
        raise UserError(f"no exporter for --format {fmt}", f"formats: {', '.join(FORMATS)}")
    if push_to_hub and not online:
        raise UserError("--push-to-hub uploads to the Hugging Face Hub, and this run is offline",
                        "add --online (and log in with `hf auth login`), or leave --push-to-hub out")
    episode = pick(exp_dir, episode, best)
    results = read_json(exp_dir / episode / "results.json", "an episode's results") \
        if (exp_dir / episode / "results.json").is_file() else None
    if results is None or results.get("status") != "success":
        raise UserError(f"{exp_dir / episode} holds no successful checkpoint",
                        "name an episode whose status is success (see 'acf report')")
    ckpt = exp_dir / episode / "checkpoint"
    if not ckpt.is_dir():
        raise UserError(f"{ckpt} is missing", "the experiment folder was changed; export another episode")
    measured_in = targets.get(((results.get("result") or {}).get("runtime") or {}).get("target", "transformers"))
    target = targets.get(FORMATS[fmt]) if FORMATS[fmt] else measured_in
    convert = target is not measured_in
    if convert and measured_in.exports:
        raise UserError(f"{episode} is a {measured_in.runtime} file; --format {fmt} converts PyTorch-side candidates",
                        "export it as it is (--format native), or pick a transformers episode")
    if convert:
        ok, why = target.available()
        if not ok:
            raise UserError(f"--format {fmt} needs {target.runtime}: {why}", "run setup.sh")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty", "choose a new --out folder (nothing was changed)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    name = f"{exp_dir.name}-{episode}".lower()
    try:
        if convert:
            _convert(ckpt, tmp, target)
        else:
            shutil.copytree(ckpt, tmp, dirs_exist_ok=True, symlinks=False)
            verify(ckpt, tmp, target)
        _write_card(exp_dir, results, tmp, converted=target if convert else None)
        target.package(tmp, name)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=push_to_hub)
    how = (target.how_to_run(name) or "").replace("PATH", str(out))
    return out, [line for line in how.splitlines() if line and not line.startswith("```")]


def _convert(ckpt: Path, out: Path, target) -> None:
    """The PyTorch-side candidate as a dense checkpoint (compressed-tensors unpacked, LoRA merged), exported by the
    target's own converter, which checks the file against the PyTorch model."""
    from . import formats, targets
    from .loop.workers import merged
    from .models import load

    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=".stage-"))
    try:
        model, tok = load(ckpt)
        formats.save(_dense(merged(model)), tok, stage)
        shutil.rmtree(out)
        target.export(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    # the file against the episode's own checkpoint (the converter checked it against the dense copy)
    kl = divergence(targets.get("transformers").predictor(ckpt), target.predictor(out), out)
    if not kl <= CONVERT_KL:
        raise UserError(f"the {target.runtime} file converted from {ckpt} does not predict what it does (next-token "
                        f"KL {kl:.3g} nats, allowed {CONVERT_KL:g})", "report this; export --format native instead")


def _dense(model):
    """The model as the dense model it computes: a compressed-tensors one (whose weights transformers unpacks to
    float on the first forward, the scales kept beside them) rebuilt from its config without the quantization,
    holding those weights; any other as it is."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from .formats.compressed_tensors import unpack
    from .loop.workers import _ct

    if not _ct(model):
        return model
    unpack(model)
    cfg = copy.deepcopy(model.config)
    del cfg.quantization_config
    dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    want = dense.state_dict()
    state = {k: v.float() for k, v in model.state_dict().items() if k in want}
    missing = [k for k in want if k not in state and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing:
        raise RuntimeError(f"the dequantized model lacks {missing[:3]}")
    dense.load_state_dict(state, strict=False)
    return dense.eval()


def _write_card(exp_dir: Path, results: dict, folder: Path, converted=None) -> None:
    """The episode's card, written again from its measured results (a card from an older run may lack the runtime's
    format and how to run it); a file ``converted`` to a target's format: its card says that its numbers were
    measured before the conversion."""
    from .card import write_card
    from .config import RunConfig
    from .schemas import Episode, EvaluationResult

    cfg = RunConfig.from_file(exp_dir / "config.json")
    spec = read_json(exp_dir / "model_spec.json", "the model's spec")
    base = EvaluationResult(**read_json(exp_dir / "baseline" / "results.json", "the baseline's results")["result"])
    ep = Episode(**{k: v for k, v in results.items() if k != "entered_frontier"})
    card = write_card(folder, ep=ep, baseline=base, base_model=spec.get("model_name", cfg.model),
                      calibration=cfg.calibration.source, dataset=cfg.dataset)
    if converted is not None:
        check = read_json(folder / "acf_format.json", "the conversion's record").get("conversion_check", {})
        text = card.read_text(encoding="utf-8")
        text = text.split("## How to load")[0] + (
            f"## This file\n\nConverted by `acf export --format` to {converted.runtime}'s f32 file after the run: the "
            "numbers above were measured on the episode's own checkpoint. The conversion was checked against it on "
            f"{check.get('tokens')} tokens: next-token KL {abs(check.get('kl', 0)):.2g}, top-1 agreement "
            f"{check.get('top1_agreement')}.\n\n## How to load\n\n{converted.how_to_run(folder.name)}\n")
        card.write_text(text, encoding="utf-8")


def verify(original: Path, copy: Path, target) -> float:
    """Load the copy from its new place in the runtime and check it predicts what the original does: the mean
    next-token KL divergence on CHECK_TEXT at most RELOAD_KL. Returns it."""
    kl = divergence(target.predictor(original), target.predictor(copy), copy)
    if not kl <= RELOAD_KL:
        raise UserError(f"the exported copy in {copy} does not predict what {original} does in {target.runtime} "
                        f"(next-token KL {kl:.3g} nats, allowed {RELOAD_KL:g})",
                        "report this: the checkpoint is not self-contained")
    return kl


def divergence(reference, ours, tokenizer_dir: Path) -> float:
    """The mean next-token KL divergence of ``ours`` from ``reference`` (two predictors, Target.predictor) on
    CHECK_TEXT, tokenized by the tokenizer in ``tokenizer_dir``; both are closed."""
    import torch

    from .models import load_tokenizer
    from .models.llamacpp_runtime import next_token_stats

    ids = load_tokenizer(tokenizer_dir)(CHECK_TEXT)["input_ids"]
    logits = []
    for m in (reference, ours):
        try:
            logits.append(torch.as_tensor(m.logits(ids)).float().clone())
        finally:
            m.close()
    return next_token_stats(logits[1], logits[0], ids)["kl"]
