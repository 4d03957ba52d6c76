"""Encode items into the training cache, one model at a time (text encoders, then VAE)."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hv_tune.data.cache import CacheEntry, content_key, write_index, write_latent, write_text
from hv_tune.data.demo import Clip
from hv_tune.models.base import LoadOptions, ModelSpec


def _free(*modules: object) -> None:
    del modules
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cache_clips(spec: ModelSpec, opts: LoadOptions, clips: Sequence[Clip], cache_dir: Path, device: str) -> Path:
    """Encode in-memory clips (pixels + caption) into ``cache_dir`` and write its index.

    Text embeddings use the video template for clips and the image template for
    1-frame items, exactly as the reference pipeline does for generation.
    """
    cache_dir = Path(cache_dir)
    enc = spec.load_text_encoders(opts)
    enc.text_encoder.to(device)
    enc.text_encoder_2.to(device)
    text_rel = []
    for clip in tqdm(clips, desc="encode text", unit="item"):
        frames = clip.pixels.shape[1]
        key = content_key(spec.name, opts.path, frames == 1, clip.caption)
        text = spec.encode_text(enc, [clip.caption], frames)
        text_rel.append(write_text(cache_dir, key, {k: v[0].cpu() for k, v in text.items()}))
    _free(enc)
    vae = spec.load_vae(opts).to(device)
    entries = []
    for i, clip in enumerate(tqdm(clips, desc="encode video", unit="item")):
        _, f, h, w = clip.pixels.shape
        key = content_key(spec.name, opts.path, "latent", i, f, h, w, clip.pixels.sum().item())
        post = spec.encode_pixels(vae, clip.pixels.unsqueeze(0))  # [3, F, H, W] -> [1, 3, F, H, W]
        rel = write_latent(cache_dir, key, {k: v[0].cpu() for k, v in post.items()})
        entries.append(CacheEntry(f"item{i:05d}", rel, [text_rel[i]], f, h, w, [clip.caption]))
    _free(vae)
    return write_index(cache_dir, entries)
