"""The cache stage: scan sources, plan items, run the spec's item encoders in turn, write the index.

One loop over ``spec.item_encoders`` (text, the clip's latents, any conditioning): each group's models
are loaded, used for every item missing its file and freed before the next group, so peak memory is
one group's models. Every cache file is content-addressed and written atomically: a re-run (also after
SIGKILL) encodes only what is missing, and a changed caption re-encodes only its text.
"""

from __future__ import annotations

import gc
import json
import time
import weakref
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from hv_tune.config import Config
from hv_tune.data.cache import (
    CacheEntry,
    Group,
    broken_files,
    content_key,
    describe_broken,
    group_path,
    is_valid,
    read_header,
    read_index,
    write_group,
    write_index,
)
from hv_tune.data.decode import MediaError, read_image, read_video, resize_cover, to_pixels
from hv_tune.data.fingerprint import cache_fingerprint, fingerprint_changes, model_key
from hv_tune.data.plan import PlannedItem, plan_items, text_key
from hv_tune.data.sources import Skip, describe_sources, scan_sources
from hv_tune.errors import DataError
from hv_tune.io import atomic_write_text, count
from hv_tune.media import caption_edit_counts
from hv_tune.memory.fp8 import apply_fp8_storage
from hv_tune.models.base import (
    ITEM_READS,
    EncodeSetup,
    ItemEncoder,
    LoadOptions,
    ModelSpec,
    condition_fields,
    resolve_dtype,
)

SUMMARY_FILE = "summary.json"
#: the summary lists the sources whose centre crop keeps less than this share of their picture's area
CROP_NOTE_BELOW = 0.7


@dataclass
class Cropped:
    """A source that lost much of its picture to its bucket's centre crop."""

    path: str
    kept: float  # share of the picture's area kept, 0..1
    source: str  # height x width of the source (upright)
    bucket: str  # height x width of its bucket


def i2v_stills_note(stills: int, items: int) -> str:
    """The summary line on image-to-video items that are stills conditioned on themselves."""
    return (f"image-to-video: {stills} of {items} items are stills (1-frame bucket) conditioned on themselves: "
            "the first-frame condition IS the whole target, so the model learns to copy it and these items "
            "teach the LoRA little (no motion, no look that the condition does not already give); "
            "leave 1 out of data.frame_buckets to cache videos only (docs/hunyuan_video_1_5.md)")


@dataclass
class CacheSummary:
    items: int = 0
    buckets: dict[str, int] = field(default_factory=dict)
    latents_encoded: int = 0
    latents_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0
    conditions_encoded: int = 0  # image-to-video: first-frame conditions
    conditions_reused: int = 0
    skipped: list[Skip] = field(default_factory=list)
    notes: list[Skip] = field(default_factory=list)
    cropped: list[Cropped] = field(default_factory=list)  # sources keeping < CROP_NOTE_BELOW of their area
    i2v_stills: int = 0  # image-to-video items of one frame: conditioned on themselves
    captions: dict[str, int] = field(default_factory=dict)  # what the caption rule did (hv_tune.media EDITS)
    seconds: float = 0.0
    changes: list[str] = field(default_factory=list)  # what differs from the previous build, and its effect
    repaired: list[str] = field(default_factory=list)  # broken cache files found (and re-encoded)
    sources: list[str] = field(default_factory=list)  # each source's size settings, when sources differ

    def table(self) -> str:
        """The human-readable end-of-run report."""
        lines = [f"cache: {count(self.items, 'item')} in {count(len(self.buckets), 'bucket')} ({self.seconds:.1f} s)",
                 f"  latents: {self.latents_encoded} encoded, {self.latents_reused} reused; "
                 f"texts: {self.texts_encoded} encoded, {self.texts_reused} reused"
                 + (f"; first-frame conditions: {self.conditions_encoded} encoded, {self.conditions_reused} reused"
                    if self.conditions_encoded or self.conditions_reused else ""),
                 "  bucket (frames x height x width)   items"]
        if caption_edit_counts(self.captions):
            lines.insert(2, f"  captions: {caption_edit_counts(self.captions)}")
        if self.changes:
            lines[1:1] = ["  rebuilt because:"] + [f"    {c}" for c in self.changes]
        if self.repaired:
            lines[1:1] = ["  broken files re-encoded:"] + [f"    {r}" for r in self.repaired]
        lines += [f"  {b:<34} {n}" for b, n in sorted(self.buckets.items())]
        if self.sources:
            lines += ["  sources (their own resolution / frame buckets):"] + [f"    {x}" for x in self.sources]
        if self.skipped:
            lines.append(f"  skipped ({len(self.skipped)}):")
            lines += [f"    {s.path}: {s.reason}" for s in self.skipped]
        if self.notes:
            lines.append("  notes:")
            lines += [f"    {s.path}: {s.reason}" for s in self.notes]
        if self.cropped:
            lines.append(f"  centre crop keeps under {CROP_NOTE_BELOW:.0%} of the picture ({len(self.cropped)} sources; "
                         "the widest buckets are ~2.3-2.5:1: crop or split such sources yourself to choose what stays):")
            lines += [f"    {c.path}: {c.kept:.0%} of the area kept ({c.source} -> bucket {c.bucket}, height x width)"
                      for c in self.cropped]
        if self.i2v_stills:
            lines.append("  " + i2v_stills_note(self.i2v_stills, self.items))
        return "\n".join(lines)


