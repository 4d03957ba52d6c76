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
