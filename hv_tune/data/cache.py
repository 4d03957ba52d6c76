"""The training cache: VAE posteriors and text embeddings in safetensors, plus an index.

Layout (``docs/formats.md`` has the full description)::

    CACHE_DIR/index.jsonl            one JSON line per item (written atomically, last)
    CACHE_DIR/latents/<key>.safetensors   latent_mean, latent_logvar  [C, F', H', W'] fp32
    CACHE_DIR/text/<key>.safetensors      prompt_embeds [L, D], prompt_attention_mask [L], and the
                                          spec's other ``text_fields`` (v1: pooled_prompt_embeds [D2])
    CACHE_DIR/cond/<key>.safetensors      specs with item encoders: their fields, built from the
                                          item's first frame (1.5 I2V: cond_latents, cond_mask, image_embeds)

Training reads only this folder. An item's bucket is its pixel size (frames, height, width);
batches never mix buckets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from hv_tune.errors import DataError
from hv_tune.io import atomic_save_safetensors, atomic_write_text, safetensors_problem

CACHE_VERSION = 1
INDEX_FILE = "index.jsonl"
LATENT_KEYS = ("latent_mean", "latent_logvar")
#: keys every family's text file holds; a file holds whatever else its spec's ``encode_text`` returns
TEXT_KEYS = ("prompt_embeds", "prompt_attention_mask")


@dataclass
class CacheEntry:
    """One cached training item; paths are relative to the cache folder."""

    id: str
    latent: str
    texts: list[str]
    frames: int
    height: int
    width: int
    captions: list[str]
    repeats: int = 1
    caption_dropout: float = 0.0
    empty_text: str | None = None  # embedding of "" with this item's template (caption dropout)
    source: str = ""  # the media file it was encoded from (named when a cache file is broken)
    condition: str | None = None  # the item encoders' fields (spec.item_encoders), one file

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def content_key(*parts: object) -> str:
    """A stable short hash of the things a cached tensor depends on."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def is_valid(path: Path, keys: tuple[str, ...]) -> bool:
    """True if ``path`` is a complete safetensors file holding ``keys`` (header and size check)."""
    return safetensors_problem(path, keys) is None


def write_latent(cache_dir: Path, key: str, posterior: dict[str, torch.Tensor]) -> str:
    rel = f"latents/{key}.safetensors"
    atomic_save_safetensors(cache_dir / rel, {k: posterior[k] for k in LATENT_KEYS})
    return rel


def write_text(cache_dir: Path, key: str, text: dict[str, torch.Tensor]) -> str:
    rel = f"text/{key}.safetensors"
    atomic_save_safetensors(cache_dir / rel, dict(text))
    return rel


def write_condition(cache_dir: Path, key: str, tensors: dict[str, torch.Tensor]) -> str:
    rel = f"cond/{key}.safetensors"
    atomic_save_safetensors(cache_dir / rel, dict(tensors))
    return rel


def write_index(cache_dir: Path, entries: Iterable[CacheEntry], fingerprint: dict | None = None) -> Path:
    """Write the index (header line, then one line per item); an empty list is a valid, empty cache."""
    head = {"cache_version": CACHE_VERSION} | ({"fingerprint": fingerprint} if fingerprint else {})
    lines = [json.dumps(head, ensure_ascii=False)] + [json.dumps(asdict(e), ensure_ascii=False) for e in entries]
    return atomic_write_text(Path(cache_dir) / INDEX_FILE, "\n".join(lines) + "\n")


def read_header(cache_dir: str | Path) -> dict | None:
    """The index's header line (cache version, fingerprint), or None without a readable index."""
    try:
        with open(Path(cache_dir) / INDEX_FILE, encoding="utf-8") as fh:
            head = json.loads(fh.readline() or "null")
    except (OSError, ValueError):
        return None
    return head if isinstance(head, dict) else None


def _skip_reasons(cache_dir: Path) -> str:
    try:
        skipped = json.loads((cache_dir / "summary.json").read_text(encoding="utf-8")).get("skipped", [])
    except (OSError, ValueError):
        skipped = []
    if not skipped:
        return "no source item was found"
    listed = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:10])
    more = f" (and {len(skipped) - 10} more in {cache_dir / 'summary.json'})" if len(skipped) > 10 else ""
    return f"all {len(skipped)} source items were skipped: {listed}{more}"