def _free(refs: list[weakref.ref]) -> None:
    """Release dropped models: reference counting frees them at once; a full ``gc.collect()`` (0.1 s
    and more with torch and transformers loaded) runs only when one is still alive (a cycle holds it).

    Args:
        refs: weak references to the models' modules (``_weak_refs``), taken before the last strong
            reference was deleted.
    """
    if any(r() is not None for r in refs):
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _weak_refs(models: object, depth: int = 3) -> list[weakref.ref]:
    """Weak references to the ``torch.nn.Module`` objects in ``models``: a module, or containers and
    plain objects (``TextEncoders`` -> ``TextEncoder`` -> model) holding them up to ``depth`` levels down."""
    if isinstance(models, torch.nn.Module):
        return [weakref.ref(models)]
    if depth == 0:
        return []
    if isinstance(models, dict):
        values = list(models.values())
    elif isinstance(models, (list, tuple)):
        values = list(models)
    else:
        values = list(vars(models).values()) if hasattr(models, "__dict__") else []
    return [r for v in values for r in _weak_refs(v, depth - 1)]


def build_cache(spec: ModelSpec, cfg: Config, device: str) -> CacheSummary:
    """Encode every item of ``cfg.data.sources`` into ``cfg.data.cache_dir``: one group per item encoder
    of ``spec`` (``ModelSpec.item_encoders``), in the order declared."""
    t0 = time.time()
    root = Path(cfg.data.cache_dir)
    opts = LoadOptions.from_config(cfg.model, resolve_dtype(cfg.model.base_dtype, device),
                                   text_encoder_fp8=cfg.model.text_encoder_dtype == "fp8")
    setup = EncodeSetup(opts, device, cfg.data.vae_tiling, cfg.data.vae_slicing,
                        lambda module, keep: apply_fp8_storage(module, keep, opts.dtype))
    encoders = checked_encoders(spec)
    scan = scan_sources(cfg.data)
    fingerprint = cache_fingerprint(cfg, spec.name, spec.transformer_subfolder, scan, condition_fields(spec))
    model_id = model_key(fingerprint["model"])
    planned = plan_items(scan, cfg.data, model_id, spec.video)
    summary = CacheSummary(skipped=scan.skipped, notes=scan.notes, captions=dict(scan.caption_edits))
    summary.changes, summary.repaired = _previous_build(root, fingerprint, scan.not_accepted)
    summary.sources = describe_sources(cfg.data)
    done = planned
    for enc in encoders:
        if enc.role == "text":
            encode_texts(enc, setup, root, text_jobs(planned, model_id), summary)
        else:
            done = encode_items(enc, setup, root, done, summary, {e.name: e for e in encoders})
    entries = [_entry(p, model_id, encoders) for p in done]
    summary.items = len(entries)
    summary.buckets = dict(Counter("x".join(map(str, e.bucket)) for e in entries))
    summary.cropped = cropped_sources(done)
    conditions = {enc.name for enc in encoders if enc.role == "condition"}
    summary.i2v_stills = sum(1 for e in entries if conditions & set(e.files) and e.frames == 1)
    summary.seconds = time.time() - t0
    groups = {enc.name: Group(enc.fields, enc.role == "text") for enc in encoders}
    write_index(root, entries, groups, fingerprint)  # also when empty: a stale index must never stay in place
    atomic_write_text(root / SUMMARY_FILE, json.dumps(asdict(summary), indent=2, ensure_ascii=False))
    return summary


