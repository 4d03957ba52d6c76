"""Batch order: deterministic, one bucket per batch, split across ranks, resumable."""

from __future__ import annotations

from hv_tune.data.sampler import epoch_batches, rank_batches

BUCKETS = [(5, 32, 32)] * 5 + [(1, 32, 32)] * 4 + [(5, 32, 48)] * 3


def test_deterministic_and_epoch_dependent():
    a = epoch_batches(BUCKETS, [1] * 12, 2, seed=7, epoch=0)
    assert a == epoch_batches(BUCKETS, [1] * 12, 2, seed=7, epoch=0)
    assert a != epoch_batches(BUCKETS, [1] * 12, 2, seed=7, epoch=1)
    assert a != epoch_batches(BUCKETS, [1] * 12, 2, seed=8, epoch=0)


def test_every_item_once_and_buckets_never_mix():
    batches = epoch_batches(BUCKETS, [1] * 12, 2, seed=0, epoch=3)
    items = sorted(i for b in batches for i, _ in b)
    assert items == list(range(12))
    for b in batches:
        assert len({BUCKETS[i] for i, _ in b}) == 1
        assert 1 <= len(b) <= 2


def test_caption_choice_varies_by_epoch_and_stays_in_range():
    caps = [3] * 12
    chosen = {tuple(c for b in epoch_batches(BUCKETS, caps, 1, 0, e) for _, c in b) for e in range(6)}
    assert len(chosen) > 1
    assert all(0 <= c < 3 for t in chosen for c in t)


def test_ranks_get_disjoint_equal_shares():
    batches = epoch_batches(BUCKETS, [1] * 12, 2, seed=0, epoch=0, world_size=2)
    assert len(batches) % 2 == 0
    r0, r1 = rank_batches(batches, 0, 2), rank_batches(batches, 1, 2)
    assert len(r0) == len(r1)
    assert not {i for b in r0 for i, _ in b} & {i for b in r1 for i, _ in b}
