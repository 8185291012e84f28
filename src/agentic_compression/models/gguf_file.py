"""A GGUF file's header (metadata and tensor table) read without its data. gguf's own GGUFReader builds a numpy view
of every element of every metadata array, which costs 4.5 s on SmolLM2's file (its 49,152-token vocabulary and
48,900 merges) for facts that take 0.1 s to reach: the values of arrays are read only when asked for by key.
Layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian, versions 2 and 3)."""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
# GGUFValueType: the struct code of each scalar type (8 is a string, 9 an array)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
NUMPY = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str  # the ggml type's name: F32, Q4_K, ...
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    offset: int  # where its data starts in the file


@dataclass(frozen=True)
class Header:
    fields: dict[str, Any]  # scalars and strings; an array not asked for is its length, as ("array", n)
    tensors: list[Tensor]


class _Cursor:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, code: str):
        (v,) = struct.unpack_from("<" + code, self.buf, self.at)
        self.at += struct.calcsize(code)
        return v

    def string(self) -> str:
        n = self.take("Q")
        self.at += n
        return bytes(self.buf[self.at - n: self.at]).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.at += 8 + struct.unpack_from("<Q", self.buf, self.at)[0]


def read_header(path: Path, arrays: tuple[str, ...] = ()) -> Header:
    """The file's metadata and tensor table; the arrays named in ``arrays`` with their values (numbers as a numpy
    array, strings as a list), every other array as ("array", length). Raises ValueError on a file that is not a
    GGUF of version 2 or 3."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        c = _Cursor(buf)
        if bytes(buf[:4]) != MAGIC:
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        c.at = 4
        version = c.take("I")
        if version not in (2, 3):
            raise ValueError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = c.take("Q"), c.take("Q")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key, kind = c.string(), c.take("I")
            if kind == STRING:
                fields[key] = c.string()
            elif kind in SCALARS:
                fields[key] = c.take(SCALARS[kind])
            elif kind == ARRAY:
                item, count = c.take("I"), c.take("Q")
                if item == STRING:
                    if key in arrays:
                        fields[key] = [c.string() for _ in range(count)]
                    else:
                        c.skip_strings(count)
                        fields[key] = ("array", count)
                elif item in NUMPY:
                    size = np.dtype(NUMPY[item]).itemsize * count
                    fields[key] = np.frombuffer(buf, NUMPY[item], count, c.at).copy() if key in arrays else \
                        ("array", count)
                    c.at += size
                else:
                    raise ValueError(f"{path}: metadata {key} is an array of arrays, which is not read here")
            else:
                raise ValueError(f"{path}: metadata {key} has unknown value type {kind}")
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = c.string(), c.take("I")
            shape = tuple(c.take("Q") for _ in range(n_dims))
            qtype, offset = GGMLQuantizationType(c.take("I")), c.take("Q")
            n = 1
            for d in shape:
                n *= d
            block, size = GGML_QUANT_SIZES[qtype]
            tensors.append((name, qtype.name, shape, n, n // block * size, offset))
        align = int(fields.get("general.alignment", 32))
        data = -(-c.at // align) * align  # the tensor data follow the table, aligned
    return Header(fields, [Tensor(*t[:5], offset=data + t[5]) for t in tensors])


def read_f32(path: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The F32 tensors of a file (those in ``names``, else all) as numpy arrays in ggml's order (the innermost
    dimension first, as the header lists the shape)."""
    import numpy as np

    out = {}
    for t in read_header(path).tensors:
        if t.type == "F32" and (names is None or t.name in names):
            out[t.name] = np.fromfile(path, "<f4", t.n_elements, offset=t.offset).reshape(t.shape[::-1])
    return out
