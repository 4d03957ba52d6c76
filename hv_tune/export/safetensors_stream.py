"""Stream safetensors checkpoints: read tensor by tensor, write tensor by tensor.

``safetensors.torch.save_file`` needs every tensor in memory at once; for merging a 13B
transformer that is a second full copy. ``StreamWriter`` writes the same file format
(8-byte little-endian header length, JSON header with dtype/shape/data_offsets, raw
little-endian data) from a layout known in advance, one tensor -- or one block of rows of
a tensor -- at a time. Reading goes through ``safetensors.safe_open`` and closes the file
after each tensor, so the memory map does not keep already-merged layers resident.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_SUFFIX = ".index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a checkpoint, and what it is, without reading its data."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    #: a view: the tensor is these (stored name, first row, rows) blocks of the file, concatenated
    #: (a diffusers tensor inside a fused original one); empty when it is stored as ``name``
    segments: tuple[tuple[str, int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def index_file(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of one safetensors file, in file order (reads only the header)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            out[name] = TensorInfo(name, Path(path), DTYPES[sl.get_dtype()], tuple(sl.get_shape()))
    return out


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor, read from a freshly opened file that is closed (unmapped) again right after."""
    from safetensors import safe_open

    with safe_open(str(info.file), framework="pt") as f:
        if not info.segments:
            return f.get_tensor(info.name)
        # only the rows of each block are read: [rows_i, ...] -> [sum(rows_i), ...]
        return torch.cat([f.get_slice(name)[row0 : row0 + rows] for name, row0, rows in info.segments])


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is contiguous."""
    flat = t.detach().contiguous().reshape(-1)  # any shape -> [N]
    return memoryview(flat.view(torch.uint8).numpy())


class StreamWriter:
    """Write a safetensors file whose layout (names, dtypes, shapes, order) is known up front.

    Call ``write(name, rows)`` for each tensor in layout order; a tensor may come in several
    row blocks (the parts of a fused layer), which are contiguous on disk in row-major order.
    """

    def __init__(self, fh: BinaryIO, layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata=None):
        self.fh = fh
        self.layout = list(layout)
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self.sizes = []
        for name, dtype, shape in self.layout:
            size = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.sizes.append(size)
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # pad so the data starts 8-byte aligned
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        self.index = 0  # layout entry being written
        self.filled = 0  # bytes of it written so far

    def write(self, name: str, rows: torch.Tensor) -> None:
        """Append ``rows`` (the whole tensor or its next block of rows) to tensor ``name``."""
        if self.index >= len(self.layout) or self.layout[self.index][0] != name:
            expected = self.layout[self.index][0] if self.index < len(self.layout) else "nothing"
            raise RuntimeError(f"write order: got {name!r}, expected {expected!r}")
        dtype = self.layout[self.index][1]
        if rows.dtype != dtype:
            raise RuntimeError(f"{name}: dtype {rows.dtype}, layout says {dtype}")
        data = tensor_bytes(rows)
        if self.filled + data.nbytes > self.sizes[self.index]:
            raise RuntimeError(f"{name}: more data than its shape {self.layout[self.index][2]} holds")
        self.fh.write(data)
        self.filled += data.nbytes
        if self.filled == self.sizes[self.index]:
            self.index, self.filled = self.index + 1, 0

    def close(self) -> None:
        """Check that every tensor was written completely."""
        if self.index != len(self.layout):
            raise RuntimeError(f"incomplete file: {len(self.layout) - self.index} tensor(s) not written")
