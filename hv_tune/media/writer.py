"""Writing clips: H.264 in mp4 that keeps the source's frame timestamps (VFR stays VFR)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

TIME_BASE = Fraction(1, 90000)  # the MPEG clock: exact for 24, 25, 30, 48, 60 and 1001-based rates


def write_h264(path: str | Path, chunks: Iterable[np.ndarray], times: Sequence[float], crf: int = 18,
               preset: str = "medium") -> Path:
    """Encode upright uint8 frames ``[N, H, W, 3]`` (given in chunks) with presentation ``times``.

    Args:
        path: the mp4 to write (not atomic: callers wrap this in ``hv_tune.io.atomic_write``).
        chunks: frame arrays in display order; odd sizes lose their last row/column (yuv420p).
        times: start time in seconds of every frame, relative or absolute (the first becomes 0).
        crf: x264 quality (lower = better).
    """
    import av

    times = np.asarray(times, np.float64) - float(times[0])
    steps = np.diff(times)
    rate = Fraction(1 / float(np.median(steps))).limit_denominator(1001) if len(steps) else Fraction(24)
    n = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
        stream.codec_context.time_base = TIME_BASE
        for chunk in chunks:
            if n == 0:
                h, w = chunk.shape[1] - chunk.shape[1] % 2, chunk.shape[2] - chunk.shape[2] % 2
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for f in chunk:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
                frame.pts, frame.time_base = int(round(times[n] / TIME_BASE)), TIME_BASE
                n += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