def checked_encoders(spec: ModelSpec) -> tuple[ItemEncoder, ...]:
    """The spec's item encoders, each reading only what the cache provides (``ITEM_READS`` or an earlier
    group); raises ValueError naming the spec otherwise (a family's bug, not the user's)."""
    seen: set[str] = set()
    for enc in spec.item_encoders:
        unknown = sorted(set(enc.reads) - set(ITEM_READS) - seen)
        if unknown or (enc.role == "text") != ("caption" in enc.reads):
            raise ValueError(f"{spec.name}: item encoder {enc.name!r} reads {list(enc.reads)}; the cache provides "
                             f"{list(ITEM_READS)} and earlier groups {sorted(seen)} (captions for text groups only)")
        seen.add(enc.name)
    return tuple(spec.item_encoders)


def cropped_sources(items: list[PlannedItem], below: float = CROP_NOTE_BELOW) -> list[Cropped]:
    """Sources whose centre crop keeps less than ``below`` of their picture's area, least kept first
    (one line per source: its windows share the crop)."""
    worst: dict[str, Cropped] = {}
    for p in items:
        if p.kept < below and str(p.media.path) not in worst:
            h, w = p.source_size
            worst[str(p.media.path)] = Cropped(str(p.media.path), round(p.kept, 3), f"{h}x{w}", f"{p.height}x{p.width}")
    return sorted(worst.values(), key=lambda c: (c.kept, c.path))


def _previous_build(root: Path, fingerprint: dict, not_accepted: dict[str, str]) -> tuple[list[str], list[str]]:
    """What changed since the cache's last build, and its broken files (they get re-encoded)."""
    head = read_header(root)
    if head is None:
        return [], []
    try:
        broken = broken_files(root, read_index(root))
    except DataError:  # an empty or old index: nothing to check
        broken = []
    return fingerprint_changes(head.get("fingerprint"), fingerprint, not_accepted), [describe_broken(root, *b) for b in broken]


def text_jobs(planned: list[PlannedItem], model_id: str) -> dict[str, tuple[str, str]]:
    """key -> (caption, template) for every caption, plus the empty prompt per template."""
    jobs: dict[str, tuple[str, str]] = {}
    for p in planned:
        for key, caption in zip(p.text_keys, p.media.captions):
            jobs[key] = (caption, p.template)
        jobs[text_key(model_id, p.template, "")] = ("", p.template)
    return jobs


#: the summary's counters of each role (``<prefix>_encoded``, ``<prefix>_reused``)
COUNTERS = {"latents": "latents", "text": "texts", "condition": "conditions"}


def _count(summary: CacheSummary, role: str, what: str, n: int) -> None:
    attr = f"{COUNTERS.get(role, 'conditions')}_{what}"
    setattr(summary, attr, getattr(summary, attr) + n)


def encode_texts(enc: ItemEncoder, setup: EncodeSetup, root: Path, jobs: dict[str, tuple[str, str]],
                 summary: CacheSummary) -> None:
    """Encode the missing caption files of text group ``enc`` (one per caption and template)."""
    missing = {k: v for k, v in jobs.items() if not is_valid(root / group_path(enc.name, k), enc.fields)}
    _count(summary, enc.role, "reused", len(jobs) - len(missing))
    if not missing:
        return
    models = enc.load(setup)
    for key, (caption, template) in tqdm(missing.items(), desc=f"encode {enc.name}", unit="caption"):
        inputs = {"caption": caption, "frames": 1 if template == "image" else 2}  # > 1 selects a video template
        write_group(root, enc.name, key, enc.encode(models, inputs))
        _count(summary, enc.role, "encoded", 1)
        note = enc.note(models, inputs) if enc.note else None
        if note:
            summary.notes.append(Skip(f"caption {caption[:40]!r}", note))
    refs = _weak_refs(models)
    del models
    _free(refs)


