"""Generated sample videos (moving shapes, a static shot, a hard cut), written with PyAV.

Used by the demo (``python -m curation samples DIR``) and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hv_tune.media.writer import frame_times, write_h264

COLORS = [(230, 40, 40), (40, 200, 60), (50, 80, 240), (240, 220, 40), (240, 240, 240)]
BACKGROUNDS = [(20, 20, 30), (150, 150, 170), (90, 40, 20), (10, 70, 90)]


def moving_shape(frames: int, height: int, width: int, color: int = 0, background: int = 0,
                 speed: float = 1.0, square: bool = False, texture_seed: int | None = None) -> np.ndarray:
    """A shape crossing the frame: ``[F, H, W, 3]`` uint8. ``speed=0`` gives a static shot.

    ``texture_seed`` adds a fixed noise texture to the background (distinct scenes for cut tests).
    """
    bg = np.empty((height, width, 3), np.float32)
    bg[:] = BACKGROUNDS[background % len(BACKGROUNDS)]
    if texture_seed is not None:
        noise = np.random.default_rng(texture_seed).integers(-60, 60, (height // 8 + 1, width // 8 + 1, 3))
        bg += np.kron(noise, np.ones((8, 8, 1)))[:height, :width]
    ys, xs = np.mgrid[0:height, 0:width]
    r = min(height, width) / 5
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        t = (f / max(frames - 1, 1) - 0.5) * speed
        cx, cy = width / 2 + t * (width - 2 * r), height / 2 + 0.3 * t * (height - 2 * r)
        mask = (np.abs(ys - cy) <= r) & (np.abs(xs - cx) <= r) if square else (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
        img = bg.copy()
        img[mask] = COLORS[color % len(COLORS)]
        out[f] = img.clip(0, 255)
    return out


def write_video(path: str | Path, frames: np.ndarray, fps: float = 24, pts_ms: Sequence[int] | None = None,
                codec: str = "libx264", options: dict[str, str] | None = None) -> Path:
    """Encode ``[F, H, W, 3]`` uint8 frames with ``hv_tune.media.write_h264`` (x264's default quality).

    ``pts_ms`` gives variable frame timing in milliseconds; ``options`` are encoder options (e.g.
    ``{"preset": "ultrafast"}`` or ``{"b": "2M"}``); ``codec`` another encoder for test inputs.
    """
    times = np.asarray(pts_ms, np.float64) / 1000 if pts_ms is not None else frame_times(len(frames), fps)
    return write_h264(path, [frames], times, crf=None, preset=None, codec=codec, options=options)


def write_samples(out: str | Path, fps: int = 12, seconds: float = 3.0, height: int = 64, width: int = 96) -> list[Path]:
    """The demo's input folder: two moving shapes, a static shot, a video with a hard cut, an image."""
    from PIL import Image

    out = Path(out)
    n = int(fps * seconds)
    a = moving_shape(n, height, width, color=0, background=0, texture_seed=1)
    b = moving_shape(n, height, width, color=2, background=1, square=True, speed=-1.0, texture_seed=2)
    paths = [
        write_video(out / "red_circle.mp4", a, fps),
        write_video(out / "blue_square.mp4", b, fps),
        write_video(out / "static_shot.mp4", moving_shape(n, height, width, color=3, background=2, speed=0.0), fps),
        write_video(out / "with_cut.mp4", np.concatenate([a, b]), fps),
    ]
    img = moving_shape(1, height * 2, width * 2, color=1, background=3, texture_seed=3)[0]
    Image.fromarray(img).save(out / "still.png")
    return [*paths, out / "still.png"]
