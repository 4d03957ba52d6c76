"""Still images: upright (EXIF Orientation applied) uint8 RGB, whatever the file's mode.

Alpha is composited on white, 16-bit samples are scaled (not clipped) to 8 bits, palette,
CMYK and gray images become RGB. Curation and the cache both read images through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hv_tune.media.errors import MediaError

# EXIF Orientation values that swap width and height (5-8: transposed or turned 90 degrees)
_SWAPS_SIDES = {5, 6, 7, 8}


def read_image(path: str | Path) -> np.ndarray:
    """An image as upright uint8 RGB ``[H, W, 3]`` (display size).

    Raises:
        MediaError: when the file is not an image PIL can decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return image_to_rgb(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"unreadable image: {' '.join(str(e).split())[:200]}") from e


def image_size(path: str | Path) -> tuple[int, int]:
    """Display ``(width, height)`` of an image (EXIF rotation applied), from its header only.

    Raises:
        MediaError: when the file is not an image PIL can open.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in _SWAPS_SIDES  # 0x0112: EXIF Orientation
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"unreadable image: {' '.join(str(e).split())[:200]}") from e
    return (h, w) if turned else (w, h)


def image_to_rgb(im) -> np.ndarray:
    """uint8 RGB pixels of a PIL image; alpha is composited on white, 16-bit is scaled, not clipped."""
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


def resize_to(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize one uint8 ``[H, W, 3]`` frame to ``width x height`` (bicubic, antialiased)."""
    from PIL import Image

    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))
