"""Atomic file and folder writes: write to a temporary sibling, fsync, then rename.

A reader (or a resumed run) never sees a half-written file: either the old one or
the complete new one is at the final path.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are written: curation's workers write media only
    import torch

TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_as_created(path: Path, folder: bool = False) -> None:
    """Give a temporary file (``mkstemp``: 0600) or folder (``mkdtemp``: 0700) the permissions a
    plain ``open``/``mkdir`` would, so other users and services (a ComfyUI account) can read results."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def move_into_place(written: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Rename a finished file (written in a temporary folder on ``final``'s file system) to ``final``,
    with the permissions of a plain write (writers such as safetensors create 0600 files)."""
    _chmod_as_created(Path(written))
    os.replace(written, final)
    return Path(final)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        _chmod_as_created(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a failed write names no file: name the one meant
            e.filename = str(path)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def sort_safetensors_metadata(path: str | os.PathLike) -> None:
    """Rewrite a safetensors header in place with its metadata in sorted key order.

    safetensors (0.8) writes the metadata map in hash order, which differs between
    processes: the same tensors would give different bytes. The header keeps its length
    (same entries, other order; padded with spaces, as the format allows).
    """
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(raw) > size:  # cannot happen for a header written by safetensors; never corrupt the file
            return
        fh.seek(8)
        fh.write(raw + b" " * (size - len(raw)))


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """``save_file`` to a temporary sibling, metadata order made deterministic, then renamed."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(p: Path) -> None:
        save_file(tensors, str(p), metadata=metadata)
        sort_safetensors_metadata(p)

    return atomic_write(path, write)


def atomic_torch_save(path: str | os.PathLike, obj: object) -> Path:
    """``torch.save`` for plain containers of tensors (loadable with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_directory(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create a folder at ``final`` atomically: fill a temporary sibling, then rename it.

    Raises FileExistsError if ``final`` already exists (nothing is overwritten).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent))
    try:
        _chmod_as_created(tmp, folder=True)
        fill(tmp)
        for child in tmp.iterdir():
            if child.is_file():
                _chmod_as_created(child)  # safetensors' writer creates 0600 files
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



def safetensors_problem(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` is not a complete safetensors file holding ``keys``, or None if it is.

    Reads the header only (8-byte length + JSON) and checks that the file is as long as its
    tensors' data offsets say, so a truncated or emptied file is caught without loading it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes: too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"header length {n} exceeds the file size {size}: truncated or not safetensors"
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "is a folder, not a file"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    except (UnicodeDecodeError, json.JSONDecodeError, struct.error):
        return "not a safetensors file (unreadable header)"
    if not isinstance(header, dict):
        return "not a safetensors file (header is not a mapping)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        return f"truncated: {size} bytes, the header needs {8 + n + max(ends)}"
    missing = [k for k in keys if k not in header]
    return f"lacks {missing}" if missing else None


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also as torch's zip writer (RuntimeError ``unexpected pos``) and
    safetensors (``SafetensorError ... os error 28``) report it."""
    import errno

    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    signs = ("unexpected pos", "file write failed", "No space left on device", "os error 28", "os error 122")
    return any(s in text for s in signs)


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 item``, ``3 items``: a count with its noun in the right number (``plural`` when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
