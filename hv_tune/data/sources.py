"""Dataset inputs -> media items with captions. No decoding happens here.

Four kinds of source (``data.sources[i].type``, ``auto`` picks by path):
``folder`` (media files with sidecar ``.txt`` captions, any case of the extension),
``manifest`` (hv-tune curation ``manifest.jsonl``, read by ``hv_tune.data.manifest``: accepted
records only, their frame span and caption),
``jsonl`` (musubi-tuner: ``{"video_path" | "image_path": ..., "caption": ...}``) and
``csv`` (finetrainers: ``path,caption`` columns); a musubi-tuner dataset ``.toml`` expands into one
folder or jsonl source per ``[[datasets]]`` table (``hv_tune.musubi_toml``). Each source may
set its own resolution, frame buckets, fps and upscaling (``resolve_settings``). Problems become
``Skip`` records.
Every caption goes through ``hv_tune.media.apply_caption_rule``, the rule curation applies too.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from hv_tune.config import DataConfig, SourceConfig
from hv_tune.data.manifest import is_manifest, manifest_rows
from hv_tune.media import apply_caption_rule, decode_caption_bytes, find_caption_file, read_caption_file
from hv_tune.musubi_toml import is_musubi_toml, read_musubi_toml

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class SourceSettings:
    """A source's settings with the `data` defaults filled in."""

    repeats: int
    frame_extraction: str
    frame_samples: int
    trigger_word: str
    caption_dropout: float
    missing_caption: str
    caption_lines: str = "join"
    resolution: int = 512
    frame_buckets: list[int] = field(default_factory=lambda: [1, 33])
    frame_bucket_choice: str = "longest"
    fps: float | None = None  # None = the model's frame rate
    allow_upscale: bool = False


@dataclass
class MediaItem:
    path: Path
    kind: str  # "video" | "image"
    captions: list[str]
    settings: SourceSettings
    span: tuple[int, int] | None = None  # source frames [start, end), from a manifest
    clip_id: str | None = None  # the manifest record's id (a curation clip)


@dataclass
class Skip:
    path: str
    reason: str


@dataclass
class Scan:
    items: list[MediaItem] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[Skip] = field(default_factory=list)  # kept items with a remark (e.g. encoding)
    caption_edits: Counter = field(default_factory=Counter)  # what the caption rule did, by EDITS key
    not_accepted: dict[str, str] = field(default_factory=dict)  # item_key -> status of manifest clips left out


#: SourceConfig keys that fall back to the same key under `data` when unset (null)
INHERITED = ("frame_extraction", "frame_samples", "trigger_word", "caption_dropout", "missing_caption", "caption_lines",
             "resolution", "frame_buckets", "frame_bucket_choice", "fps", "allow_upscale")


def resolve_settings(src: SourceConfig, data: DataConfig) -> SourceSettings:
    """A source's settings: its own value of each ``INHERITED`` key, else the one under ``data``."""
    def pick(name: str):
        own = getattr(src, name)
        return getattr(data, name) if own is None else own

    return SourceSettings(src.repeats, **{n: pick(n) for n in INHERITED})


@dataclass
class ExpandedSource:
    """One source as the scan reads it: a YAML entry, or one ``[[datasets]]`` table of a musubi .toml."""

    label: str  # "data.sources[0]", or "data.sources[0] (data.toml [[datasets]] #1)"
    config: SourceConfig  # path and type of the media list; the toml's keys filled in


def expand_sources(data: DataConfig) -> list[ExpandedSource]:
    """``data.sources`` with each musubi-tuner dataset .toml replaced by its datasets.

    A dataset's keys (``hv_tune.musubi_toml``) win over the YAML entry's own keys, which win
    over ``data``'s (``hv_tune.config`` refuses a YAML key that the .toml also sets).

    Raises:
        ConfigError: a .toml that cannot be read or uses a key we do not support.
    """
    out = []
    for i, src in enumerate(data.sources):
        label = f"data.sources[{i}]"
        if source_type(src) != "musubi_toml":
            out.append(ExpandedSource(label, src))
            continue
        toml = Path(src.path).expanduser()
        for d in read_musubi_toml(toml):
            cfg = replace(src, path=str(d.path), type=d.type, **d.settings)
            out.append(ExpandedSource(f"{label} ({toml.name} [[datasets]] #{d.index})", cfg))
    return out


def bucket_settings(data: DataConfig) -> list[tuple[int, list[int]]]:
    """(resolution, frame_buckets) of every source (musubi .toml datasets expanded), or of ``data``
    alone without sources: what the buckets of a cache built from ``data`` can be at most."""
    expanded = [resolve_settings(s.config, data) for s in expand_sources(data)]
    return [(s.resolution, s.frame_buckets) for s in expanded] or [(data.resolution, data.frame_buckets)]


#: the settings that give a source's items their size: the cache summary lists them per source when they differ
SIZE_KEYS = ("resolution", "frame_buckets", "frame_bucket_choice", "fps", "allow_upscale")


