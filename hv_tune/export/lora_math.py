"""Pure LoRA key math: the update of one layer, alpha folding, fusing and un-fusing.

A LoRA module is ``delta W = (alpha / rank) * up @ down`` with ``down`` (PEFT's
``lora_A``, kohya's ``lora_down``) ``[r, in]`` and ``up`` (``lora_B`` / ``lora_up``)
``[out, r]``. An original-checkpoint layer such as HunyuanVideo's ``img_attn_qkv`` is
the row-wise concatenation of several diffusers layers, so its LoRA is a "fused" one:

- *shared down*: one ``down`` for every part and the parts' ``up`` rows stacked. This is
  how a LoRA trained on the fused layer looks (kohya / musubi) and how diffusers'
  converter reads the original format.
- *block-diagonal*: separate LoRAs of the parts, fused exactly: the ``down`` matrices are
  concatenated (rank ``sum(r_i)``) and ``up`` is block-diagonal.

Nothing here knows key names; ``hv_tune.export.formats`` does that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class LoraModule:
    """One low-rank update ``delta W = (alpha / rank) * up @ down`` of a linear layer."""

    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def delta_weight(m: LoraModule) -> torch.Tensor:
    """``(alpha / rank) * up @ down`` in float32, ``[out, in]``."""
    return (m.up.float() @ m.down.float()) * m.scale


def fold_scale(m: LoraModule) -> LoraModule:
    """The same update with ``alpha / rank`` multiplied into ``up`` (so alpha == rank).

    Formats without an alpha (ComfyUI's lora_A/lora_B files, read by diffusers as scale 1)
    need this. The product is taken in float32 and stored in ``up``'s dtype.
    """
    up = (m.up.float() * m.scale).to(m.up.dtype)
    return LoraModule(m.down, up, float(m.rank))


def _shares_down(pieces: Sequence[LoraModule]) -> bool:
    first = pieces[0]
    return all(
        p.rank == first.rank and p.alpha == first.alpha and (p.down is first.down or torch.equal(p.down, first.down))
        for p in pieces
    )


def fuse(pieces: Sequence[LoraModule | None], out_sizes: Sequence[int]) -> tuple[LoraModule, list[int] | None]:
    """One LoRA for the row-wise concatenation of layers that each had their own (or none).

    Args:
        pieces: the LoRA of each part in row order; None for a part without one (its rows
            of ``up`` are zero, e.g. the mlp rows of a single block's ``linear1`` for a q/k/v LoRA).
        out_sizes: output rows of each part.

    Returns:
        The fused module and, for the block-diagonal layout, the rank of each part (0 for
        a missing part); None when the parts already share one ``down`` (kept as is).

    Raises:
        ValueError: if no part has a LoRA or their input sizes differ.
    """
    present = [p for p in pieces if p is not None]
    if not present:
        raise ValueError("nothing to fuse: no part has a LoRA")
    if len({p.down.shape[1] for p in present}) > 1:
        raise ValueError(f"parts have different input sizes: {[tuple(p.down.shape) for p in present]}")
    first = present[0]
    if _shares_down(present):
        ups = [p.up if p is not None else first.up.new_zeros(n, first.rank) for p, n in zip(pieces, out_sizes)]
        return LoraModule(first.down, torch.cat(ups), first.alpha), None  # up: [sum(out), r]
    same_scale = all(p.scale == first.scale for p in present)
    if not same_scale:
        pieces = [fold_scale(p) if p is not None else None for p in pieces]
    ranks = [p.rank if p is not None else 0 for p in pieces]
    total = sum(ranks)
    down = torch.cat([p.down for p in pieces if p is not None])  # [R, in]
    up = first.up.new_zeros(sum(out_sizes), total)  # [sum(out), R], block-diagonal
    row = col = 0
    for p, n, r in zip(pieces, out_sizes, ranks):
        if p is not None:
            up[row : row + n, col : col + r] = p.up
        row, col = row + n, col + r
    # keep alpha / rank: alpha_fused / R == alpha_i / r_i (multiply first: exact for integral ratios)
    alpha = first.alpha * total / first.rank if same_scale else float(total)
    return LoraModule(down, up, alpha), ranks


def _is_block_diagonal(ups: Sequence[torch.Tensor], ranks: Sequence[int]) -> bool:
    col = 0
    for u, r in zip(ups, ranks):
        if u[:, :col].any() or u[:, col + r :].any():
            return False
        col += r
    return True


def unfuse(m: LoraModule, out_sizes: Sequence[int], ranks: Sequence[int] | None = None) -> list[LoraModule | None]:
    """Split a fused LoRA into one LoRA per part (the inverse of ``fuse``).

    Args:
        m: the fused module, ``up`` ``[sum(out_sizes), R]``.
        out_sizes: output rows of each part.
        ranks: per-part ranks of a block-diagonal layout (recorded when we fused it); used
            only if ``up`` really is block-diagonal with those ranks.

    Returns:
        One module per part, None for a part whose rows of ``up`` are all zero while another
        part's are not (padding). Shared-down parts all reference ``m.down``.

    Raises:
        ValueError: if ``up``'s rows do not add up to ``sum(out_sizes)``.
    """
    if m.up.shape[0] != sum(out_sizes):
        raise ValueError(f"up has {m.up.shape[0]} rows, the layer has {sum(out_sizes)} ({list(out_sizes)})")
    ups = m.up.split(list(out_sizes))  # [out_i, R] each
    if ranks is not None and sum(ranks) == m.rank and _is_block_diagonal(ups, ranks):
        downs = m.down.split(list(ranks))  # [r_i, in] each
        out: list[LoraModule | None] = []
        col = 0
        for u, d, r in zip(ups, downs, ranks):
            out.append(LoraModule(d, u[:, col : col + r].clone(), m.alpha * r / m.rank) if r else None)
            col += r
        return out
    nonzero = [bool(u.any()) for u in ups]
    keep = nonzero if any(nonzero) else [True] * len(ups)
    return [LoraModule(m.down, u.clone(), m.alpha) if k else None for u, k in zip(ups, keep)]
