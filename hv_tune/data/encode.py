"""The cache stage: scan sources, plan items, encode text, then video, then write the index.

Text encoders and the VAE are loaded one at a time and freed before the next, so peak
memory is one model's worth. Every cache file is content-addressed and written
atomically: a re-run (also after SIGKILL) encodes only what is missing, and a changed
caption re-encodes only its text.
"""

from __future__ import annotations

import gc
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hv_tune.config import Config
from hv_tune.data.cache import (
    LATENT_KEYS,
    CacheEntry,
    broken_files,
    content_key,
    describe_broken,
    is_valid,
    read_header,
    read_index,
    write_condition,
    write_index,
    write_latent,
    write_text,
)
from hv_tune.data.decode import MediaError, read_image, read_video, resize_cover, to_pixels
from hv_tune.data.fingerprint import cache_fingerprint, fingerprint_changes, model_key
from hv_tune.data.plan import PlannedItem, plan_items, text_key
from hv_tune.data.sources import Skip, describe_sources, scan_sources
from hv_tune.errors import DataError
from hv_tune.io import atomic_write_text, count
from hv_tune.media import caption_edit_counts
from hv_tune.memory.fp8 import apply_fp8_storage
from hv_tune.models.base import LoadOptions, ModelSpec, TextEncoders, condition_fields, resolve_dtype

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


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_cache(spec: ModelSpec, cfg: Config, device: str) -> CacheSummary:
    """Encode every item of ``cfg.data.sources`` into ``cfg.data.cache_dir``."""
    t0 = time.time()
    root = Path(cfg.data.cache_dir)
    opts = LoadOptions.from_config(cfg.model, resolve_dtype(cfg.model.base_dtype, device),
                                   text_encoder_fp8=cfg.model.text_encoder_dtype == "fp8")
    scan = scan_sources(cfg.data)
    fields = condition_fields(spec)
    fingerprint = cache_fingerprint(cfg, spec.name, spec.transformer_subfolder, scan, fields)
    model_id = model_key(fingerprint["model"])
    planned = plan_items(scan, cfg.data, model_id, spec.video)
    summary = CacheSummary(skipped=scan.skipped, notes=scan.notes, captions=dict(scan.caption_edits))
    summary.changes, summary.repaired = _previous_build(root, fingerprint, scan.not_accepted)
    summary.sources = describe_sources(cfg.data)
    texts = text_jobs(planned, model_id)
    encode_texts(spec, opts, device, root, texts, summary)
    done = encode_latents(spec, opts, device, root, planned, cfg, summary)
    done = encode_conditions(spec, opts, device, root, done, summary)
    entries = [_entry(p, model_id, fields) for p in done]
    summary.items = len(entries)
    summary.buckets = dict(Counter("x".join(map(str, e.bucket)) for e in entries))
    summary.cropped = cropped_sources(done)
    summary.i2v_stills = sum(1 for e in entries if e.condition and e.frames == 1)
    summary.seconds = time.time() - t0
    write_index(root, entries, fingerprint)  # also when empty: a stale index must never stay in place
    atomic_write_text(root / SUMMARY_FILE, json.dumps(asdict(summary), indent=2, ensure_ascii=False))
    return summary


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


def encode_texts(spec, opts, device, root: Path, jobs: dict[str, tuple[str, str]], summary: CacheSummary) -> None:
    missing = {k: v for k, v in jobs.items() if not is_valid(root / f"text/{k}.safetensors", tuple(spec.text_fields))}
    summary.texts_reused = len(jobs) - len(missing)
    if not missing:
        return
    enc = spec.load_text_encoders(opts)
    for encoder in enc:  # however many the family's text stack has
        if opts.text_encoder_fp8 and encoder.fp8:
            keep = spec.fp8_keep_patterns("text_encoder", encoder.model)
            apply_fp8_storage(encoder.model.requires_grad_(False), keep, opts.dtype)
        encoder.model.to(device)
    for key, (caption, template) in tqdm(missing.items(), desc="encode text", unit="caption"):
        frames = 1 if template == "image" else 2  # any count > 1 selects the video template
        out = spec.encode_text(enc, [caption], frames)
        write_text(root, key, {k: v[0].cpu() for k, v in out.items()})
        summary.texts_encoded += 1
        note = truncation_note(spec, enc, caption, frames)
        if note:
            summary.notes.append(Skip(f"caption {caption[:40]!r}", note))
    del enc
    _free()


def truncation_note(spec: ModelSpec, enc: TextEncoders, caption: str, frames: int) -> str | None:
    """A summary note when the text encoder cuts ``caption`` short (counted by the spec's tokenizer), else None."""
    dropped = spec.dropped_text_tokens(enc, [caption], frames)[0]
    return f"{dropped} caption tokens dropped: longer than the text encoder's limit" if dropped else None