def group_key(enc: ItemEncoder, item: PlannedItem) -> str:
    """Content key of an item's file of per-item group ``enc``: the latents' is the plan's (clip, window,
    bucket, model); a condition's is that plus the group's name and fields."""
    return item.latent_key if enc.role == "latents" else content_key(enc.name, item.latent_key, *enc.fields)


def encode_items(enc: ItemEncoder, setup: EncodeSetup, root: Path, planned: list[PlannedItem],
                 summary: CacheSummary, earlier: Mapping[str, ItemEncoder] | None = None) -> list[PlannedItem]:
    """Encode the missing files of per-item group ``enc`` (reading the next item's media overlaps the
    encoder; ``earlier``: the groups encoded before, by name); returns the usable items (an unreadable
    one is skipped, with its reason)."""
    earlier = earlier or {}
    todo = [p for p in planned if not is_valid(root / group_path(enc.name, group_key(enc, p)), enc.fields)]
    _count(summary, enc.role, "reused", len(planned) - len(todo))
    failed: set[str] = set()
    if todo:
        models = enc.load(setup)
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(item_inputs, enc, root, todo[0], earlier)]
            for i, item in enumerate(tqdm(todo, desc=f"encode {enc.name}", unit="item")):
                if i + 1 < len(todo):
                    futures.append(pool.submit(item_inputs, enc, root, todo[i + 1], earlier))
                try:
                    inputs = futures[i].result()
                except MediaError as e:
                    summary.skipped.append(Skip(str(item.media.path), str(e)))
                    failed.add(item.id)
                    continue
                futures[i] = None  # release the decoded frames
                write_group(root, enc.name, group_key(enc, item), enc.encode(models, inputs))
                _count(summary, enc.role, "encoded", 1)
        refs = _weak_refs(models)
        del models
        _free(refs)
    return [p for p in planned if p.id not in failed]


def item_inputs(enc: ItemEncoder, root: Path, item: PlannedItem, earlier: Mapping[str, ItemEncoder]) -> dict[str, object]:
    """What ``enc`` reads of ``item``: decoded media, or an earlier group's cached tensors.

    Raises:
        MediaError: the item's media cannot be read.
    """
    out: dict[str, object] = {"frames": item.frames}
    for name in enc.reads:
        if name in ITEM_INPUTS:
            out[name] = ITEM_INPUTS[name](item)
        else:  # an earlier group, encoded before this one (checked_encoders)
            out[name] = load_file(str(root / group_path(name, group_key(earlier[name], item))))
    return out


def load_pixels(item: PlannedItem) -> torch.Tensor:
    """Decode the item's frames into [3, F, H, W] in [-1, 1] at its bucket size."""
    try:
        if item.template == "image":
            frames = resize_cover(read_image(item.media.path), (item.height, item.width))
        else:
            frames = read_video(item.media.path, item.indices, item.info, (item.height, item.width))
    except FileNotFoundError as e:
        raise MediaError("file vanished") from e
    return to_pixels(frames)


def first_frame(item: PlannedItem) -> np.ndarray:
    """The item's first frame, uint8 [H, W, 3] at its bucket size (decoded as ``load_pixels`` decodes it)."""
    try:
        if item.template == "image":
            return resize_cover(read_image(item.media.path), (item.height, item.width))[0]
        return read_video(item.media.path, item.indices[:1], item.info, (item.height, item.width))[0]
    except FileNotFoundError as e:
        raise MediaError("file vanished") from e


#: the media an item encoder can read (``ItemEncoder.reads``; ``caption`` is a text group's) -> how it is read
ITEM_INPUTS = {"clip": load_pixels, "first_frame": first_frame}


def _entry(p: PlannedItem, model_id: str, encoders: tuple[ItemEncoder, ...]) -> CacheEntry:
    """The index line of an encoded item: its file of every group."""
    s, texts = p.media.settings, [e for e in encoders if e.role == "text"]
    return CacheEntry(
        id=p.id,
        frames=p.frames,
        height=p.height,
        width=p.width,
        captions=p.media.captions,
        files={e.name: group_path(e.name, group_key(e, p)) for e in encoders if e.role != "text"},
        caption_files={e.name: [group_path(e.name, k) for k in p.text_keys] for e in texts},
        empty_files={e.name: group_path(e.name, text_key(model_id, p.template, "")) for e in texts},
        repeats=s.repeats,
        caption_dropout=s.caption_dropout,
        source=str(p.media.path),
    )
