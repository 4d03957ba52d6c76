"""Probing a video: display size, frame timestamps, variable rate, codec, which decoder reads it.

Sizes are **display** sizes: a phone stores a portrait clip as landscape frames plus a
display-matrix rotation (ffprobe ``rotation=-90``); every size this layer reports is the
picture a player shows. PyAV's stream width/height are the stored size; PyAV frames carry
the rotation (``VideoFrame.rotation``, degrees counter-clockwise, ffmpeg's convention).

Timestamps come from the container index (decord's ``get_frame_timestamp``, or the demuxed
packet times when decord cannot open the file), never from ``index / average fps``: phones
record at a variable rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hv_tune.media.errors import MediaError

VFR_SPREAD = 0.25  # frame steps spreading more than this fraction of their mean: variable rate
CONVERT_HINT = "convert it with `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


@dataclass
class VideoProbe:
    """What a video file contains (sizes in display orientation, times in seconds)."""

    num_frames: int  # frames that really decode
    fps: float  # average rate: num_frames / duration
    width: int  # display width (after rotation)
    height: int  # display height
    rotation: int  # display-matrix rotation in degrees, counter-clockwise (ffmpeg convention): 0, 90, -90, 180
    codec: str
    backend: str  # "decord" (seeking decode, fastest) or "pyav" (formats decord cannot open)
    times: np.ndarray | None = field(repr=False)  # [num_frames] start times, first frame at 0; None = not read yet
    end_time: float = 0.0  # end of the last frame
    vfr: bool = False
    container_frames: int = 0
    container_duration: float | None = None
    start_time: float = 0.0  # presentation time of the first frame in the container (PyAV seeking)

    @property
    def duration(self) -> float:
        return self.end_time

    @property
    def stored_size(self) -> tuple[int, int]:
        """``(width, height)`` of the coded frames."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    def rate_note(self) -> str | None:
        """``'variable frame rate (8-48 fps)'`` for a VFR file, else None."""
        if not self.vfr or self.times is None:
            return None
        steps = np.diff(self.times)
        steps = steps[steps > 0]
        return f"variable frame rate ({1 / steps.max():.3g}-{1 / steps.min():.3g} fps)"

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> VideoProbe:
        """A probe rebuilt from ``to_record`` data; ``VideoFrames`` reads the timestamps when needed."""
        return cls(rec["num_frames"], rec["fps"], rec["width"], rec["height"], rec.get("rotation", 0),
                   rec.get("codec", ""), rec.get("backend", "decord"), None, rec.get("duration", 0.0),
                   rec.get("vfr", False), rec.get("container_frames", 0), rec.get("container_duration"),
                   rec.get("start_time", 0.0))

    def to_record(self) -> dict[str, Any]:
        """Plain data (no timestamps array) for manifests and state files."""
        note = self.rate_note()
        return {
            "num_frames": self.num_frames, "fps": round(self.fps, 6), "width": self.width, "height": self.height,
            "duration": round(self.duration, 6), "rotation": self.rotation, "codec": self.codec,
            "backend": self.backend, "vfr": self.vfr, "container_frames": self.container_frames,
            "container_duration": self.container_duration, "start_time": self.start_time,
            "notes": [note] if note else [],
        }