def describe_sources(data: DataConfig) -> list[str]:
    """One line per source with the settings that size its items, for the cache summary; empty when
    every source takes them from ``data`` (the summary's bucket table says it all then)."""
    expanded = expand_sources(data)
    if all(" (" not in src.label and all(getattr(src.config, k) is None for k in SIZE_KEYS) for src in expanded):
        return []
    out = []
    for src in expanded:
        s = resolve_settings(src.config, data)
        fps = f"{s.fps:g} fps" if s.fps else "the model's fps"
        out.append(f"{src.label} {src.config.path}: {s.resolution} px, frame buckets {s.frame_buckets} "
                   f"({s.frame_bucket_choice}), {fps}, {'upscale' if s.allow_upscale else 'no upscale'}")
    return out


def media_kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "video" if ext in VIDEO_EXTS else "image" if ext in IMAGE_EXTS else None


def source_type(src: SourceConfig) -> str:
    if src.type != "auto":
        return src.type
    p = Path(src.path)
    if p.is_dir():
        return "folder"
    if is_musubi_toml(p):
        return "musubi_toml"
    if p.suffix.lower() == ".csv":
        return "csv"
    if is_manifest(p):  # named manifest*, or marked by its manifest_version
        return "manifest"
    return "jsonl"


# ----------------------------------------------------------------------------- captions
# Caption files are decoded by hv_tune.media (UTF-8 / UTF-16 by BOM / cp1252 with a note) and
# every caption follows hv_tune.media.apply_caption_rule: the reader and the rule curation uses.


def finish_captions(
    path: Path, value: str | list[str] | None, s: SourceSettings, scan: Scan
) -> list[str] | None:
    """The caption rule, then the missing-caption policy; None means skip."""
    captions, edits = apply_caption_rule(value, s.trigger_word, per_line=s.caption_lines == "split")
    if not captions:
        if s.missing_caption == "error":
            scan.skipped.append(Skip(str(path), "missing caption (data.missing_caption=error)"))
            return None
        fallback = path.stem.replace("_", " ").replace("-", " ") if s.missing_caption == "filename" else ""
        captions, edits = apply_caption_rule(fallback, s.trigger_word)
        captions = captions or [" ".join(s.trigger_word.split())]  # "empty": the trigger word alone, if any
    scan.caption_edits.update(edits)
    return captions


# ----------------------------------------------------------------------------- readers


def scan_folder(root: Path, s: SourceSettings, scan: Scan, only: str | None = None) -> None:
    """Media files of ``root`` (recursively) with their sidecar captions; every other file is a Skip.

    ``only`` (``video`` | ``image``): a musubi-tuner ``video_directory`` / ``image_directory``:
    the top folder alone and that kind of media only, as musubi-tuner reads it.
    """
    files = sorted(p for p in (root.iterdir() if only else root.rglob("*")) if p.is_file())
    for path in files:
        if only and media_kind(path) not in (None, only):
            scan.skipped.append(Skip(str(path), f"{media_kind(path)} in a musubi-tuner {only}_directory, which "
                                                f"reads {only}s only"))
    media = [p for p in files if media_kind(p) and (only is None or media_kind(p) == only)]
    sidecars = {path: find_caption_file(path) for path in media}
    for path in files:
        if not media_kind(path) and path not in sidecars.values():
            scan.skipped.append(Skip(str(path), _not_media_reason(path)))
    for path in media:
        side, text = sidecars[path], None
        if side is not None:
            text, note = read_caption_file(side)
            if note:
                scan.notes.append(Skip(str(side), note))
        captions = finish_captions(path, text, s, scan)
        if captions is not None:
            scan.items.append(MediaItem(path, media_kind(path), captions, s))


def _not_media_reason(path: Path) -> str:
    if path.suffix.lower() == ".txt":
        return "caption file with no video or image of the same name beside it"
    return (f"unsupported extension {path.suffix or '(none)'!r}: videos {' '.join(sorted(VIDEO_EXTS))}, "
            f"images {' '.join(sorted(IMAGE_EXTS))}")


def item_key(path: Path, clip_id: str | None = None) -> str:
    """An item's key in the cache fingerprint: the resolved media path, ``#<clip id>`` for a manifest clip."""
    return str(path.resolve()) + (f"#{clip_id}" if clip_id else "")


def scan_manifest(path: Path, s: SourceSettings, scan: Scan) -> None:
    """Accepted clips of a curation manifest (``hv_tune.data.manifest``: every row's version is checked).

    Raises:
        ManifestVersionError: a row of a version this code cannot read (file, line and version named).
    """
    text, _ = decode_caption_bytes(path.read_bytes())
    bad = lambda n, why: scan.skipped.append(Skip(f"{path}:{n}", why))  # noqa: E731
    for n, rec in manifest_rows(path, text, bad):
        clip_id = str(rec["id"]) if rec.get("id") else None
        if rec.get("status") != "accepted":
            media = _resolve(path, rec.get("source"))
            if media is not None and clip_id:  # named when it leaves the cache (e.g. `curation filter`)
                scan.not_accepted[item_key(media, clip_id)] = str(rec.get("status"))
            continue
        media = _listed_media(path, n, rec.get("source"), scan,
                              f"manifest record has no usable 'source' ({rec.get('source')!r})")
        if media is None:
            continue
        try:
            span = (int(rec["start_frame"]), int(rec["end_frame"]))
        except (KeyError, TypeError, ValueError):
            span = None
        captions = finish_captions(media, rec.get("caption"), s, scan)
        if captions is not None:
            scan.items.append(MediaItem(media, media_kind(media), captions, s, span, clip_id))


