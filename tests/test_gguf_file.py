"""The GGUF header reader against gguf's own GGUFReader, on a file gguf's writer made: every metadata value and
every tensor's name, type, element count and bytes agree; arrays are read only when asked for."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from agentic_compression.models.gguf_file import read_header


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "m.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc é"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.25])
    w.add_tensor("token_embd.weight", np.arange(256, dtype=np.float32).reshape(4, 64))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((2, 2 * 34), dtype=np.uint8),
                 raw_dtype=GGMLQuantizationType.Q8_0)  # 2 rows of two 34-byte blocks of 32 weights
    w.add_tensor("output_norm.weight", np.arange(1000, 1064, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_header_matches_gguf_reader(gguf_file):
    ref = GGUFReader(str(gguf_file))
    h = read_header(gguf_file, arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.scores"))
    assert [(t.name, t.type, t.n_elements, t.n_bytes) for t in h.tensors] == \
        [(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in ref.tensors]
    assert [t.type for t in h.tensors] == ["F32", "Q8_0", "F32"] and h.tensors[1].n_bytes == 2 * 2 * 34
    floats = ("llama.rope.freq_base", "tokenizer.ggml.scores")
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            got, want = h.fields[key], field.contents()
            got = got.tolist() if isinstance(got, np.ndarray) else got
            assert got == (pytest.approx(want) if key in floats else want), key
    assert h.fields["tokenizer.ggml.tokens"] == ["a", "bb", "ccc é"]


def test_arrays_not_asked_for_are_skipped_with_their_length(gguf_file):
    h = read_header(gguf_file)
    assert h.fields["tokenizer.ggml.tokens"] == ("array", 3) and h.fields["tokenizer.ggml.scores"] == ("array", 3)
    assert h.fields["general.architecture"] == "llama" and h.fields["llama.block_count"] == 2


def test_not_a_gguf_is_refused(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF"):
        read_header(bad)


def test_f32_tensors_are_read_at_their_offsets(gguf_file):
    from agentic_compression.models.gguf_file import read_f32

    ref = {t.name: t.data for t in GGUFReader(str(gguf_file)).tensors}
    got = read_f32(gguf_file)
    assert list(got) == ["token_embd.weight", "output_norm.weight"]  # the Q8_0 tensor is no F32
    for name, values in got.items():
        np.testing.assert_array_equal(values, ref[name])
    assert read_f32(gguf_file, ["output_norm.weight"])["output_norm.weight"][-1] == 1063
