"""Media files as phones and cameras write them, built locally for the media tests.

Videos carry a red band along the top of the *displayed* picture, so a test can check with
pixels that a frame came out upright. A rotated video stores its frames turned the other way,
with a display-matrix rotation (ffprobe ``rotation``), as a phone does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hv_tune.media.writer import frame_times, write_h264

RED = (230, 20, 20)


def marked_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[n, H, W, 3]`` uint8: textured background, a moving disc, a red band on the top eighth."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(40, 200, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    bg = np.kron(tex, np.ones((8, 8, 1), np.uint8))[:height, :width]
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    r = min(height, width) / 6
    for f in range(n):
        cx = r + (width - 2 * r) * f / max(1, n - 1)
        img = bg.copy()
        img[(ys - height / 2) ** 2 + (xs - cx) ** 2 <= r * r] = (40, 60, 240)
        img[: max(2, height // 8)] = RED
        out[f] = img
    return out


def top_is_red(frame: np.ndarray) -> bool:
    """True when the top eighth of an upright ``[H, W, 3]`` frame is the red band (and no other side is)."""
    h, w = frame.shape[:2]
    band = max(1, h // 16)

    def red(a: np.ndarray) -> bool:
        m = a.reshape(-1, 3).astype(np.float32).mean(0)
        return bool(m[0] > 150 and m[1] < 90 and m[2] < 90)

    return red(frame[:band]) and not red(frame[-band:]) and not red(frame[:, :max(1, w // 16)][h // 4:])


def write_video(path: str | Path, frames: np.ndarray, fps: float = 12, rotation: int = 0,
                pts_s: Sequence[float] | None = None, codec: str = "libx264") -> Path:
    """Encode displayed pictures ``frames`` ``[F, H, W, 3]``; ``rotation`` in degrees counter-clockwise.

    The stored frames are the displayed ones turned by ``-rotation``; players (and ffmpeg) turn
    them back by the display matrix. ``pts_s``: each frame's start time in seconds (variable rate).
    Written by the project's one writer, ``hv_tune.media.write_h264`` (x264's default quality).
    """
    stored = np.rot90(frames, k=-(rotation // 90), axes=(1, 2)) if rotation else frames  # display -> stored
    times = pts_s if pts_s is not None else frame_times(len(frames), fps)
    return write_h264(path, [stored], times, crf=None, preset=None, codec=codec, rotation=rotation)


def vfr_times(slow_s: float = 2.0, slow_fps: int = 8, fast_s: float = 2.0, fast_fps: int = 48) -> list[float]:
    """Start times (s) of ``slow_s`` seconds at ``slow_fps`` followed by ``fast_s`` at ``fast_fps``."""
    slow = [i / slow_fps for i in range(round(slow_s * slow_fps))]
    return slow + [slow_s + i / fast_fps for i in range(round(fast_s * fast_fps))]


def write_exif_jpeg(path: str | Path, display: np.ndarray, orientation: int) -> Path:
    """A JPEG whose stored pixels, turned by EXIF ``orientation`` (3, 6 or 8), show ``display``."""
    from PIL import Image

    k = {1: 0, 3: 2, 6: 1, 8: -1}[orientation]  # 6: viewers turn 90 deg clockwise, so store it turned back
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(np.rot90(display, k=k))).save(path, quality=95, exif=exif)
    return Path(path)


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An ``.mp4`` with one AAC audio stream and no video."""
    import av

    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = np.zeros((1, int(rate * seconds)), np.float32)
        for i in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, i : i + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def decode_pyav(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Every stored frame ``[N, H, W, 3]``, their times in seconds, and the display rotation (PyAV)."""
    import av

    frames, times, rotation = [], [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
            rotation = int(frame.rotation or 0)
    t = np.asarray(times)
    return np.stack(frames), t - t[0], rotation
