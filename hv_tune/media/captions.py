"""Caption files: one reader for every stage, whatever the file's encoding.

UTF-8 (a byte-order mark is stripped) and UTF-16 with a byte-order mark are read as such;
anything else is decoded as cp1252 (then latin-1, which never fails) and noted, so a caption
saved by an old Windows editor is used instead of crashing a run.
"""

from __future__ import annotations

from pathlib import Path


def decode_caption_bytes(raw: bytes) -> tuple[str, str | None]:
    """Text of a caption file, and a note when it was not plain UTF-8 (None when it was)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "caption decoded as UTF-16"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "caption not UTF-8; decoded as cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "caption not UTF-8; decoded as latin-1"


def read_caption_file(path: str | Path) -> tuple[str, str | None]:
    """``(text, note)`` of a caption file (see ``decode_caption_bytes``).

    Raises:
        OSError: when the file cannot be read.
    """
    return decode_caption_bytes(Path(path).read_bytes())
