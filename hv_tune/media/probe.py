"""Probing a video: display size, frame timestamps, variable rate, codec, which decoder reads it.

Sizes are **display** sizes: a phone stores a portrait clip as landscape frames plus a
display-matrix rotation (ffprobe ``rotation=-90``); every size this layer reports is the
picture a player shows. PyAV's stream width/height are the stored size; PyAV frames carry
the rotation (``VideoFrame.rotation``, degrees counter-clockwise, ffmpeg's convention).

Timestamps come from the container index (the demuxed packet times, nothing decoded), never
from ``index / average fps``: phones record at a variable rate.

The decoder of a file (``backend``) is chosen once, by ``hv_tune.media.video.probe_video``,
which proves it on every access pattern later stages use; manifests and state files carry the
choice. This module holds the container facts only (no decoding beyond the first frame).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
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
    backend: str  # "pyav" (fastest, bench/decoders.py) or "torchcodec" (where PyAV fails on this file)
    times: np.ndarray | None = field(repr=False)  # [num_frames] start times, first frame at 0; None = not read yet
    end_time: float = 0.0  # end of the last frame
    vfr: bool = False
    container_frames: int = 0
    container_duration: float | None = None
    start_time: float = 0.0  # presentation time of the first frame in the container (PyAV seeking)
    decoder_note: str | None = None  # why this file is not read with PyAV (the fallback decoder reads it)

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
        """A probe rebuilt from ``to_record`` data or a clip record.

        ``VideoFrames`` reads the timestamps and the container's start time from the file when
        needed: a clip record's ``start_time`` is the clip's, not the container's.
        """
        return cls(rec["num_frames"], rec["fps"], rec["width"], rec["height"], rec.get("rotation", 0),
                   rec.get("codec", ""), rec.get("backend", ""), None, rec.get("duration", 0.0),
                   rec.get("vfr", False), rec.get("container_frames", 0), rec.get("container_duration"),
                   0.0, rec.get("decoder_note"))

    def to_record(self) -> dict[str, Any]:
        """Plain data (no timestamps array) for manifests and state files."""
        notes = [n for n in (self.rate_note(), self.decoder_note and f"decoded with torchcodec ({self.decoder_note})") if n]
        return {
            "num_frames": self.num_frames, "fps": round(self.fps, 6), "width": self.width, "height": self.height,
            "duration": round(self.duration, 6), "rotation": self.rotation, "codec": self.codec,
            "backend": self.backend, "vfr": self.vfr, "container_frames": self.container_frames,
            "container_duration": self.container_duration, "start_time": self.start_time,
            "decoder_note": self.decoder_note, "notes": notes,
        }


def container_info(path: str) -> dict[str, Any]:
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


@functools.lru_cache(maxsize=1)
def torchcodec_available() -> bool:
    """True when torchcodec and the FFmpeg shared libraries it loads are installed."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads libtorchcodec + FFmpeg)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def pyav_times(path: str) -> tuple[np.ndarray, float, float]:
    """Frame times from the demuxed packets (nothing decoded).

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
