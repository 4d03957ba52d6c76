"""The training cache: one group of safetensors files per item encoder the spec declares, plus an index.

Layout (``docs/formats.md`` has the full description)::

    CACHE_DIR/index.jsonl               one JSON line per item (written atomically, last); the header
                                        line names the cache version and every group with its fields
    CACHE_DIR/<group>/<key>.safetensors one file per item and group (per caption, plus the empty
                                        prompt's, for a ``text`` group): the fields of the spec's item
                                        encoder of that name (``ModelSpec.item_encoders``)

This module owns every path; it knows no group by name. Training reads only this folder: a batch is
the union of an item's groups. An item's bucket is its pixel size (frames, height, width); batches
never mix buckets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from hv_tune.errors import DataError
from hv_tune.io import atomic_save_safetensors, atomic_write_text, safetensors_problem

#: 2: one folder per declared item encoder (1 had fixed latents/, text/ and cond/ folders)
CACHE_VERSION = 2
INDEX_FILE = "index.jsonl"
#: what to do about a cache this version cannot read
REBUILD = "rebuild it with `finetune.py cache --config YOUR_CONFIG` (files whose inputs did not change are reused)"


@dataclass(frozen=True)
class Group:
    """A group as the index header records it: its fields and whether it has one file per caption."""

    fields: tuple[str, ...]
    per_caption: bool = False


@dataclass
class CacheEntry:
    """One cached training item; paths are relative to the cache folder.

    Attributes:
        files: group -> the item's file of that group (per-item groups).
        caption_files: group -> one file per caption, in ``captions``' order (``text`` groups).
        empty_files: group -> the empty prompt's file with this item's template (caption dropout).
    """

    id: str
    frames: int
    height: int
    width: int
    captions: list[str]
    files: dict[str, str] = field(default_factory=dict)
    caption_files: dict[str, list[str]] = field(default_factory=dict)
    empty_files: dict[str, str] = field(default_factory=dict)
    repeats: int = 1
    caption_dropout: float = 0.0
    source: str = ""  # the media file it was encoded from (named when a cache file is broken)

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def group_path(group: str, key: str) -> str:
    """The relative path of a group's file with content key ``key``."""
    return f"{group}/{key}.safetensors"


def content_key(*parts: object) -> str:
    """A stable short hash of the things a cached tensor depends on."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def is_valid(path: Path, keys: tuple[str, ...]) -> bool:
    """True if ``path`` is a complete safetensors file holding ``keys`` (header and size check)."""
    return safetensors_problem(path, keys) is None


def write_group(cache_dir: Path, group: str, key: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """Write one group file atomically; returns its relative path."""
    rel = group_path(group, key)
    atomic_save_safetensors(Path(cache_dir) / rel, dict(tensors))
    return rel


def write_index(cache_dir: Path, entries: Iterable[CacheEntry], groups: Mapping[str, Group],
                fingerprint: dict | None = None) -> Path:
    """Write the index (header line, then one line per item); an empty list is a valid, empty cache."""
    head = {"cache_version": CACHE_VERSION, "groups": {k: asdict(g) for k, g in groups.items()}}
    head |= {"fingerprint": fingerprint} if fingerprint else {}
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


def check_version(path: Path, header: Mapping) -> None:
    """Raises DataError naming ``path`` and the rebuild when its header is not this version's."""
    version = header.get("cache_version")
    if version != CACHE_VERSION:
        raise DataError(f"{path}: the cache is in format {version}, this hv-tune reads format {CACHE_VERSION} "
                        f"(one folder per item encoder of the model); {REBUILD}")


def read_groups(cache_dir: str | Path) -> dict[str, Group]:
    """The groups the index header records (name -> fields, per caption); {} without a readable header."""
    head = read_header(cache_dir) or {}
    try:
        return {k: Group(tuple(g["fields"]), bool(g.get("per_caption"))) for k, g in (head.get("groups") or {}).items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{Path(cache_dir) / INDEX_FILE}: its header's groups are malformed ({e!r}); {REBUILD}") from e


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
        check_version(path, header)
        entries = [CacheEntry(**json.loads(ln)) for ln in lines[1:]]
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{path} is malformed ({e}); delete it and re-run `cache`") from e
    if not entries:
        raise DataError(f"the cache {cache_dir} has no items: {_skip_reasons(Path(cache_dir))}; "
                        "fix or add data.sources and re-run `finetune.py cache`")
    return entries


def item_files(e: CacheEntry, groups: Mapping[str, Group]) -> list[tuple[str, tuple[str, ...]]]:
    """(relative path, expected keys) of every file an item reads."""
    out = [(rel, groups[g].fields if g in groups else ()) for g, rel in e.files.items()]
    for g, rels in e.caption_files.items():
        empty = [e.empty_files[g]] if g in e.empty_files else []
        out += [(rel, groups[g].fields if g in groups else ()) for rel in rels + empty]
    return out


def broken_files(cache_dir: str | Path, entries: list[CacheEntry], full: bool = False) -> list[tuple[CacheEntry, str, str]]:
    """(item, file, problem) for each unreadable cache file.

    The quick check reads headers and sizes (catches missing, emptied, truncated files);
    ``full`` also loads every tensor and checks it is finite.
    """
    root, seen, out = Path(cache_dir), set(), []
    groups = read_groups(root)
    for e in entries:
        for rel, keys in item_files(e, groups):
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
        self.groups = read_groups(self.root)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The union of the item's groups; ``(item, caption)`` picks the file of each per-caption group
        (caption -1: the empty prompt, caption dropout). Per-item conditions stay under dropout."""
        item, caption = index
        e = self.entries[item]
        out: dict[str, torch.Tensor] = {}
        for g, rel in e.files.items():
            out.update(self._load(e, rel, self.groups[g].fields if g in self.groups else ()))
        for g, rels in e.caption_files.items():
            rel = e.empty_files[g] if caption < 0 else rels[caption]
            out.update(self._load(e, rel, self.groups[g].fields if g in self.groups else ()))
        out["index"] = torch.tensor(item)
        return out

    def _load(self, e: CacheEntry, rel: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """All tensors of one file, which must include ``keys``."""
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
        return dict(tensors)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items of one bucket into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
