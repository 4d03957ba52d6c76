"""Bucketing and frame selection as pure functions.

Resolution buckets keep a target pixel area with sides that are multiples of the model's
pixel multiple (``VideoRules.pixel_multiple``: 16 for HunyuanVideo); a clip goes to the bucket
of nearest aspect ratio, is resized to cover it and centre cropped. Frame selection first
resamples the clip to the model frame rate by presentation timestamps, then picks windows of a
frame bucket. The model's numbers are arguments: nothing here knows a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TIME_EPS = 1e-4  # seconds: container timestamps may be float32; far below any frame step


def resolution_buckets(
    resolution: int, multiple: int, min_side: int = 256, max_ratio: float = 2.5
) -> list[tuple[int, int]]:
    """(height, width) pairs, multiples of ``multiple`` pixels, with area close to ``resolution**2``.

    Sides step by ``multiple`` from ``min_side`` (scaled down for small resolutions); the aspect
    ratio stays within ``[1/max_ratio, max_ratio]``.
    """
    area = resolution * resolution
    lo = max(multiple, min(min_side, resolution // 2) // multiple * multiple)
    out = set()
    h = lo
    while h * lo <= area and h / lo <= max_ratio:
        w = int(area / h) // multiple * multiple
        if w >= lo and 1 / max_ratio <= h / w <= max_ratio:
            out.add((h, w))
            out.add((w, h))
        h += multiple
    return sorted(out)


def choose_bucket(
    height: int, width: int, buckets: list[tuple[int, int]], multiple: int, allow_upscale: bool = False
) -> tuple[int, int]:
    """The bucket of nearest aspect ratio (in log space) for a ``height x width`` source.

    Without upscaling, a source too small to cover that bucket keeps its own aspect and
    size (scaled down to the bucket's area if larger), floored to multiples of ``multiple``:
    only a few edge pixels are cropped and no pixel is invented.
    """
    ratio = math.log(height / width)
    bh, bw = min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - ratio), 9), -b[0] * b[1]))
    if allow_upscale or (bh <= height and bw <= width):
        return bh, bw
    s = min(1.0, math.sqrt(bh * bw / (height * width)))
    return max(multiple, int(height * s) // multiple * multiple), max(multiple, int(width * s) // multiple * multiple)


def cover_size(height: int, width: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """Size to resize a source to so it covers ``bucket`` (then centre crop)."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    return max(bh, round(height * scale)), max(bw, round(width * scale))


def kept_fraction(height: int, width: int, bucket: tuple[int, int]) -> float:
    """Share of a ``height x width`` source's picture area left after resizing it to cover ``bucket``
    and centre cropping (1.0 = nothing cropped). An 8:1 panorama in a 2.29:1 bucket (512 px) keeps ~0.29."""
    ch, cw = cover_size(height, width, bucket)
    return bucket[0] * bucket[1] / (ch * cw)


def resampled_indices(num_frames: int, src_fps: float, dst_fps: float) -> list[int]:
    """Source frame shown at each tick of a ``dst_fps`` clock (sample and hold).

    Output frame j shows at time j / dst_fps; source frame i is on screen during
    [i / src_fps, (i + 1) / src_fps), so j maps to floor(j * src_fps / dst_fps).
    30 -> 24 fps: 0, 1, 2, 3, 5, 6, 7, 8, 10, ...
    """
    if num_frames <= 0:
        return []
    step = src_fps / dst_fps
    count = math.ceil(num_frames / step - 1e-9)
    return [min(num_frames - 1, int(math.floor(j * step + 1e-9))) for j in range(count)]


def resampled_by_time(times: Sequence[float], end_time: float, dst_fps: float) -> list[int]:
    """Source frame on screen at each tick of a ``dst_fps`` clock, by presentation timestamps.

    Output frame j shows at ``times[0] + j / dst_fps``; the source frame on screen then is the
    last one that started at or before it (sample and hold). Ticks run until ``end_time``, the
    end of the last source frame. Unlike ``resampled_indices`` this keeps the real speed of a
    variable-frame-rate source: 25 output frames at 24 fps always cover ~1.04 s of it.

    Args:
        times: start time in seconds of every source frame, ascending ``[N]``.
        end_time: end of the last frame in seconds.
        dst_fps: the model frame rate.
    """
    t = np.asarray(times, np.float64)
    if len(t) == 0:
        return []
    count = max(1, math.ceil((end_time - t[0]) * dst_fps - 1e-6))
    ticks = t[0] + np.arange(count) / dst_fps
    idx = np.searchsorted(t, ticks + TIME_EPS, side="right") - 1
    return idx.clip(0, len(t) - 1).tolist()


def frame_bucket_for(length: int, frame_buckets: list[int]) -> int | None:
    """Longest video bucket (> 1 frame) that ``length`` resampled frames fill, else None."""
    fitting = [b for b in frame_buckets if 1 < b <= length]
    return max(fitting) if fitting else None


def clip_frame_buckets(length: int, frame_buckets: list[int], choice: str = "longest") -> list[int]:
    """Frame buckets a clip of ``length`` resampled frames is cut into, ascending.

    ``longest``: the longest video bucket (> 1 frame) it fills, or none. ``every``: every bucket it
    fills, 1 included (musubi-tuner's ``target_frames``: one set of windows per count).
    """
    if choice == "every":
        return sorted(b for b in set(frame_buckets) if b <= length)
    if choice != "longest":
        raise ValueError(f"unknown frame bucket choice {choice!r}")
    longest = frame_bucket_for(length, frame_buckets)
    return [longest] if longest is not None else []


def frame_windows(length: int, bucket: int, mode: str, samples: int = 1) -> list[int]:
    """Start offsets (in resampled frames) of the windows of ``bucket`` frames to use.

    ``head``: one window at the start. ``chunks``: consecutive non-overlapping windows.
    ``uniform``: ``samples`` windows with evenly spaced starts over the whole clip.
    """
    if bucket > length:
        return []
    last = length - bucket
    if mode == "head":
        return [0]
    if mode == "chunks":
        return list(range(0, last + 1, bucket))
    if mode == "uniform":
        if samples <= 1 or last == 0:
            return [0]
        starts = [round(i * last / (samples - 1)) for i in range(samples)]
        return sorted(set(starts))
    raise ValueError(f"unknown frame extraction mode {mode!r}")
