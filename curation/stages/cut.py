"""Clip cutting: frames ``[start_frame, end_frame)`` decoded upright by ``hv_tune.media`` (the
decoder whose indices the scores and the manifest use) and encoded as H.264 with the source's
own presentation timestamps, so a variable-rate clip keeps its real duration. Images are
written upright (EXIF applied) as PNG. Every file is written atomically. CPU stage (run in the
worker processes); light to import, so a worker starts cutting at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.media import open_video
from hv_tune.io import atomic_write
from hv_tune.media import read_image, write_h264

CUT_CHUNK = 8  # frames decoded at a time while cutting: bounds memory on long 4K clips


def write_clip(rec: dict[str, Any], path: Path, crf: int) -> Path:
    """Cut the span of ``rec`` to an H.264 mp4 (an upright PNG for images), atomically."""
    if rec["kind"] == "image":
        from PIL import Image

        img = read_image(rec["source"])
        return atomic_write(path.with_suffix(".png"), lambda p: Image.fromarray(img).save(p, format="PNG"))
    return atomic_write(path, lambda p: _encode(rec, p, crf))


def _encode(rec: dict[str, Any], out: Path, crf: int) -> None:
    reader = open_video(rec, None)  # full display size, upright
    s, e = rec["start_frame"], rec["end_frame"]
    chunks = (reader.get(range(i, min(e, i + CUT_CHUNK))) for i in range(s, e, CUT_CHUNK))
    write_h264(out, chunks, reader.times[s:e], crf=crf)
