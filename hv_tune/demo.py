"""The built-in demo: tiny model, generated clips, cache, a short training run, a sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from hv_tune.config import load_config
from hv_tune.data.cache import read_index
from hv_tune.data.demo import write_demo_folder
from hv_tune.data.encode import build_cache
from hv_tune.models import DEFAULT_MODEL, get_spec
from hv_tune.sampling import SampleRequest, generate, load_pipeline, write_video
from hv_tune.training.trainer import train

DEMO_CLIPS, DEMO_FRAMES, DEMO_SIZE = 8, 12, 64  # 12 frames at 24 fps fill the 9-frame bucket


def run_demo(out: Path, config: Path, overrides: list[str], source: Path | None = None) -> dict[str, Path]:
    """Clips (generated, or ``source``: e.g. a curation manifest) -> cache -> train -> sample."""
    t0 = time.time()
    out = Path(out)
    spec = get_spec(next((o.split("=", 1)[1] for o in overrides if o.startswith("model.name=")), DEFAULT_MODEL),
                    "--model-name")
    model_dir = out / "model"
    if not (model_dir / "model_index.json").is_file():
        spec.build_tiny(model_dir)
    clips_dir = out / "clips"
    if source is None and not clips_dir.is_dir():
        write_demo_folder(clips_dir, DEMO_CLIPS, DEMO_FRAMES, DEMO_SIZE, DEMO_SIZE)
    paths = [f"model.path={model_dir}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'lora'}",
             f"data.sources=[{{path: '{source or clips_dir}'}}]"]
    cfg = load_config(config, paths + list(overrides))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(build_cache(spec, cfg, device).table())
    lora = train(cfg, resume=True).lora_path
    pipe = load_pipeline(spec, str(model_dir), [(str(lora), 1.0)], device, torch.float32)
    first = read_index(cfg.data.cache_dir)[0]
    req = SampleRequest(first.captions[0], 9, DEMO_SIZE, DEMO_SIZE, steps=8, guidance=cfg.training.guidance_scale,
                        image=demo_image(first) if spec.pipeline.sample_input == "image" else None)
    sample = write_video(generate(spec, pipe, req), out / "sample.mp4", spec.video.fps)
    print(f"\nmodel:  {model_dir}\ncache:  {cfg.data.cache_dir}\nLoRA:   {lora}\nsample: {sample}")
    print(f"prompt: {readable_prompt(req.prompt)}")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return {"model": model_dir, "lora": lora, "sample": sample}


def demo_image(entry) -> Any:
    """Image-to-video: the first frame of a cached item's source (PIL image at the item's size)."""
    from PIL import Image

    from hv_tune.data.decode import probe_video, read_image, read_video, resize_cover

    path, size = Path(entry.source), (entry.height, entry.width)
    if entry.frames == 1:
        return Image.fromarray(resize_cover(read_image(path), size)[0])
    return Image.fromarray(read_video(path, [0], probe_video(path), size)[0])


def readable_prompt(prompt: str, limit: int = 72) -> str:
    """The sample prompt for the terminal: quoted when it is text, else what it is.

    Curated demo clips are captioned by a tiny *random* vision-language model, whose captions
    are arbitrary tokens from its vocabulary (often control or non-Latin characters); printing
    them would put junk on the last line.
    """
    text = " ".join(prompt.split())
    plain = sum(c.isascii() and c.isprintable() for c in text)
    if text and plain >= 0.9 * len(text):
        return repr(text if len(text) <= limit else text[: limit - 3] + "...")
    head = text.split(",")[0] if "," in text else ""
    trigger = f" after the trigger word {head!r}" if head.isascii() and head.isprintable() and head else ""
    return f"the first training caption: {len(text)} characters of random text{trigger} (tiny random captioner)"
