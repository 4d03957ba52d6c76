"""Scene split with PySceneDetect's AdaptiveDetector on upright frames from ``hv_tune.media``.

ContentDetector alone over-splits on camera motion; AdaptiveDetector compares each frame's
content change with its neighbours'. Frames next to a cut often blend both shots (encoders
and fades), so ``scenes.trim_frames`` are dropped on each side of a detected cut.

Stretches of near-black frames (a fade through black, black between shots, a dark title
card) are cut out of clips, with the fade ramps on either side: frames where at least
``scenes.black_pixels`` of the pixels are darker than ``scenes.black_luma`` (ffmpeg
blackdetect's measure), widened by the frames that darken toward them. Each stretch is a
``rejected`` record (reason ``black: ...``), so a transition through black never sits inside
one clip.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curation.config import ScenesConfig
from curation.manifest import clip_id
from curation.media import open_video

CHUNK = 64  # frames decoded per get_batch call while detecting: bounds memory


def detect_cuts(reader: Any, num_frames: int, cfg: ScenesConfig) -> tuple[list[int], np.ndarray, np.ndarray]:
    """First frame index of every new scene (ascending), by AdaptiveDetector; and per frame the
    mean luma ``[N]`` (0-255) and the share of black pixels ``[N]`` (``cfg.black_luma``)."""
    from scenedetect.detectors import AdaptiveDetector

    det = AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_scene_len,
        window_width=cfg.window_width, min_content_val=cfg.min_content_val,
    )
    cuts: list[int] = []
    luma, black = np.zeros(num_frames), np.zeros(num_frames)
    for start in range(0, num_frames, CHUNK):
        frames = reader.get(range(start, min(num_frames, start + CHUNK)))
        y = frames.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])  # BT.601 luma [T, H, W]
        luma[start : start + len(frames)] = y.mean(axis=(1, 2))
        black[start : start + len(frames)] = (y < cfg.black_luma * 255).mean(axis=(1, 2))
        for i, frame in enumerate(frames):
            # PySceneDetect expects BGR frames (OpenCV order): [H, W, RGB] -> [H, W, BGR]
            cuts += det.process_frame(start + i, np.ascontiguousarray(frame[:, :, ::-1]))
    cuts += det.post_process(num_frames - 1)
    return sorted(c for c in set(cuts) if 0 < c < num_frames), luma, black


def black_stretches(luma: np.ndarray, black: np.ndarray, cfg: ScenesConfig) -> list[tuple[int, int]]:
    """Spans ``[a, b)`` of near-black frames widened by their fade ramps (merged when they touch); pure.

    A frame is near-black when ``black`` (its share of black pixels) >= ``cfg.black_pixels``. A
    frame beside a stretch belongs to its fade while the next frame away from the stretch is
    brighter by more than ``cfg.fade_step`` (relative) + 0.5 luma; a stretch with no ramp on a
    side (a hard cut to black) loses ``cfg.trim_frames`` more there, as at a detected cut.
    """
    if cfg.black_pixels is None or not len(black):
        return []
    dark = np.concatenate([[False], black >= cfg.black_pixels, [False]])
    edges = np.flatnonzero(dark[1:] != dark[:-1])
    out: list[tuple[int, int]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        a, b = _ramp_end(luma, a - 1, -1, cfg), _ramp_end(luma, b, 1, cfg)
        if out and a <= out[-1][1]:
            a = out.pop()[0]
        out.append((int(a), int(b)))
    return out


def _ramp_end(luma: np.ndarray, i: int, way: int, cfg: ScenesConfig) -> int:
    """Walk from frame ``i`` (beside a black stretch) away from it over the fade; the stretch's new edge."""
    n, first = len(luma), i
    while 0 <= i < n and 0 <= i + way < n and luma[i + way] > luma[i] * (1 + cfg.fade_step) + 0.5:
        i += way
    if i == first:  # no fade: a hard cut to or from black
        i = first + way * cfg.trim_frames
    i = min(max(i, -1), n)
    return int(i + 1 if way < 0 else i)


