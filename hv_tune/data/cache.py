"""The training cache: VAE posteriors and text embeddings in safetensors, plus an index.

Layout (``docs/formats.md`` has the full description)::

    CACHE_DIR/index.jsonl            one JSON line per item (written atomically, last)
    CACHE_DIR/latents/<key>.safetensors   latent_mean, latent_logvar  [C, F', H', W'] fp32
    CACHE_DIR/text/<key>.safetensors      prompt_embeds [L, D], prompt_attention_mask [L],
                                          pooled_prompt_embeds [D2]

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
from hv_tune.io import atomic_save_safetensors, atomic_write_text

CACHE_VERSION = 1
INDEX_FILE = "index.jsonl"
LATENT_KEYS = ("latent_mean", "latent_logvar")
TEXT_KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")


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

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def content_key(*parts: object) -> str:
    """A stable short hash of the things a cached tensor depends on."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def is_valid(path: Path, keys: tuple[str, ...]) -> bool:
    """True if ``path`` is a readable safetensors file holding ``keys`` (header check only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(keys) <= set(f.keys())
    except Exception:  # missing, truncated or not safetensors: re-encode
        return False


def write_latent(cache_dir: Path, key: str, posterior: dict[str, torch.Tensor]) -> str:
    rel = f"latents/{key}.safetensors"
    atomic_save_safetensors(cache_dir / rel, {k: posterior[k] for k in LATENT_KEYS})
    return rel


def write_text(cache_dir: Path, key: str, text: dict[str, torch.Tensor]) -> str:
    rel = f"text/{key}.safetensors"
    atomic_save_safetensors(cache_dir / rel, {k: text[k] for k in TEXT_KEYS})
    return rel


def write_index(cache_dir: Path, entries: Iterable[CacheEntry]) -> Path:
    header = json.dumps({"cache_version": CACHE_VERSION})
    lines = [header] + [json.dumps(asdict(e), ensure_ascii=False) for e in entries]
    return atomic_write_text(Path(cache_dir) / INDEX_FILE, "\n".join(lines) + "\n")


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
        raise DataError(f"{path} lists no items; check the data sources and re-run `cache`")
    return entries


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
        out = {**self._load(e.latent, LATENT_KEYS), **self._load(text, TEXT_KEYS)}
        out["index"] = torch.tensor(item)
        return out

    def _load(self, rel: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        path = self.root / rel
        try:
            tensors = load_file(str(path))
        except (OSError, RuntimeError) as e:  # missing or truncated file
            raise DataError(f"cannot read cache file {path}: {e}; re-run `cache` to rebuild it") from e
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise DataError(f"cache file {path} lacks {missing}; re-run `cache` to rebuild it")
        return {k: tensors[k] for k in keys}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items of one bucket into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
