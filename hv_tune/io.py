"""Atomic file and folder writes: write to a temporary sibling, fsync, then rename.

A reader (or a resumed run) never sees a half-written file: either the old one or
the complete new one is at the final path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def atomic_torch_save(path: str | os.PathLike, obj: object) -> Path:
    """``torch.save`` for plain containers of tensors (loadable with ``weights_only=True``)."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_directory(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create a folder at ``final`` atomically: fill a temporary sibling, then rename it.

    Raises FileExistsError if ``final`` already exists (nothing is overwritten).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent))
    try:
        fill(tmp)
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb+") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def canonicalize_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite a safetensors header with sorted keys, in place and at the same length.

    The safetensors writer serialises ``__metadata__`` from a hash map whose order changes
    from process to process, so two runs that save identical tensors and metadata can
    differ in their header bytes. Sorting makes equal content byte-identical. The header
    keeps its length (padded with spaces, which the format allows), so tensor offsets and
    data are untouched.
    """
    import json
    import struct

    with open(path, "rb+") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) > n:
            return  # cannot happen for a compact writer; leave the file as it is
        fh.seek(8)
        fh.write(canonical + b" " * (n - len(canonical)))
