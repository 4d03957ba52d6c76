"""Motion: OpenCV Farneback dense flow magnitude and frame difference, normalised.

``motion`` is the mean flow magnitude in pixels, divided by the frame diagonal and by the time
between the two frames: *frame diagonals per second*, comparable across resolutions and frame
rates. Magnitudes, not signed means (opposite motions would cancel). ``frame_diff`` is the mean
absolute grey-level difference (0..1) per second, a cheap second signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.config import MotionConfig

MOTION_METRIC = "farneback-mean-magnitude/diagonal/second v1"
FRAME_DIFF_METRIC = "mean-abs-gray-diff/second v1"


def flow_magnitude(a: np.ndarray, b: np.ndarray, cfg: MotionConfig) -> float:
    """Mean Farneback flow magnitude in pixels between grayscale frames ``a`` and ``b`` ``[H, W]``."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(
        a, b, None, cfg.pyr_scale, cfg.levels, cfg.winsize, cfg.iterations, 5, 1.2, 0
    )  # [H, W, 2] (dx, dy)
    return float(np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1)).mean())


def motion_scores(gray: np.ndarray, times: np.ndarray, cfg: MotionConfig) -> dict[str, float | None]:
    """``motion`` and ``frame_diff`` of a clip from grayscale frames ``[M, H, W]`` at ``times`` ``[M]``.

    Both are None for fewer than two frames (an image or a 1-frame clip).
    """
    if gray is None or len(gray) < 2:
        return {"motion": None, "frame_diff": None}
    h, w = gray.shape[1:]
    diagonal = float(np.hypot(h, w))
    motions, diffs = [], []
    for i in range(len(gray) - 1):
        dt = max(float(times[i + 1] - times[i]), 1e-6)
        motions.append(flow_magnitude(gray[i], gray[i + 1], cfg) / diagonal / dt)
        diff = np.abs(gray[i + 1].astype(np.float32) - gray[i].astype(np.float32)).mean() / 255.0
        diffs.append(float(diff) / dt)
    return {"motion": float(np.mean(motions)), "frame_diff": float(np.mean(diffs))}


class Motion:
    """Stage: records with ``_motion`` frames -> records with ``motion`` and ``frame_diff`` scores. CPU."""

    name = "motion"
    uses_model = False

    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for rec in records:
            if rec["status"] != "pending":
                out.append(rec)
                continue
            rec = dict(rec)  # the input record stays as it was
            scores = motion_scores(rec.pop("_motion"), rec.pop("_motion_times"), self.cfg)
            metrics = {"motion": MOTION_METRIC, "frame_diff": FRAME_DIFF_METRIC}
            out.append({**rec, "scores": {**rec["scores"], **scores}, "metrics": {**rec["metrics"], **metrics}})
        return out
