"""Deterministic bucket-aware batch order, resumable from (epoch, position).

The order of epoch ``e`` is a pure function of (seed, e, buckets, batch size, world size),
so a checkpoint only stores the epoch and how many batches of it were consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Batch = list[tuple[int, int]]  # (item index, caption index) pairs


@dataclass
class DataState:
    """Where the loader is: epoch number and batches of it already consumed by this rank."""

    epoch: int = 0
    position: int = 0


def epoch_batches(
    buckets: Sequence[tuple[int, ...]],
    num_captions: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    world_size: int = 1,
    repeats: Sequence[int] | None = None,
    caption_dropout: Sequence[float] | None = None,
) -> list[Batch]:
    """All batches of one epoch, for all ranks, in order.

    Each item appears ``repeats[i]`` times. Items are shuffled within their bucket, cut
    into batches (the last one of a bucket may be smaller), and the batches shuffled. The
    count is trimmed to a multiple of ``world_size`` so every rank takes the same number
    of steps. Each occurrence gets a caption index, or -1 (the empty prompt) with
    probability ``caption_dropout[i]``.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    repeats = repeats or [1] * len(buckets)
    by_bucket: dict[tuple[int, ...], list[int]] = {}
    for i, b in enumerate(buckets):
        by_bucket.setdefault(tuple(b), []).extend([i] * repeats[i])
    batches: list[list[int]] = []
    for key in sorted(by_bucket):
        idx = by_bucket[key]
        perm = torch.randperm(len(idx), generator=g).tolist()
        shuffled = [idx[p] for p in perm]
        batches += [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    batches = [batches[o] for o in order]
    batches = batches[: len(batches) - len(batches) % world_size]
    dropout = caption_dropout or [0.0] * len(buckets)
    flat = [i for b in batches for i in b]
    picks = torch.randint(0, 2**31 - 1, (len(flat),), generator=g).tolist()
    drops = torch.rand(len(flat), generator=g, dtype=torch.float64).tolist()
    chosen = iter([-1 if d < dropout[i] else p % num_captions[i] for i, p, d in zip(flat, picks, drops)])
    return [[(i, next(chosen)) for i in b] for b in batches]


def rank_batches(all_batches: list[Batch], rank: int, world_size: int) -> list[Batch]:
    """This rank's share of an epoch: every ``world_size``-th batch."""
    return all_batches[rank::world_size]
