"""The built-in demo: tiny model, generated clips, cache, a short training run, a sample."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hv_tune.config import load_config
from hv_tune.data.demo import demo_clips
from hv_tune.data.encode import cache_clips
from hv_tune.models import LoadOptions, get_spec
from hv_tune.sampling import SampleRequest, generate, load_pipeline, write_video
from hv_tune.training.trainer import train

DEMO_CLIPS, DEMO_FRAMES, DEMO_SIZE = 8, 9, 64


def run_demo(out: Path, config: Path, overrides: list[str]) -> dict[str, Path]:
    """Run every stage on CPU-sized data and print where each result went."""
    t0 = time.time()
    out = Path(out)
    spec = get_spec("hunyuan-video")
    model_dir = out / "model"
    if not (model_dir / "model_index.json").is_file():
        spec.build_tiny(model_dir)
    paths = [f"model.path={model_dir}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'lora'}"]
    cfg = load_config(config, paths + list(overrides))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clips = demo_clips(DEMO_CLIPS, DEMO_FRAMES, DEMO_SIZE, DEMO_SIZE)
    cache_clips(spec, LoadOptions(str(model_dir)), clips, Path(cfg.data.cache_dir), device)
    lora = train(cfg, resume=True).lora_path
    pipe = load_pipeline(spec, str(model_dir), [(str(lora), 1.0)], device, torch.float32)
    req = SampleRequest(clips[0].caption, DEMO_FRAMES, DEMO_SIZE, DEMO_SIZE, steps=8, guidance=cfg.training.guidance_scale)
    sample = write_video(generate(pipe, req), out / "sample.mp4")
    print(f"\nmodel:  {model_dir}\ncache:  {cfg.data.cache_dir}\nLoRA:   {lora}\nsample: {sample}  ({req.prompt!r})")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return {"model": model_dir, "lora": lora, "sample": sample}
