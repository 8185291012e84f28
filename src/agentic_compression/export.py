"""`acf export`: take one checkpoint out of an experiment, with its model card and tokenizer, and prove that the copy
loads on its own (the same logits from the new place as from the old)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError
from .files import read_json
from .report import read_final

FORMATS = ("native",)  # the checkpoint's own format; conversions (GGUF, ONNX) come with their deployment targets


def pick(exp_dir: Path, episode: str | None, best: bool) -> str:
    if best == (episode is not None):
        raise UserError("name one episode, or pass --best (not both)", "e.g. acf export EXP episode_003 --out DIR")
    if not best:
        return episode
    final = read_final(exp_dir)
    choice = final.get("balanced")
    if not choice or choice == "baseline":
        raise UserError(f"the recommended candidate of {exp_dir} is {choice or 'none'}: nothing compressed to export",
                        "name an episode instead")
    return choice


def export(exp_dir: Path, episode: str | None, out: Path, best: bool = False, fmt: str = "native",
           push_to_hub: str | None = None, online: bool = False) -> Path:
    """Copy the episode's checkpoint to ``out`` (which must not exist, or be empty), verify it, optionally push it."""
    if fmt not in FORMATS:
        raise UserError(f"no exporter for --format {fmt} yet", f"formats: {', '.join(FORMATS)} (GGUF and ONNX come "
                        "with the llama.cpp and ONNX Runtime targets)")
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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty", "choose a new --out folder (nothing was changed)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        shutil.copytree(ckpt, tmp, dirs_exist_ok=True, symlinks=False)
        _write_missing_card(exp_dir, results, tmp)
        verify(ckpt, tmp)
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
    return out


def _write_missing_card(exp_dir: Path, results: dict, folder: Path) -> None:
    """Checkpoints from before cards existed get theirs now, from the same measured results."""
    from .card import CARD, write_card
    from .config import RunConfig
    from .schemas import Episode, EvaluationResult

    if (folder / CARD).is_file():
        return
    cfg = RunConfig.from_file(exp_dir / "config.json")
    spec = read_json(exp_dir / "model_spec.json", "the model's spec")
    base = EvaluationResult(**read_json(exp_dir / "baseline" / "results.json", "the baseline's results")["result"])
    ep = Episode(**{k: v for k, v in results.items() if k != "entered_frontier"})
    write_card(folder, ep=ep, baseline=base, base_model=spec.get("model_name", cfg.model),
               calibration=cfg.calibration.source,
               dataset=cfg.dataset)


def verify(original: Path, copy: Path) -> None:
    """Load the copy from its new place and check it computes what the original does."""
    import torch

    from .models import load

    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        want = load(original)[0](input_ids=ids).logits
        got = load(copy)[0](input_ids=ids).logits
    if not torch.allclose(want, got, atol=1e-5, rtol=1e-4):
        raise UserError(f"the exported copy in {copy} does not compute what {original} does",
                        "report this: the checkpoint is not self-contained")
