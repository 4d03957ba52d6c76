"""Preview generation with diffusers' HunyuanVideoPipeline, written as mp4 (PyAV) or png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hv_tune.io import atomic_write


@dataclass
class SampleRequest:
    prompt: str
    frames: int = 33
    height: int = 320
    width: int = 512
    steps: int = 30
    shift: float = 7.0
    guidance: float = 6.0
    seed: int = 0
    fps: int = 24


def load_pipeline(model: str, loras: list[tuple[str, float]], device: str, dtype: torch.dtype):
    """HunyuanVideoPipeline from a model folder with LoRAs (path, scale) loaded via diffusers."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(model, dtype=dtype)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"lora{i}")
        names.append(f"lora{i}")
    if names:
        pipe.set_adapters(names, [scale for _, scale in loras])
    return pipe.to(device)


def generate(pipe, req: SampleRequest) -> np.ndarray:
    """Frames [F, H, W, 3] uint8 for one prompt, deterministic for a fixed seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=req.shift)
    out = pipe(
        prompt=req.prompt,
        height=req.height,
        width=req.width,
        num_frames=req.frames,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        generator=torch.Generator("cpu").manual_seed(req.seed),
        output_type="np",
    )
    return (np.clip(out.frames[0], 0.0, 1.0) * 255).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 24) -> Path:
    """H.264 mp4 (yuv420p) for several frames, PNG for one; written atomically."""
    import av

    path = Path(path)

    def write_mp4(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = frames.shape[1], frames.shape[2]
            stream.pix_fmt = "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    def write_png(tmp: Path) -> None:
        from PIL import Image

        Image.fromarray(frames[0]).save(tmp, format="PNG")

    return atomic_write(path, write_png if path.suffix.lower() == ".png" else write_mp4)