def split_spans(
    times: np.ndarray, end_time: float, cuts: list[int], cfg: ScenesConfig,
    black: list[tuple[int, int]] = (),
) -> list[tuple[int, int, str | None]]:
    """Scenes -> clip spans ``(start, end, reject_reason)``; pure.

    Args:
        times: start time in seconds of every frame ``[N]``.
        end_time: end time of the last frame.
        cuts: first frame of each new scene.
        cfg: trimming and min/max clip length.
        black: near-black stretches with their fades (``black_stretches``): cut out of every
            scene, each one a span of its own with a ``black`` reason.

    Returns:
        Spans ``[start, end)`` in frame indices, by start. Scenes longer than ``max_clip_s`` are
        cut into equal pieces; pieces shorter than ``min_clip_s`` carry a ``too short`` reason.
    """
    n = len(times)
    bounds = [0, *cuts, n]
    spans: list[tuple[int, int, str | None]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a + (cfg.trim_frames if a > 0 else 0)
        e = b - (cfg.trim_frames if b < n else 0)
        for ps, pe in _outside(s, e, black):
            spans += _pieces(times, end_time, ps, pe, cfg)
    for a, b in black:
        dur = _t(times, end_time, b) - times[a]
        spans.append((a, b, f"black: {b - a} frames ({dur:.2f} s) near-black or fading to black "
                            f"(scenes.black_pixels {cfg.black_pixels:g} of pixels below scenes.black_luma "
                            f"{cfg.black_luma:g})"))
    return sorted(spans)


def _outside(s: int, e: int, black: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[s, e)`` less the stretches in ``black`` (sorted, disjoint): the pieces left."""
    out, cur = [], s
    for a, b in black:
        if a > cur:
            out.append((cur, min(a, e)))
        cur = max(cur, b)
    out.append((cur, e))
    return [(x, y) for x, y in out if y > x]


def _pieces(times: np.ndarray, end_time: float, s: int, e: int, cfg: ScenesConfig) -> list[tuple[int, int, str | None]]:
    """``[s, e)`` cut into equal pieces no longer than ``max_clip_s``, too-short ones with a reason."""
    dur = _t(times, end_time, e) - times[s]
    pieces = max(1, math.ceil(dur / cfg.max_clip_s - 1e-9))
    edges = [s + round(k * (e - s) / pieces) for k in range(pieces + 1)]
    out: list[tuple[int, int, str | None]] = []
    for ps, pe in zip(edges[:-1], edges[1:]):
        pdur = _t(times, end_time, pe) - times[ps]
        reason = f"too short: {pdur:.2f} s < {cfg.min_clip_s:g} s" if pdur < cfg.min_clip_s - 1e-9 else None
        out.append((ps, pe, reason))
    return out


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
                times, end_time, cuts, stretches = np.zeros(1), 0.0, [], []
                spans: list[tuple[int, int, str | None]] = [(0, 1, None)]
            else:
                reader = open_video(rec, _short_for(p, self.cfg.detect_width))
                n = p["num_frames"]
                times, end_time = reader.times, float(p["duration"])  # presentation timestamps (VFR-safe)
                cuts, luma, black = detect_cuts(reader, n, self.cfg)
                stretches = black_stretches(luma, black, self.cfg)
                spans = split_spans(times, end_time, cuts, self.cfg, stretches)
        except Exception as e:  # a decoder failure mid-file: the file is one error record
            msg = " ".join(str(e).split())[:300]
            return {**rec, "clips": [error_clip(rec, f"unreadable: {msg}")]}
        clips = [clip_record(rec, s, e, times, end_time, reason) for s, e, reason in spans]
        return {**rec, "scene_cuts": cuts, "black_stretches": [list(x) for x in stretches], "clips": clips}


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
        "rotation": p.get("rotation", 0), "backend": p.get("backend", "pyav"), "source_frames": p["num_frames"],
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
