"""Scene split with PySceneDetect's AdaptiveDetector on upright frames from ``hv_tune.media``.

ContentDetector alone over-splits on camera motion; AdaptiveDetector compares each frame's
content change with its neighbours'. Frames next to a cut often blend both shots (encoders
and fades), so ``scenes.trim_frames`` are dropped on each side of a detected cut.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curation.config import ScenesConfig
from curation.manifest import clip_id
from curation.media import open_video

CHUNK = 64  # frames decoded per get_batch call while detecting: bounds memory


def detect_cuts(reader: Any, num_frames: int, cfg: ScenesConfig) -> list[int]:
    """First frame index of every new scene (ascending), by AdaptiveDetector."""
    from scenedetect.detectors import AdaptiveDetector

    det = AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_scene_len,
        window_width=cfg.window_width, min_content_val=cfg.min_content_val,
    )
    cuts: list[int] = []
    for start in range(0, num_frames, CHUNK):
        frames = reader.get(range(start, min(num_frames, start + CHUNK)))
        for i, frame in enumerate(frames):
            # PySceneDetect expects BGR frames (OpenCV order): [H, W, RGB] -> [H, W, BGR]
            cuts += det.process_frame(start + i, np.ascontiguousarray(frame[:, :, ::-1]))
    cuts += det.post_process(num_frames - 1)
    return sorted(c for c in set(cuts) if 0 < c < num_frames)


def split_spans(
    times: np.ndarray, end_time: float, cuts: list[int], cfg: ScenesConfig
) -> list[tuple[int, int, str | None]]:
    """Scenes -> clip spans ``(start, end, reject_reason)``; pure.

    Args:
        times: start time in seconds of every frame ``[N]``.
        end_time: end time of the last frame.
        cuts: first frame of each new scene.
        cfg: trimming and min/max clip length.

    Returns:
        Spans ``[start, end)`` in frame indices. Scenes longer than ``max_clip_s`` are cut into
        equal pieces; pieces shorter than ``min_clip_s`` carry a ``too short`` reason.
    """
    n = len(times)
    bounds = [0, *cuts, n]
    spans: list[tuple[int, int, str | None]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a + (cfg.trim_frames if a > 0 else 0)
        e = b - (cfg.trim_frames if b < n else 0)
        if e <= s:
            continue
        dur = _t(times, end_time, e) - times[s]
        pieces = max(1, math.ceil(dur / cfg.max_clip_s - 1e-9))
        edges = [s + round(k * (e - s) / pieces) for k in range(pieces + 1)]
        for ps, pe in zip(edges[:-1], edges[1:]):
            pdur = _t(times, end_time, pe) - times[ps]
            reason = f"too short: {pdur:.2f} s < {cfg.min_clip_s:g} s" if pdur < cfg.min_clip_s - 1e-9 else None
            spans.append((ps, pe, reason))
    return spans


def _t(times: np.ndarray, end_time: float, i: int) -> float:
    return float(times[i]) if i < len(times) else end_time


class SceneSplit:
    """Stage: probed file records -> the same records with ``clips`` (clip records). CPU stage."""

    name = "scenes"
    uses_model = False

    def __init__(self, cfg: ScenesConfig):
        self.cfg = cfg

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.one(r) for r in records]

    def one(self, rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("error"):
            return {**rec, "clips": [error_clip(rec, rec["error"])]}
        p = rec["probe"]
        try:
            if rec["kind"] == "image":
                times, end_time, cuts = np.zeros(1), 0.0, []
                spans: list[tuple[int, int, str | None]] = [(0, 1, None)]
            else:
                reader = open_video(rec, _short_for(p, self.cfg.detect_width))
                n = p["num_frames"]
                times, end_time = reader.times, float(p["duration"])  # presentation timestamps (VFR-safe)
                cuts = detect_cuts(reader, n, self.cfg)
                spans = split_spans(times, end_time, cuts, self.cfg)
        except Exception as e:  # a decoder failure mid-file: the file is one error record
            msg = " ".join(str(e).split())[:300]
            return {**rec, "clips": [error_clip(rec, f"unreadable: {msg}")]}
        clips = [clip_record(rec, s, e, times, end_time, reason) for s, e, reason in spans]
        return {**rec, "scene_cuts": cuts, "clips": clips}


def _short_for(probe: dict[str, Any], detect_width: int) -> int:
    """Short side that makes the decoded width ``detect_width``."""
    w, h = probe["width"], probe["height"]
    return max(2, int(detect_width * min(w, h) / w))


def clip_record(
    rec: dict[str, Any], start: int, end: int, times: np.ndarray, end_time: float, reason: str | None
) -> dict[str, Any]:
    """A clip record for span ``[start, end)`` of file record ``rec``."""
    p = rec["probe"]
    return {
        "id": clip_id(rec["rel"], start, end), "source": rec["source"], "rel": rec["rel"], "kind": rec["kind"],
        "start_frame": start, "end_frame": end, "num_frames": end - start,
        "start_time": round(float(times[start]), 6), "end_time": round(_t(times, end_time, end), 6),
        "fps": p["fps"], "width": p["width"], "height": p["height"],  # display size (rotation applied)
        "rotation": p.get("rotation", 0), "backend": p.get("backend", "decord"), "source_frames": p["num_frames"],
        "status": "rejected" if reason else "pending", "reasons": [reason] if reason else [],
        "scores": {}, "metrics": {}, "caption": None, "caption_source": None, "clip_path": None,
        "probe_notes": list(p.get("notes", [])),
    }


def error_clip(rec: dict[str, Any], reason: str) -> dict[str, Any]:
    """The one record of a file that cannot be used: ``error``, or ``rejected`` when over a size limit."""
    status = "rejected" if reason.startswith(("too large", "too long")) else "error"
    return {
        "id": clip_id(rec["rel"], 0, 0), "source": rec["source"], "rel": rec["rel"], "kind": rec["kind"],
        "start_frame": 0, "end_frame": 0, "num_frames": 0, "start_time": 0.0, "end_time": 0.0,
        "fps": 0.0, "width": 0, "height": 0, "status": status, "reasons": [reason],
        "scores": {}, "metrics": {}, "caption": None, "caption_source": None, "clip_path": None, "probe_notes": [],
    }
