"""Decoding by seeking: decord for videos, PIL for images, always at a bounded size.

decord resizes while decoding, so a 4K source costs the same memory per returned frame as a
small one. Its resize needs a width that is a multiple of 32 (other widths can fail with a
buffer-size check), so widths are rounded to 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def scaled_size(width: int, height: int, short_side: int, multiple: int = 32) -> tuple[int, int]:
    """Output (width, height): short side near ``short_side`` (never upscaled), width a multiple of 32."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(2, int(round(height * (w / width) / 2)) * 2)
    return w, h


def open_video(path: str, width: int, height: int, short_side: int | None) -> Any:
    """A decord ``VideoReader`` that decodes frames at a bounded size (RGB, uint8).

    ``short_side=None`` decodes at the source size (used only to cut clips, chunk by chunk).
    """
    import decord

    if short_side is None:
        return decord.VideoReader(path, num_threads=1)
    w, h = scaled_size(width, height, short_side)
    return decord.VideoReader(path, num_threads=1, width=w, height=h)


def read_frames(reader: Any, indices: Sequence[int]) -> np.ndarray:
    """Frames at ``indices`` by seeking: ``[N, H, W, 3]`` uint8."""
    return reader.get_batch(list(indices)).asnumpy()


def frame_times(reader: Any, indices: Sequence[int]) -> np.ndarray:
    """Presentation start time in seconds of each frame (from the index, nothing decoded)."""
    return reader.get_frame_timestamp(list(indices))[:, 0].astype(np.float64)


def read_image(path: str, short_side: int) -> np.ndarray:
    """An image as ``[1, H, W, 3]`` uint8 RGB, resized to ``short_side`` (never upscaled)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = scaled_size(im.width, im.height, short_side, multiple=2)
        if (w, h) != im.size:
            im = im.resize((w, h), Image.BICUBIC)
        return np.asarray(im)[None]


def read_clip_frames(rec: dict[str, Any], indices: Sequence[int], short_side: int) -> np.ndarray:
    """Frames of a clip record's source (video or image) at ``indices``: ``[N, H, W, 3]``."""
    if rec["kind"] == "image":
        img = read_image(rec["source"], short_side)
        return np.repeat(img, len(indices), axis=0)
    reader = open_video(rec["source"], rec["width"], rec["height"], short_side)
    return read_frames(reader, indices)


def positions_to_indices(start: int, end: int, positions: Sequence[float]) -> list[int]:
    """Frame indices at fractions ``positions`` of the span ``[start, end)``."""
    last = max(start, end - 1)
    return [min(last, start + int(round(p * (last - start)))) for p in positions]


def evenly_spaced(start: int, end: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``[start, end)`` (repeats when the span is shorter)."""
    if count == 1:
        return [(start + end - 1) // 2]
    return [start + int(round(i * (end - 1 - start) / (count - 1))) for i in range(count)]