def probe_video(path: str | Path, max_pixels: int | None = None) -> VideoProbe:
    """Probe ``path`` (the last frame is decoded; nothing else is).

    Raises:
        MediaError: empty file, no video stream, too many pixels, or a codec no decoder here reads
            (the message names the codec and how to convert the file).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise MediaError("file vanished")
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    info = _container_info(path)
    w, h = info["width"], info["height"]
    if max_pixels is not None and w * h > max_pixels:
        raise MediaError(f"too large: {w}x{h} > {max_pixels} pixels")
    try:
        times, end_time = _decord_times(path, w, h)
        backend, start_time = "decord", 0.0
    except _DecordCannot:
        times, end_time, start_time = pyav_times(path)
        backend = "pyav"
    n = len(times)
    duration = end_time if n > 1 or end_time > 0 else 0.0
    steps = np.diff(times)
    vfr = bool(len(steps) > 1) and float(steps.max() - steps.min()) > VFR_SPREAD * float(steps.mean())
    fps = n / duration if duration > 0 else info["rate"]
    return VideoProbe(n, fps, w, h, info["rotation"], info["codec"], backend, times, end_time, vfr,
                      info["frames"], info["duration"], start_time)


def _container_info(path: str) -> dict[str, Any]:
    """Stream facts from PyAV: display size, rotation (of the first decoded frame), codec, rate."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("no video stream (audio only?)")
            s = container.streams.video[0]
            codec = getattr(s.codec_context.codec, "canonical_name", None) or s.codec_context.name
            sw, sh = s.codec_context.width, s.codec_context.height
            rotation = 0
            try:
                frame = next(container.decode(s), None)
                rotation = int(round(frame.rotation or 0)) if frame is not None else 0
            except av.FFmpegError as e:
                raise MediaError(f"codec {codec}: the first frame does not decode ({e}); {CONVERT_HINT}") from e
            frames = int(s.frames or 0)
            dur = float(s.duration * s.time_base) if s.duration else None
            rate = float(s.average_rate or s.guessed_rate or 0)
    except av.FFmpegError as e:
        raise MediaError(f"not a readable video ({' '.join(str(e).split())[:200]})") from e
    rotation = ((rotation + 180) % 360) - 180 or 0  # 270 -> -90, -180 -> 180
    if rotation == -180:
        rotation = 180
    w, h = (sh, sw) if rotation % 180 else (sw, sh)
    return {"width": w, "height": h, "rotation": rotation, "codec": codec, "frames": frames,
            "duration": dur, "rate": rate}


class _DecordCannot(Exception):
    """decord cannot open this file (another decoder may)."""


def _decord_times(path: str, width: int, height: int) -> tuple[np.ndarray, float]:
    """Start times of the frames decord can decode, and the end of the last one."""
    import decord

    # a small proxy (width 64, a multiple of 32): decoding cost stays bounded whatever the source size
    try:
        vr = decord.VideoReader(path, num_threads=1, width=64, height=max(2, round(64 * height / width / 2) * 2))
        n = len(vr)
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise _DecordCannot(str(e)) from e
    if n < 1:
        raise MediaError("no decodable frames")
    n = _last_decodable(vr, n)
    ts = vr.get_frame_timestamp(list(range(n))).astype(np.float64)  # [n, 2] start/end seconds
    t0 = ts[0, 0]
    return ts[:, 0] - t0, float(ts[-1, 1] - t0)


def _last_decodable(vr: Any, n: int) -> int:
    """Frame count that really decodes: the index may promise frames the data lacks."""
    lo, hi = 0, n - 1  # invariant: frame lo decodes (checked first), frames > hi are unknown
    if _decodes(vr, hi):
        return n
    if not _decodes(vr, 0):
        raise MediaError("the first frame does not decode")
    while lo < hi - 1:  # binary search by seeking, at most log2(n) decodes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _decodes(vr, mid) else (lo, mid)
    return lo + 1


def _decodes(vr: Any, i: int) -> bool:
    try:
        vr.get_batch([i]).asnumpy()
        return True
    except Exception:  # decord raises its own error types for bad data
        return False


def pyav_times(path: str) -> tuple[np.ndarray, float, float]:
    """Frame times from the demuxed packets (nothing decoded), for files decord cannot open.

    Returns:
        start times ``[N]`` counted from the first frame, the end of the last frame, and the
        first frame's presentation time in the container (seconds).
    """
    import av

    with av.open(path) as container:
        s = container.streams.video[0]
        pts, durs = [], []
        for packet in container.demux(s):
            if packet.pts is not None:
                pts.append(packet.pts)
                durs.append(packet.duration or 0)
        tb = float(s.time_base)
    if not pts:
        raise MediaError(f"codec {s.codec_context.name}: no frames found; {CONVERT_HINT}")
    order = np.argsort(pts, kind="stable")
    p = np.asarray(pts, np.float64)[order]
    times = (p - p[0]) * tb
    last = durs[order[-1]] * tb or (float(np.median(np.diff(times))) if len(times) > 1 else 0.0)
    return times, float(times[-1] + last), float(p[0] * tb)