def read_index(cache_dir: str | Path) -> list[CacheEntry]:
    """Entries of a cache folder.

    Raises:
        DataError: naming the folder or file when the cache is missing, empty or malformed.
    """
    path = Path(cache_dir) / INDEX_FILE
    if not path.is_file():
        raise DataError(
            f"no training cache at {cache_dir} ({INDEX_FILE} missing) and no data.sources to build it from; "
            "set data.sources (then `finetune.py cache` or `train` builds it) or point data.cache_dir at a cache"
        )
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    try:
        header = json.loads(lines[0]) if lines else {}
        if header.get("cache_version") != CACHE_VERSION:
            raise DataError(f"{path}: cache version {header.get('cache_version')} != {CACHE_VERSION}; re-run `cache`")
        entries = [CacheEntry(**json.loads(ln)) for ln in lines[1:]]
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{path} is malformed ({e}); delete it and re-run `cache`") from e
    if not entries:
        raise DataError(f"the cache {cache_dir} has no items: {_skip_reasons(Path(cache_dir))}; "
                        "fix or add data.sources and re-run `finetune.py cache`")
    return entries


def item_files(e: CacheEntry) -> list[tuple[str, tuple[str, ...]]]:
    """(relative path, expected keys) of every file an item reads."""
    texts = e.texts + ([e.empty_text] if e.empty_text else [])
    cond = [(e.condition, ())] if e.condition else []
    return [(e.latent, LATENT_KEYS)] + [(t, TEXT_KEYS) for t in texts] + cond


def broken_files(cache_dir: str | Path, entries: list[CacheEntry], full: bool = False) -> list[tuple[CacheEntry, str, str]]:
    """(item, file, problem) for each unreadable cache file.

    The quick check reads headers and sizes (catches missing, emptied, truncated files);
    ``full`` also loads every tensor and checks it is finite.
    """
    root, seen, out = Path(cache_dir), set(), []
    for e in entries:
        for rel, keys in item_files(e):
            if rel in seen:
                continue
            seen.add(rel)
            problem = safetensors_problem(root / rel, keys)
            if problem is None and full:
                problem = _load_problem(root / rel)
            if problem:
                out.append((e, rel, problem))
    return out


def _load_problem(path: Path) -> str | None:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # any damage the header check missed
        return f"cannot be loaded ({e})"
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    return f"non-finite values in {bad}" if bad else None


def describe_broken(cache_dir: str | Path, e: CacheEntry, rel: str, problem: str) -> str:
    src = f"source {e.source}" if e.source else "source unknown (cache written without it)"
    return f"item {e.id}: cache file {Path(cache_dir) / rel} is broken ({problem}); {src}"


class CachedDataset(torch.utils.data.Dataset):
    """Items of a cache folder; indexed by ``(item, caption)`` pairs chosen by the sampler."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        self.entries = read_index(self.root)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, torch.Tensor]:
        """``(item, caption)``; caption -1 means the empty prompt (caption dropout)."""
        item, caption = index
        e = self.entries[item]
        text = e.empty_text if caption < 0 else e.texts[caption]
        out = {**self._load(e, e.latent, LATENT_KEYS), **self._load(e, text, TEXT_KEYS, every=True)}
        if e.condition:  # the first-frame condition stays under caption dropout (the pipeline keeps it)
            out.update(self._load(e, e.condition, (), every=True))
        out["index"] = torch.tensor(item)
        return out

    def _load(self, e: CacheEntry, rel: str, keys: tuple[str, ...], every: bool = False) -> dict[str, torch.Tensor]:
        """``keys`` of one file (``every``: all its tensors, which must include ``keys``)."""
        path = self.root / rel
        try:
            tensors = load_file(str(path))
            missing = [k for k in keys if k not in tensors]
            if missing:
                raise ValueError(f"lacks {missing}")
        except Exception as err:  # missing, truncated or damaged (safetensors raises its own error type)
            raise DataError(
                f"{describe_broken(self.root, e, rel, str(err))}; re-encode it with "
                "`finetune.py cache --config YOUR_CONFIG` (with that source in data.sources)"
            ) from err
        return dict(tensors) if every else {k: tensors[k] for k in keys}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items of one bucket into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
