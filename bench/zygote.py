"""What forking evaluations from a zygote saves, and that the model's measured peak does not move: three
evaluations of one checkpoint in one process, the first two through the zygote (the first pays its imports), the
third in a plain process started for it alone.

    .venv/bin/python bench/zygote.py --checkpoint ~/.cache/acf/models-v3/smollm2-135m [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from agentic_compression.config import EvalSettings
    from agentic_compression.evaluation import Evaluator, zygote

    with tempfile.TemporaryDirectory() as work:
        ev = Evaluator(EvalSettings(cache=False, limit=10, ppl_tokens=512, target="transformers"), a.data_dir,
                       AutoTokenizer.from_pretrained(a.checkpoint), Path(work))
        for how in ("zygote, first (its imports)", "zygote", "plain process"):
            if how == "plain process":
                zygote.close_all()
                zygote.Zygote.__init__ = lambda *_: (_ for _ in ()).throw(zygote.Gone("plain"))
            r = ev.evaluate(a.checkpoint)
            print(f"{how:28} {r.eval_seconds:6.1f} s  model peak {r.memory['model_peak_bytes'] / 1e6:7.1f} MB  "
                  f"ppl {r.perplexity:.4f}  accuracy {r.accuracy:.3f}")


if __name__ == "__main__":
    main()
