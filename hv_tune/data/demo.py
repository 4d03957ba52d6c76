"""Generated demo clips: coloured shapes moving across plain backgrounds, with captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLORS = {
    "red": (1.0, -0.8, -0.8),
    "green": (-0.8, 0.9, -0.8),
    "blue": (-0.8, -0.6, 1.0),
    "yellow": (1.0, 1.0, -0.9),
    "white": (1.0, 1.0, 1.0),
}
BACKGROUNDS = {"dark": (-0.9, -0.9, -0.8), "light": (0.6, 0.6, 0.7)}
MOTIONS = {"left to right": (1, 0), "right to left": (-1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class Clip:
    """Pixels [3, F, H, W] in [-1, 1] and a caption."""

    pixels: torch.Tensor
    caption: str


def _mask(shape: str, h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    ys = torch.arange(h).view(-1, 1).float()
    xs = torch.arange(w).view(1, -1).float()
    if shape == "circle":
        return ((ys - cy) ** 2 + (xs - cx) ** 2) <= r * r
    return ((ys - cy).abs() <= r) & ((xs - cx).abs() <= r)  # square


def moving_shape(
    shape: str, color: str, background: str, motion: str, frames: int, height: int, width: int
) -> Clip:
    """One clip of a shape sliding across the frame."""
    dx, dy = MOTIONS[motion]
    r = min(height, width) / 6
    pixels = torch.empty(3, frames, height, width)
    bg = torch.tensor(BACKGROUNDS[background]).view(3, 1, 1)
    fg = torch.tensor(COLORS[color]).view(3, 1, 1)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        cx = width / 2 + dx * (t - 0.5) * (width - 2 * r)
        cy = height / 2 + dy * (t - 0.5) * (height - 2 * r)
        m = _mask(shape, height, width, cy, cx, r)
        pixels[:, f] = torch.where(m, fg, bg)
    caption = f"a {color} {shape} moves {motion} on a {background} background"
    return Clip(pixels=pixels, caption=caption)


def demo_clips(count: int, frames: int, height: int, width: int) -> list[Clip]:
    """``count`` different clips cycling through shapes, colours, motions and backgrounds."""
    shapes, colors = ["circle", "square"], list(COLORS)
    motions, bgs = list(MOTIONS), list(BACKGROUNDS)
    return [
        moving_shape(
            shapes[i % 2], colors[i % len(colors)], bgs[(i // 2) % 2], motions[i % len(motions)], frames, height, width
        )
        for i in range(count)
    ]


def write_demo_folder(folder, count: int, frames: int, height: int, width: int, fps: int = 24) -> list:
    """Write ``count`` clips as ``NAME.mp4`` + ``NAME.txt`` and one still image (+ caption).

    Returns the written media paths. This is the `folder` source layout users have.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from hv_tune.sampling import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(demo_clips(count, frames, height, width)):
        rgb = ((clip.pixels.permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        paths.append(write_video(rgb, folder / f"clip{i:03d}.mp4", fps=fps))  # [F, H, W, 3]
        (folder / f"clip{i:03d}.txt").write_text(clip.caption + "\n", encoding="utf-8")
    still = moving_shape("square", "green", "light", "up", 1, height, width)
    img = ((still.pixels[:, 0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(img)).save(folder / "still.png")
    (folder / "still.txt").write_text("a green square on a light background\n", encoding="utf-8")
    paths.append(folder / "still.png")
    return paths
