"""Pixels for the cache: videos and images through ``hv_tune.media``, resized to a bucket.

``hv_tune.media`` decides what a file contains (display size after rotation or EXIF
orientation, frame timestamps, decoded frames), the same way for curation and the cache.
Every failure raises ``MediaError`` with a short reason; the cache stage turns it into
a skipped item and goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hv_tune.data.buckets import cover_size
from hv_tune.media import MediaError, VideoFrames, VideoProbe, image_to_rgb, read_image
from hv_tune.media import probe_video as _probe

__all__ = ["MediaError", "VideoInfo", "center_crop", "decoder_size", "image_to_rgb", "probe_video",
           "read_image", "read_video", "resize_cover", "to_pixels"]

MAX_DECODE_PIXELS = 4096 * 4096  # a frame bigger than this is refused rather than decoded

VideoInfo = VideoProbe  # frame count, average fps, display size, timestamps (hv_tune.media)


def probe_video(path: Path) -> VideoInfo:
    """Frame count, timestamps and display size, from the container index (no full decode)."""
    if not path.is_file():
        raise MediaError("file vanished")
    if path.stat().st_size == 0:
        raise MediaError("zero-byte file")
    try:
        info = _probe(path)
    except MediaError as e:
        raise MediaError(f"unreadable video: {e}") from e
    if info.height * info.width > MAX_DECODE_PIXELS:
        raise MediaError(f"frame size {info.width}x{info.height} exceeds the {MAX_DECODE_PIXELS}-pixel decode bound")
    return info


def read_video(path: Path, indices: list[int], info: VideoInfo, bucket: tuple[int, int]) -> np.ndarray:
    """Frames ``indices`` (decoded by seeking, upright), resized to cover ``bucket`` and centre-cropped.

    Large sources are downscaled inside the decoder (bounded memory); the exact size is reached
    with a final PIL resize (bicubic, antialiased).

    Returns:
        uint8 array [F, bucket_h, bucket_w, 3].
    """
    if not path.is_file():
        raise MediaError("file vanished")
    size = decoder_size(info, bucket)
    frames = VideoFrames(path, info, size=(size[1], size[0]) if size else None).get(indices)
    return np.concatenate([resize_cover(f, bucket) for f in frames])


def decoder_size(info: VideoInfo, bucket: tuple[int, int]) -> tuple[int, int] | None:
    """(height, width) to decode at, or None for the native size.

    Sources up to twice the cover size in pixels decode at their own size (PIL makes the
    cover size); larger ones are downscaled in the decoder to the cover size, which bounds
    memory.
    """
    ch, cw = cover_size(info.height, info.width, bucket)
    if 2 * ch * cw >= info.height * info.width:
        return None
    return ch, cw


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