def scan_jsonl(path: Path, s: SourceSettings, scan: Scan) -> None:
    for n, rec in _jsonl_records(path, scan):
        media = _listed_media(path, n, rec.get("video_path") or rec.get("image_path"), scan,
                              "line needs 'video_path' or 'image_path' of a media file")
        if media is None:
            continue
        captions = finish_captions(media, rec.get("caption"), s, scan)
        if captions is not None:
            scan.items.append(MediaItem(media, media_kind(media), captions, s))


def scan_csv(path: Path, s: SourceSettings, scan: Scan) -> None:
    text, _ = decode_caption_bytes(path.read_bytes())
    rows = list(csv.DictReader(text.splitlines()))
    for n, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): v for k, v in row.items()}
        media = _listed_media(path, n, row.get("path") or row.get("video") or row.get("image"), scan,
                              "row needs a 'path' column naming a media file")
        if media is None:
            continue
        captions = finish_captions(media, row.get("caption"), s, scan)
        if captions is not None:
            scan.items.append(MediaItem(media, media_kind(media), captions, s))


def _listed_media(list_file: Path, line: int, value: object, scan: Scan, unusable: str) -> Path | None:
    """The media file a list source's line ``line`` names, or None after recording why it is skipped."""
    media = _resolve(list_file, value)
    reason = unusable if media is None or media_kind(media) is None else None
    if reason is None and not media.exists():
        reason = _not_found(list_file, str(value), media)
    if reason:
        scan.skipped.append(Skip(f"{list_file}:{line}", reason))
        return None
    return media


def _resolve(base_file: Path, value: object) -> Path | None:
    """``value`` as a path; a relative one is relative to ``base_file``'s folder.

    A list written on Windows may separate folders with ``\\``, which on POSIX is an ordinary
    character of a file name: the path is read with ``/`` instead only when the literal one
    does not exist and that one does.
    """
    if not value or not isinstance(value, str):
        return None
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base_file.parent / p
    if os.sep == "\\" or "\\" not in value or p.exists() or _windows_anchor(value):
        return p
    converted = Path(value.replace("\\", "/")).expanduser()
    converted = converted if converted.is_absolute() else base_file.parent / converted
    return converted if converted.exists() else p


def _windows_anchor(value: str) -> str | None:
    """The drive (``C:``) or UNC share (``\\\\server``) a Windows absolute path starts with, else None."""
    m = re.match(r"([A-Za-z]:)[\\/]|(\\\\[^\\/]+)", value)
    return (m.group(1) or m.group(2)) if m else None


def _not_found(list_file: Path, value: str, resolved: Path) -> str:
    """Why a listed file is missing: a path of another system (drive letter, ``\\``) is named as such."""
    anchor = None if os.sep == "\\" else _windows_anchor(value)
    fix = (f"; give it as a path on this machine, or relative to the folder of {list_file.name} "
           "with '/' between folders")
    if anchor:
        return f"file not found: '{value}' is a Windows path (starts with {anchor}) that names no file here{fix}"
    if os.sep != "\\" and "\\" in value:
        return (f"file not found: '{value}' uses Windows separators ('\\'), and neither it nor "
                f"'{value.replace(chr(92), '/')}' is in the folder of {list_file.name}{fix}")
    return f"file not found: {resolved}"


def _jsonl_records(path: Path, scan: Scan):
    text, _ = decode_caption_bytes(path.read_bytes())
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            scan.skipped.append(Skip(f"{path}:{n}", f"not valid JSON ({e.msg})"))
            continue
        if isinstance(rec, dict):
            yield n, rec


READERS = {"folder": scan_folder, "manifest": scan_manifest, "jsonl": scan_jsonl, "csv": scan_csv,
           # a musubi-tuner .toml's directories (hv_tune.musubi_toml): one kind, top folder only
           "musubi_videos": lambda root, s, scan: scan_folder(root, s, scan, "video"),
           "musubi_images": lambda root, s, scan: scan_folder(root, s, scan, "image")}


def scan_sources(data: DataConfig) -> Scan:
    """Every media item of every source (musubi .toml datasets expanded), with resolved settings
    and final captions."""
    scan = Scan()
    for src in expand_sources(data):
        READERS[source_type(src.config)](Path(src.config.path).expanduser(), resolve_settings(src.config, data), scan)
    return scan
