"""What a source file is: a hash of all its bytes. Stored results follow it, not the file's name.

A re-exported file with the same name, size, duration and modification time is a different
file here (it is split, scored, captioned and cut again); an unchanged file that was renamed or
moved is the same file (everything stored for it is reused). The whole file is hashed on every
run (xxh3-128, about 1.7 GB/s from the page cache): no size/mtime/ctime shortcut, because camera
cards (FAT/exFAT) and copy tools keep or fake those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 20  # read size: 1 MiB was the fastest of 64 KiB .. 8 MiB (docs/curation.md)
UNREADABLE = "unreadable:"  # prefix of the key of a file that cannot be read (keyed by its path)


def content_hash(path: str | os.PathLike) -> str:
    """``xxh3-128`` of the file's bytes, as 32 hex digits.

    Raises:
        OSError: when the file cannot be read.
    """
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def with_content(rec: dict[str, Any]) -> dict[str, Any]:
    """A file record with ``content``: its hash, or ``unreadable:<source>`` (and an ``error``)."""
    if rec.get("error"):
        return {**rec, "content": UNREADABLE + rec["source"]}
    try:
        return {**rec, "content": content_hash(rec["source"])}
    except OSError as e:
        return {**rec, "content": UNREADABLE + rec["source"],
                "error": f"unreadable: {e.strerror or e} ({Path(rec['source']).name})"}


def relocate(row: dict[str, Any], file_rec: dict[str, Any]) -> dict[str, Any]:
    """A stored file row (and its clips) moved to where the same content is now."""
    where = {"source": file_rec["source"], "rel": file_rec["rel"]}
    return {**row, **where, "clips": [{**c, **where} for c in row.get("clips", [])]}


def with_content_ids(row: dict[str, Any]) -> dict[str, Any]:
    """A split file row whose clip ids come from its content hash and each clip's span."""
    from curation.manifest import clip_id

    clips = [{**c, "id": clip_id(row["content"], c["start_frame"], c["end_frame"])} for c in row.get("clips", [])]
    return {**row, "clips": clips}
