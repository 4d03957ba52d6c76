"""Helpers for the export tests: random LoRAs saved through our code, reference outputs via diffusers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, lora_state_dict, peft_config, resolve_targets
from hv_tune.models import LoadOptions


def random_lora(spec, model: Path, out: Path, rank: int, alpha: float, targets="attn", seed: int = 0) -> Path:
    """A diffusers-format LoRA with random A and B (a clearly visible update), saved like training does."""
    transformer = spec.load_transformer(LoadOptions(str(model)))
    cfg = peft_config(LoraConfig(rank=rank, alpha=alpha, targets=targets), resolve_targets(spec, transformer, targets))
    add_lora(transformer, cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in lora_state_dict(transformer).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        os.replace(spec.save_lora(Path(tmp), state, cfg), out)
    return out


def transformer_inputs(spec, model: Path, seed: int = 5) -> dict:
    enc = spec.load_text_encoders(LoadOptions(str(model)))
    text = spec.encode_text(enc, ["a green square moves up on a light background"], 5)
    noisy = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    return spec.transformer_inputs(noisy, torch.tensor([0.6]), text, guidance_scale=1.0)


def peft_output(model: Path, loras: list[tuple[Path, float]], inputs: dict) -> torch.Tensor:
    """The transformer's output with the LoRAs active as PEFT adapters, loaded by diffusers."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(model)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{i}")
        names.append(f"lora{i}")
    pipe.set_adapters(names, [s for _, s in loras])
    with torch.no_grad():
        return pipe.transformer(**inputs)[0]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|."""
    return ((a - ref).abs().max() / ref.abs().max()).item()
