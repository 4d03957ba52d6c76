"""Probing a video: display size, frame timestamps, variable rate, codec, which decoder reads it.

Sizes are **display** sizes: a phone stores a portrait clip as landscape frames plus a
display-matrix rotation (ffprobe ``rotation=-90``); every size this layer reports is the
picture a player shows. PyAV's stream width/height are the stored size; PyAV frames carry
the rotation (``VideoFrame.rotation``, degrees counter-clockwise, ffmpeg's convention).

Timestamps come from the container index (the demuxed packet times, nothing decoded), never
from ``index / average fps``: phones record at a variable rate.

The decoder of a file (``backend``) is chosen here, once, by proving it on every access
pattern later stages use (``choose_decoder``); manifests and state files carry the choice.
"""

from __future__ import annotations

import dataclasses
import functools
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


def probe_video(path: str | Path, max_pixels: int | None = None) -> VideoProbe:
    """Probe ``path``: container facts, packet timestamps, and the decoder proven for it.

    A few frames are decoded (``choose_decoder``); a truncated file keeps its decodable prefix.

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
    times, end_time, start_time = pyav_times(path)
    n = len(times)
    duration = end_time if n > 1 or end_time > 0 else 0.0
    steps = np.diff(times)
    vfr = bool(len(steps) > 1) and float(steps.max() - steps.min()) > VFR_SPREAD * float(steps.mean())
    fps = n / duration if duration > 0 else info["rate"]
    probe = VideoProbe(n, fps, w, h, info["rotation"], info["codec"], "", times, end_time, vfr,
                       info["frames"], info["duration"], start_time)
    probe.backend, n_ok, probe.decoder_note = choose_decoder(path, probe)
    if n_ok < n:  # a truncated file: its decodable prefix
        probe.num_frames, probe.times, probe.end_time = n_ok, times[:n_ok], float(times[n_ok])
        probe.fps = n_ok / probe.end_time if probe.end_time > 0 else probe.fps
    return probe


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


@functools.lru_cache(maxsize=1)
def torchcodec_available() -> bool:
    """True when torchcodec and the FFmpeg shared libraries it loads are installed."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads libtorchcodec + FFmpeg)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def choose_decoder(path: str, probe: VideoProbe) -> tuple[str, int, str | None]:
    """The decoder for ``path``, proven on every access pattern later stages use, and its frame count.

    PyAV first (the fastest on every pattern, bench/decoders.py), then torchcodec (FFmpeg's
    system build, where installed). A decoder is proven when it
    decodes, with the frame count the timestamps promise (or the decodable prefix of a truncated
    file), the first two frames in sequence and the last one by seeking, at the full display
    size (clip cutting) and at a reduced size (scene split, scoring, the cache), with the right
    shapes. The choice goes into the probe record, so every stage and the cache read the file
    with the same decoder whichever worker reads it.

    Returns:
        ``(backend, decodable frames, why PyAV failed on this file or None)``.

    Raises:
        MediaError: neither decoder reads the file.
    """
    from hv_tune.media.video import scaled_size

    reasons: list[str] = []
    small = scaled_size(probe.width, probe.height, 256)
    for backend in ("pyav", "torchcodec"):
        if backend == "torchcodec" and not torchcodec_available():  # (imported only when needed)
            reasons.append("torchcodec: not installed (it needs FFmpeg's shared libraries)")
            break
        trial = dataclasses.replace(probe, backend=backend)
        try:
            n = _decodable_frames(path, trial, None)
            trial.num_frames = n
            _decodes(path, trial, small, sorted({0, min(1, n - 1), n - 1}))
            return backend, n, "; ".join(reasons) or None
        except MediaError as e:
            reasons.append(f"{backend}: {e}")
    raise MediaError(f"codec {probe.codec}: no decoder here reads it ({'; '.join(reasons)[:300]}); {CONVERT_HINT}")


def _decodable_frames(path: str, probe: VideoProbe, size: tuple[int, int] | None) -> int:
    """Frames that really decode at ``size``: the index may promise frames the data lacks."""
    n = probe.num_frames
    _decodes(path, probe, size, [0, 1] if n > 1 else [0])
    if _decodes(path, probe, size, [n - 1], fail=False):
        return n
    lo, hi = 0, n - 1  # invariant: frame lo decodes, frame hi does not
    while lo < hi - 1:  # binary search by seeking, at most log2(n) decodes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _decodes(path, probe, size, [mid], fail=False) else (lo, mid)
    return lo + 1


def _decodes(path: str, probe: VideoProbe, size: tuple[int, int] | None, indices: list[int],
             fail: bool = True) -> bool:
    """Whether ``indices`` decode at ``size`` (None = display size) with the probe's backend."""
    from hv_tune.media.video import VideoFrames

    reader = VideoFrames(path, probe, size)
    try:
        reader.get(indices)
        return True
    except MediaError:
        if fail:
            raise
        return False
    finally:
        reader.close()


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
