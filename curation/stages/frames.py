"""Frame sampling by seeking: a few frames per clip for CLIP, and a ~2 fps run for motion.

Nothing decodes a whole file here: ``hv_tune.media`` seeks to each requested index and returns
upright frames. Sources are opened once per batch, at ``frames.short_side``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.config import FramesConfig, MotionConfig
from curation.media import image_frames, open_video, positions_to_indices


def motion_indices(start: int, end: int, times: np.ndarray, fps: float, max_pairs: int) -> list[int]:
    """Indices ~``1/fps`` seconds apart over ``[start, end)``, at most ``max_pairs + 1``, at least 2.

    Args:
        times: start time of every frame of the span ``[end - start]`` (VFR-safe).
    """
    if end - start < 2:
        return [start]
    duration = float(times[-1] - times[0])
    count = int(min(max_pairs + 1, max(2, np.floor(duration * fps) + 1)))
    targets = np.linspace(times[0], times[-1], count)
    idx = np.searchsorted(times, targets, side="left").clip(0, end - start - 1)
    return sorted({start + int(i) for i in idx}) if len(set(idx.tolist())) > 1 else [start, end - 1]


class SampleFrames:
    """Stage: pending clip records -> records with ``_frames`` (CLIP) and ``_motion`` frames. CPU stage.

    ``_frames``: ``[K, H, W, 3]`` uint8 at ``frames.positions``; ``_motion``: ``[M, H, W]`` uint8
    grayscale with ``_motion_times`` ``[M]`` seconds. A clip that fails to decode becomes an
    ``error`` record.
    """

    name = "frames"
    uses_model = False

    def __init__(self, frames: FramesConfig, motion: MotionConfig):
        self.frames, self.motion = frames, motion

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        readers: dict[str, Any] = {}
        return [self.one(r, readers) for r in records]

    def one(self, rec: dict[str, Any], readers: dict[str, Any]) -> dict[str, Any]:
        if rec["status"] != "pending":
            return rec
        try:
            if rec["kind"] == "image":
                img = image_frames(rec["source"], self.frames.short_side)
                frames = np.repeat(img, len(self.frames.positions), axis=0)
                return {**rec, "_frames": frames, "_motion": None, "_motion_times": None}
            if rec["source"] not in readers:
                readers[rec["source"]] = open_video(rec, self.frames.short_side)
            reader = readers[rec["source"]]
            s, e = rec["start_frame"], rec["end_frame"]
            frames = reader.get(positions_to_indices(s, e, self.frames.positions))
            m_idx = motion_indices(s, e, reader.times[s:e], self.motion.fps, self.motion.max_pairs)
            motion = reader.get(m_idx)
        except Exception as e:  # decoder errors: the clip is an error record, the run goes on
            msg = " ".join(str(e).split())[:300]
            return {**rec, "status": "error", "reasons": [f"unreadable: {msg}"]}
        gray = (motion.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        return {**rec, "_frames": frames, "_motion": gray, "_motion_times": reader.times[m_idx]}
