import json

import pytest

from agentic_compression import data


def test_wikitext_halves_are_disjoint_articles(data_dir):
    calib, evaluation = data.wikitext_halves(data_dir)
    assert evaluation.startswith(" = ") and len(calib) > 400_000 and len(evaluation) > 400_000
    calib_titles = {line for line in calib.split("\n") if data._ARTICLE.match(line)}
    eval_titles = {line for line in evaluation.split("\n") if data._ARTICLE.match(line)}
    assert calib_titles and eval_titles and not calib_titles & eval_titles


def test_calibration_windows_come_from_the_first_half_only(data_dir, smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    samples = data.calibration_samples(tok, data_dir, n=8, seq_len=64, seed=3)
    assert len(samples) == 8 and all(len(s) == 64 for s in samples)
    assert samples == data.calibration_samples(tok, data_dir, n=8, seq_len=64, seed=3)  # seeded
    assert samples != data.calibration_samples(tok, data_dir, n=8, seq_len=64, seed=4)
    evaluation = data.wikitext_halves(data_dir)[1]
    for s in samples:
        assert tok.decode(s[5:40]) not in evaluation


def test_calibration_from_a_user_file(data_dir, smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    from agentic_compression.errors import UserError

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"text": f"Sentence number {i} about compression. " * 20}) + "\n"
                         for i in range(5)))
    samples = data.calibration_samples(tok, data_dir, n=3, seq_len=32, seed=0, source=str(f))
    assert all("compression" in tok.decode(s) for s in samples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match="line 2"):
        data.read_text(data_dir, str(bad))
    with pytest.raises(UserError, match="does not exist"):
        data.read_text(data_dir, str(tmp_path / "missing.txt"))
