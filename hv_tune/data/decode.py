"""Reading pixels: videos with decord (by seeking, resized in the decoder), images with PIL.

Every failure raises ``MediaError`` with a short reason; the cache stage turns it into
a skipped item and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hv_tune.data.buckets import cover_size

MAX_DECODE_PIXELS = 4096 * 4096  # a frame bigger than this is refused rather than decoded


class MediaError(Exception):
    """A media file cannot be used; the message says why."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def probe_video(path: Path) -> VideoInfo:
    """Frame count, fps and size, from the container index (no full decode)."""
    import decord

    if not path.is_file():
        raise MediaError("file vanished")
    if path.stat().st_size == 0:
        raise MediaError("zero-byte file")
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=16, height=16)
        num, fps = len(vr), float(vr.get_avg_fps())
        h, w = _native_size(path)
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise MediaError(f"unreadable video: {str(e).splitlines()[0][:200]}") from e
    if num < 1 or not fps > 0:
        raise MediaError(f"video reports {num} frames at {fps} fps")
    if h * w > MAX_DECODE_PIXELS:
        raise MediaError(f"frame size {w}x{h} exceeds the {MAX_DECODE_PIXELS}-pixel decode bound")
    return VideoInfo(num, fps, h, w)


def _native_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.height, s.codec_context.width


def read_video(path: Path, indices: list[int], info: VideoInfo, bucket: tuple[int, int]) -> np.ndarray:
    """Frames ``indices`` (decoded by seeking), resized to cover ``bucket`` and centre-cropped.

    Large sources are downscaled inside the decoder (bounded memory); decord's resize needs a
    width that is a multiple of 32, so the exact size is reached with a final PIL resize.

    Returns:
        uint8 array [F, bucket_h, bucket_w, 3].
    """
    import decord

    if not path.is_file():
        raise MediaError("file vanished")
    size = decoder_size(info, bucket)
    kw = {"width": size[1], "height": size[0]} if size else {}
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), **kw)
        frames = vr.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError, ValueError, IndexError) as e:
        raise MediaError(f"decode failed: {str(e).splitlines()[0][:200]}") from e
    if frames.shape[0] != len(indices):
        raise MediaError(f"decoder returned {frames.shape[0]} of {len(indices)} frames (truncated file?)")
    return np.concatenate([resize_cover(f, bucket) for f in frames])


def decoder_size(info: VideoInfo, bucket: tuple[int, int]) -> tuple[int, int] | None:
    """(height, width) to decode at, or None for the native size.

    decord fails on output widths that are not a multiple of 32 ("size must exactly
    match"), so such sources are scaled in the decoder to the next multiple of 32. Large
    sources are downscaled in the decoder to about the cover size, which bounds memory.
    """
    ch, cw = cover_size(info.height, info.width, bucket)
    small = 2 * ch * cw >= info.height * info.width
    if small and info.width % 32 == 0:
        return None
    w = -(-(info.width if small else cw) // 32) * 32
    h = max(ch, round(w * info.height / info.width / 2) * 2)
    return h, w


def read_image(path: Path) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3], whatever its mode (CMYK, alpha, 16-bit, palette)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return image_to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(f"unreadable image: {e}") from e


def image_to_rgb(im) -> np.ndarray:
    """uint8 RGB pixels; alpha is composited on white, 16-bit is scaled, not clipped."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def resize_cover(frame: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Resize one uint8 [H, W, 3] frame (bicubic, antialiased) to cover ``bucket``, then crop."""
    from PIL import Image

    h, w = cover_size(frame.shape[0], frame.shape[1], bucket)
    resized = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
    return center_crop(resized[None], bucket)


def center_crop(frames: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """[F, H, W, C] -> [F, bh, bw, C] around the centre."""
    bh, bw = bucket
    top = (frames.shape[1] - bh) // 2
    left = (frames.shape[2] - bw) // 2
    return frames[:, top : top + bh, left : left + bw]


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [3, F, H, W] in [-1, 1] (what the VAE encodes)."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) / 127.5 - 1.0  # copy: decoders return read-only
    return x.permute(3, 0, 1, 2)  # [F, H, W, C] -> [C, F, H, W]