def encode_latents(spec, opts, device, root: Path, planned, cfg: Config, summary) -> list[PlannedItem]:
    """Encode missing latents (decode of the next item overlaps the VAE); returns usable items."""
    todo = [p for p in planned if not is_valid(root / f"latents/{p.latent_key}.safetensors", LATENT_KEYS)]
    summary.latents_reused = len(planned) - len(todo)
    failed: set[str] = set()
    if todo:
        vae = spec.load_vae(opts).to(device)
        if cfg.data.vae_tiling:
            vae.enable_tiling()
        if cfg.data.vae_slicing:
            vae.enable_slicing()
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(load_pixels, todo[0])]
            for i, item in enumerate(tqdm(todo, desc="encode video", unit="item")):
                if i + 1 < len(todo):
                    futures.append(pool.submit(load_pixels, todo[i + 1]))
                try:
                    pixels = futures[i].result()
                except MediaError as e:
                    summary.skipped.append(Skip(str(item.media.path), str(e)))
                    failed.add(item.id)
                    continue
                futures[i] = None  # release the decoded frames
                post = spec.encode_pixels(vae, pixels.unsqueeze(0))  # [3, F, H, W] -> [1, 3, F, H, W]
                write_latent(root, item.latent_key, {k: v[0].cpu() for k, v in post.items()})
                summary.latents_encoded += 1
        del vae
        _free()
    return [p for p in planned if p.id not in failed]


def condition_key(item: PlannedItem, fields: tuple[str, ...]) -> str:
    """Content key of an item's first-frame condition: its latent's inputs and the spec's fields."""
    return content_key("condition", item.latent_key, *fields)


def encode_conditions(spec, opts, device, root: Path, planned: list[PlannedItem], summary) -> list[PlannedItem]:
    """Encode the missing per-item conditions of ``planned``: one loop over the spec's declared
    ``item_encoders`` (their models loaded once, beside the VAE), all their fields in the item's
    condition file; returns the usable items (all of them when the spec declares none)."""
    encoders, fields = spec.item_encoders, condition_fields(spec)
    if not encoders:
        return planned
    unknown = sorted({e.reads for e in encoders} - set(ITEM_INPUTS))
    if unknown:
        raise ValueError(f"{spec.name}: item encoders read {unknown}; the cache provides {sorted(ITEM_INPUTS)}")
    todo = [p for p in planned if not is_valid(root / f"cond/{condition_key(p, fields)}.safetensors", fields)]
    summary.conditions_reused = len(planned) - len(todo)
    failed: set[str] = set()
    if todo:
        vae = spec.load_vae(opts).to(device)
        models = [e.load(opts, vae) for e in encoders]
        desc = "encode " + ", ".join(e.name for e in encoders)
        for item in tqdm(todo, desc=desc, unit="item"):
            try:
                inputs = {name: ITEM_INPUTS[name](item) for name in {e.reads for e in encoders}}
            except MediaError as e:
                summary.skipped.append(Skip(str(item.media.path), str(e)))
                failed.add(item.id)
                continue
            shape = cached_latent_shape(root, item)
            out: dict[str, torch.Tensor] = {}
            for enc, model in zip(encoders, models):
                out |= enc.encode(model, inputs[enc.reads], shape)
            write_condition(root, condition_key(item, fields), out)
            summary.conditions_encoded += 1
        del models, vae
        _free()
    return [p for p in planned if p.id not in failed]


def cached_latent_shape(root: Path, item: PlannedItem) -> tuple[int, ...]:
    """[C, F', H', W'] of the item's cached latent (encoded before its condition; header read only)."""
    from safetensors import safe_open

    with safe_open(str(root / f"latents/{item.latent_key}.safetensors"), framework="pt") as f:
        return tuple(f.get_slice("latent_mean").get_shape())


def first_frame(item: PlannedItem) -> np.ndarray:
    """The item's first frame, uint8 [H, W, 3] at its bucket size (decoded as ``load_pixels`` decodes it)."""
    try:
        if item.template == "image":
            return resize_cover(read_image(item.media.path), (item.height, item.width))[0]
        return read_video(item.media.path, item.indices[:1], item.info, (item.height, item.width))[0]
    except FileNotFoundError as e:
        raise MediaError("file vanished") from e


#: what an item encoder can read (``ItemEncoder.reads``) -> how the cache stage gets it from an item
ITEM_INPUTS = {"first_frame": first_frame}


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


def _entry(p: PlannedItem, model_id: str, fields: tuple[str, ...] = ()) -> CacheEntry:
    s = p.media.settings
    return CacheEntry(
        id=p.id,
        latent=f"latents/{p.latent_key}.safetensors",
        texts=[f"text/{k}.safetensors" for k in p.text_keys],
        frames=p.frames,
        height=p.height,
        width=p.width,
        captions=p.media.captions,
        repeats=s.repeats,
        caption_dropout=s.caption_dropout,
        empty_text=f"text/{text_key(model_id, p.template, '')}.safetensors",
        source=str(p.media.path),
        condition=f"cond/{condition_key(p, fields)}.safetensors" if fields else None,
    )
