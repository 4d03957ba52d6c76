"""Clip records and the resumable state store; the manifest files are ``hv_tune.data.manifest``'s.

A *record* is a plain dict. File records (one per input file) carry ``source``, ``kind``,
``probe``/``error`` and ``spans``; clip records carry the manifest fields (docs/manifest.md).
Keys starting with ``_`` hold in-memory data between stages (decoded frames) and are never
stored.

State lives in ``OUT_DIR/state/*.jsonl``: one JSON object per line, appended with a single
``write`` and fsync as soon as it is computed. A line without its newline (a run killed
mid-write) is cut off on the next open, so every stored line is complete.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from curation.errors import InputError


def encode_b64(vec: np.ndarray) -> str:
    """A clip's ``embedding`` field: the vector as base64 float16 (compact, exact enough for cosine
    >= 0.98 tests)."""
    return base64.b64encode(vec.astype(np.float16).tobytes()).decode("ascii")


def decode_b64(text: str) -> np.ndarray:
    """An ``embedding`` field back as a float32 vector ``[D]``."""
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)


def clip_id(key: str, start: int, end: int) -> str:
    """Short, stable clip id: a digest of what the source file is, and the span ``[start, end)``.

    ``key`` is the file's content hash (``curation.content``), so an id follows the file's bytes:
    a renamed or moved file keeps its ids (and stored results), a re-exported one gets new ids.
    A file that cannot be read is keyed by its path.
    """
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    return f"{digest}-{start:06d}-{end:06d}"


def fingerprint(*parts: Any) -> str:
    """Short hash of config parts: stored next to results so that changed settings recompute."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record without in-memory (``_``) keys."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line durably: one ``write`` of the whole line in append mode, then fsync.

    A write that fails (a full volume) or stores only part of the line is cut back, so the
    file holds complete lines only.
    """
    line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write (no space left on device)", str(path))
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, before)
            e.filename = e.filename or str(path)  # a failed write names no file
            raise
    finally:
        os.close(fd)


def cut_partial_line(path: Path) -> None:
    """Cut a trailing partial line left by a killed writer (every stored line stays complete)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            os.fsync(fh.fileno())


class StateLog:
    """An append-only jsonl file of results, keyed by ``key``; later lines win."""

    def __init__(self, path: Path, key: str = "id"):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict[str, Any]] = {}
        cut_partial_line(self.path)
        if self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(
                        f"{self.path}:{n} is not valid JSON ({e}); delete the line or the file to recompute it"
                    ) from e
                if key in row:  # rows of an older layout (another key) are recomputed
                    self.rows[row[key]] = row

    def get(self, key: str, fp: str | None = None) -> dict[str, Any] | None:
        """The stored row for ``key``, if its fingerprint is ``fp`` (when given)."""
        row = self.rows.get(key)
        if row is None or (fp is not None and row.get("fingerprint") != fp):
            return None
        return row

    def append(self, row: dict[str, Any]) -> None:
        """Store one row durably (``append_line``)."""
        append_line(self.path, row)
        self.rows[row[self.key]] = row
