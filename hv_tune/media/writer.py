"""Writing video: THE writer of the project (curation's clips, sampling's previews, the tests' inputs).

H.264 in mp4 that keeps the given frame timestamps (VFR stays VFR). Callers that must produce
another codec (tests that need AV1 input) pass ``codec``; nothing else differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

TIME_BASE = Fraction(1, 90000)  # the MPEG clock: exact for 24, 25, 30, 48, 60 and 1001-based rates
CONTAINERS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")  # chosen by the file's extension
# x264's macroblock tree off: with it, x264 (core 165, in PyAV 18.1's wheel) wrote different bytes for
# the same frames at 13 of 40 small sizes tested (96x64, 320x240, ...; decoded pixels up to 33 levels
# apart), so a clip depended on what the process had run before; without it every size gave one file.
# It costs ~20 % more bytes at the same crf (docs/decisions.md).
X264_PARAMS = "mbtree=0"


def frame_times(n: int, fps: float) -> np.ndarray:
    """Start times in seconds of ``n`` frames at a constant ``fps``."""
    return np.arange(n, dtype=np.float64) / float(fps)


def write_h264(path: str | Path, chunks: Iterable[np.ndarray], times: Sequence[float], crf: int | None = 18,
               preset: str | None = "medium", *, codec: str = "libx264", options: dict[str, str] | None = None,
               rotation: int = 0) -> Path:
    """Encode upright uint8 frames ``[N, H, W, 3]`` (given in chunks) with presentation ``times``.

    Args:
        path: the mp4 to write (not atomic: callers wrap this in ``hv_tune.io.atomic_write``).
        chunks: frame arrays in display order; odd sizes lose their last row/column (yuv420p).
        times: start time in seconds of every frame, relative or absolute (the first becomes 0);
            ``frame_times(n, fps)`` for a constant rate.
        crf: x264 quality (lower = better); None leaves the encoder's default (23).
        preset: x264 speed preset; None leaves the encoder's default.
        codec: the encoder (``libx264``; another only where a test needs another codec).
        options: further encoder options (e.g. ``{"qp": "0"}`` with ``crf=None`` for lossless).
        rotation: display rotation in degrees counter-clockwise stored in the file (the frames are
            the stored ones; a player turns them by it).

    The same frames, times and settings give the same bytes (``X264_PARAMS``). The calling thread's
    scheduling policy is the same afterwards (``keep_thread_scheduling``).
    """
    with keep_thread_scheduling():
        return _encode(path, chunks, times, crf, preset, codec, options, rotation)


@contextmanager
def keep_thread_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy and priority (Linux) after the block.

    An encoder may change them: SVT-AV1 (``libsvtav1``) run as root makes the thread that opens it
    real-time (``SCHED_FIFO``, priority 99); a thread spinning at that priority starves every other
    thread of its process (seen as a multiprocessing pool that never returns a result).
    """
    before = thread_scheduling()
    try:
        yield
    finally:
        if thread_scheduling() != before:
            os.sched_setscheduler(0, *before)


def thread_scheduling() -> tuple[int, os.sched_param] | None:
    """The calling thread's scheduling ``(policy, param)``; None where the platform has none (not Linux)."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0)


def _encode(path: str | Path, chunks: Iterable[np.ndarray], times: Sequence[float], crf: int | None,
            preset: str | None, codec: str, options: dict[str, str] | None, rotation: int) -> Path:
    import av

    times = np.asarray(times, np.float64) - float(times[0])
    steps = np.diff(times)
    rate = Fraction(1 / float(np.median(steps))).limit_denominator(1001) if len(steps) else Fraction(24)
    opts = {}
    if codec == "libx264":
        opts = {**({"crf": str(crf)} if crf is not None else {}), **({"preset": preset} if preset else {}),
                "x264-params": X264_PARAMS}
    opts.update(options or {})
    # x264 keeps any timestamp on the MPEG clock; other encoders (mpeg4 allows denominators up to
    # 65535) get 1/rate when the rate is constant
    constant = len(steps) == 0 or bool(np.allclose(times, np.arange(len(times)) / float(rate), atol=1e-6))
    time_base = TIME_BASE if codec == "libx264" or not constant else 1 / rate
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    container_format = None if Path(path).suffix.lower() in CONTAINERS else "mp4"  # (temporary names: mp4)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=opts)
        stream.codec_context.time_base = time_base
        for chunk in chunks:
            if n == 0:
                h, w = chunk.shape[1] - chunk.shape[1] % 2, chunk.shape[2] - chunk.shape[2] % 2
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
            for f in chunk:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
                frame.pts, frame.time_base = int(round(times[n] / time_base)), time_base
                n += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
