"""Cache-stage throughput and overhead over the bare model time (CPU).

    python bench/cache.py [--vae tiny|full|both] [--items N]

For each VAE (the tiny random one, and a full-size HunyuanVideo VAE with random weights),
builds a folder of generated clips, runs the cache stage cold, and separately times the
bare model work on the same items (text encoder forwards + VAE encode of frames already in
memory). Prints one JSON object per VAE: items/s and the ratio cache_time / bare_time
(model loading counted on both sides; the target is <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hv_tune.config import load_config
from hv_tune.data.demo import write_demo_folder
from hv_tune.data.encode import build_cache, load_pixels
from hv_tune.data.plan import model_identity, plan_items
from hv_tune.data.sources import scan_sources
from hv_tune.models import DEFAULT_MODEL, LoadOptions, get_spec


def make_model(root: Path, vae: str) -> Path:
    spec = get_spec(DEFAULT_MODEL)
    model = spec.build_tiny(root / "model")
    if vae == "full":
        shutil.rmtree(model / "vae")
        spec.build_full_width(model, "vae")  # the family's full-size VAE, random weights
    return model


def bare_time(spec, model: Path, cfg) -> float:
    """Model loading + text forwards + VAE encode of pre-decoded pixels, nothing else."""
    scan = scan_sources(cfg.data)
    planned = plan_items(scan, cfg.data, model_identity(str(model)), spec.video)
    pixels = [load_pixels(p) for p in planned]  # decode outside the timed region
    captions = sorted({(c, p.template) for p in planned for c in p.media.captions})  # unique, as cached
    t0 = time.perf_counter()
    enc = spec.text.load(LoadOptions(str(model)))
    for caption, template in captions + [("", "video")]:
        spec.text.encode(enc, [caption], 1 if template == "image" else 2)
    del enc
    vae = spec.load_vae(LoadOptions(str(model)))
    for px in pixels:
        spec.encode_pixels(vae, px.unsqueeze(0))
    return time.perf_counter() - t0


def run(vae: str, items: int, frames: int, size: int, repeats: int) -> dict:
    """Alternate bare and cache runs ``repeats`` times (fresh cache each time); keep the minimum."""
    spec = get_spec(DEFAULT_MODEL)
    bare, cache = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root, vae)
        write_demo_folder(root / "clips", items, frames, size, size)
        bare_time(spec, model, _config(root, model, frames, size, "warm"))  # imports, first-call kernels
        for rep in range(repeats):
            cfg = _config(root, model, frames, size, f"cache{rep}")
            bare.append(bare_time(spec, model, cfg))
            t0 = time.perf_counter()
            summary = build_cache(spec, cfg, "cpu")
            cache.append(time.perf_counter() - t0)
    return {
        "bench": "cache", "vae": vae, "items": summary.items, "frames": frames, "size": size,
        "cache_s": round(min(cache), 3), "bare_model_s": round(min(bare), 3),
        "ratio": round(min(cache) / min(bare), 3), "items_per_s": round(summary.items / min(cache), 3),
        "samples_cache_s": [round(c, 2) for c in cache], "samples_bare_s": [round(b, 2) for b in bare],
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }


def _config(root: Path, model: Path, frames: int, size: int, cache: str):
    return load_config(None, [f"model.path={model}", f"data.cache_dir={root / cache}",
                              f"data.sources=[{{path: {root / 'clips'}}}]", f"data.frame_buckets=[1,{frames}]",
                              f"data.resolution={size}"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", choices=["tiny", "full", "both"], default="both")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="alternating bare/cache runs; minimum reported")
    args = p.parse_args()
    settings = {"tiny": (args.items * 4, 33, 64), "full": (args.items, 9, 128)}
    for vae in ["tiny", "full"] if args.vae == "both" else [args.vae]:
        n, frames, size = settings[vae]
        print(json.dumps(run(vae, n, frames, size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
