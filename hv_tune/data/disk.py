"""What a cache takes on disk, from the cache format's shapes, before anything is encoded.

Per item the cache (``hv_tune.data.cache``) stores one file per declared group: the VAE posterior
(``latent_mean`` and ``latent_logvar``, float32, [C, F', H', W'] each), one text file per caption (the
spec's text fields, in the text encoder's dtype; masks int64) and, for specs with condition
encoders, their group (float32). safetensors adds a small JSON header per file (``HEADER_BYTES``, an estimate).
With a built cache the index's own files are summed instead; with a ``summary.json`` of an earlier
build, its encode time per item gives the time for the rest.

Pure arithmetic on shapes: no model, no ``hv_tune.memory`` import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hv_tune.data.cache import INDEX_FILE, item_files, read_groups, read_index

#: tensors of the latents group per item: the VAE posterior's mean and log-variance (``models.base.latents_group``)
POSTERIOR_TENSORS = 2

#: safetensors' header per file (JSON names, dtypes, shapes, offsets): about this for a few tensors
HEADER_BYTES = 256
GB = 1e9


@dataclass
class CacheDisk:
    """Bytes a cache takes on disk (``items`` None: per item only, the sources are not counted)."""

    latent: int  # per item at ``bucket``
    text: int  # per caption
    condition: int  # per item (specs with item encoders; else 0)
    bucket: tuple[int, int, int]
    items: int | None = None
    total: int | None = None  # all items (an upper bound at ``bucket`` unless ``measured``)
    measured: bool = False  # total summed from a built cache's files
    encode_s: float | None = None  # predicted encode time of ``items`` from a previous build's summary

    @property
    def per_item(self) -> int:
        return self.latent + self.text + self.condition

    def lines(self) -> list[str]:
        """The estimate as text lines for the plan."""
        f, h, w = self.bucket
        head = (f"cache on disk: {_size(self.per_item)} per item at {f}x{h}x{w} (latent {_size(self.latent)}, "
                f"text {_size(self.text)}" + (f", first-frame condition {_size(self.condition)}" if self.condition else "")
                + ")")
        if self.items is None:
            return [head + "; no data.sources set: multiply by your items"]
        what = "measured from the cache's files" if self.measured else "at most, every item at the largest bucket"
        line = f"{head}; {self.items} items: {_size(self.total or 0)} ({what})"
        if self.encode_s is not None:
            line += f"; encoding ~{self.encode_s / 60:.1f} min on this machine (previous build's time per item)"
        return [line]


def tensor_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of one stored tensor of ``shape`` and element size ``itemsize``."""
    return math.prod(shape) * itemsize


def item_bytes(latent_shape: Sequence[int], text: Mapping[str, tuple[Sequence[int], int]],
               condition: Mapping[str, tuple[Sequence[int], int]]) -> tuple[int, int, int]:
    """(latent, text, condition) bytes of one item's files.

    Args:
        latent_shape: [C, F', H', W'] of the item's latents (stored twice, mean and log-variance, float32).
        text: field -> (shape without batch, element size) of one caption's text file.
        condition: field -> (shape without batch, element size) of the condition file; empty for none.
    """
    latent = POSTERIOR_TENSORS * tensor_bytes(latent_shape, 4) + HEADER_BYTES
    txt = sum(tensor_bytes(s, n) for s, n in text.values()) + HEADER_BYTES
    cond = sum(tensor_bytes(s, n) for s, n in condition.values()) + HEADER_BYTES if condition else 0
    return latent, txt, cond


def cache_disk(bucket: tuple[int, int, int], sizes: tuple[int, int, int], items: int | None,
               cache_dir: str | Path) -> CacheDisk:
    """The cache's disk size: from a built cache's files when ``cache_dir`` has an index, else
    ``items`` times the per-item ``sizes`` (``item_bytes``) at ``bucket`` (an upper bound).

    The encode time comes from ``cache_dir``'s ``summary.json`` when an earlier build encoded latents
    (its seconds per encoded latent, text and VAE together), times ``items``.
    """
    out = CacheDisk(*sizes, bucket=bucket, items=items)
    root = Path(cache_dir)
    if (root / INDEX_FILE).is_file():
        entries, groups = read_index(root), read_groups(root)
        files = {rel for e in entries for rel, _ in item_files(e, groups)}
        out.items, out.measured = len(entries), True
        out.total = sum((root / rel).stat().st_size for rel in files if (root / rel).is_file())
    elif items is not None:
        out.total = items * (out.latent + out.text + out.condition)
    out.encode_s = _encode_seconds(root, out.items)
    return out


def _encode_seconds(root: Path, items: int | None) -> float | None:
    try:
        summary = json.loads((root / "summary.json").read_text())
        per_item = float(summary["seconds"]) / int(summary["latents_encoded"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return per_item * items if items else None


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.2f} MB"
