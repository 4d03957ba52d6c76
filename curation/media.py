"""Curation's frame picking on top of ``hv_tune.media`` (the one media layer of the project).

``hv_tune.media`` decides what a file contains: display size (rotation, EXIF), timestamps,
upright frames (with the decoder the probe proved for the file), image pixels and caption
text. This module only chooses *which* frames a stage wants and at what size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hv_tune.media import VideoFrames, VideoProbe, read_image, resize_to, scaled_size


def open_video(rec: dict[str, Any], short_side: int | None) -> VideoFrames:
    """Frames of a clip or file record's video, upright, short side near ``short_side`` (None = full size).

    ``rec`` carries the probe facts (``width``/``height`` display size, ``rotation``, ``backend``,
    ``num_frames``), either as a clip record or as a file record's ``probe``.
    """
    meta = rec.get("probe") or rec
    probe = VideoProbe.from_record({**meta, "num_frames": meta.get("source_frames", meta["num_frames"])})
    size = None if short_side is None else scaled_size(probe.width, probe.height, short_side)
    return VideoFrames(rec["source"], probe, size)


def image_frames(path: str, short_side: int | None) -> np.ndarray:
    """An image as ``[1, H, W, 3]`` uint8, upright, short side ``short_side`` (never upscaled)."""
    img = read_image(path)
    if short_side is not None:
        h, w = img.shape[:2]
        w2, h2 = scaled_size(w, h, short_side, multiple=2)
        img = resize_to(img, w2, h2)
    return img[None]


def read_clip_frames(rec: dict[str, Any], indices: Sequence[int], short_side: int) -> np.ndarray:
    """Frames of a clip record's source (video or image) at ``indices``: ``[N, H, W, 3]``."""
    if rec["kind"] == "image":
        return np.repeat(image_frames(rec["source"], short_side), len(indices), axis=0)
    return open_video(rec, short_side).get(indices)


def positions_to_indices(start: int, end: int, positions: Sequence[float]) -> list[int]:
    """Frame indices at fractions ``positions`` of the span ``[start, end)``."""
    last = max(start, end - 1)
    return [min(last, start + int(round(p * (last - start)))) for p in positions]


def evenly_spaced(start: int, end: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``[start, end)`` (repeats when the span is shorter)."""
    if count == 1:
        return [(start + end - 1) // 2]
    return [start + int(round(i * (end - 1 - start) / (count - 1))) for i in range(count)]
