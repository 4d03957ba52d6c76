"""The contract between a base model and the rest of hv-tune.

The trainer, cache and (later) merge code only talk to a ``ModelSpec``; they never
import a model family's diffusers classes. Adding Wan or LTX-Video means one new file
implementing this protocol and one line in ``hv_tune.models.MODEL_SPECS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class TextEncoders:
    """Tokenizers and encoders of one model, loaded together and freed together."""

    tokenizer: Any
    text_encoder: nn.Module
    tokenizer_2: Any
    text_encoder_2: nn.Module


@dataclass
class LoadOptions:
    """Where a model comes from and in which dtype it is loaded."""

    path: str
    dtype: torch.dtype = torch.float32
    revision: str | None = None
    #: store the LLM text encoder's linear weights in fp8 (computed in ``dtype``) while caching
    text_encoder_fp8: bool = False


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype a model is loaded and computes in.

    ``auto`` = bf16 on GPU, fp32 on CPU (bf16 matmuls on CPU are slow and inexact);
    ``fp8`` = bf16 (the weights are then stored in fp8 by ``hv_tune.memory.fp8``).
    """
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name == "fp8":
        return torch.bfloat16
    return DTYPES[name]


class ModelSpec(Protocol):
    """What hv-tune needs to know about one base model family."""

    name: str
    #: preset name -> regular expressions matched (fullmatch) against module names
    lora_presets: Mapping[str, tuple[str, ...]]
    vae_scale_factor_temporal: int
    vae_scale_factor_spatial: int

    def load_transformer(self, opts: LoadOptions) -> nn.Module: ...

    def load_vae(self, opts: LoadOptions) -> nn.Module: ...

    def load_text_encoders(self, opts: LoadOptions) -> TextEncoders: ...

    def load_vae_config(self, opts: LoadOptions) -> Mapping[str, Any]:
        """The VAE's config (its ``scaling_factor`` maps posteriors to training latents)."""
        ...

    def encode_text(self, enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
        """Prompt embeddings exactly as the reference pipeline computes them."""
        ...

    def encode_pixels(self, vae: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """VAE posterior (``latent_mean``, ``latent_logvar``) of pixels in [-1, 1]."""
        ...

    def sample_latents(
        self, vae_config: Mapping[str, Any], mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """A fresh posterior sample, scaled into the transformer's latent space."""
        ...

    def transformer_inputs(
        self, noisy: torch.Tensor, sigma: torch.Tensor, text: Mapping[str, torch.Tensor], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments of the transformer's forward for one training batch."""
        ...

    def transformer_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The repeated blocks in execution order (what block swap and compile act on)."""
        ...

    def fp8_keep_patterns(self, component: str, module: nn.Module) -> tuple[str, ...]:
        """Module-name regexes (``re.search``) that stay in the compute dtype under fp8 storage.

        Args:
            component: ``"transformer"`` or ``"text_encoder"`` (the LLM).
            module: the loaded component (diffusers models carry their own skip patterns).
        """
        ...

    def save_lora(self, out_dir: Path, state_dict: dict[str, torch.Tensor], lora_config: Any) -> Path:
        """Write the adapter in diffusers format (with its PEFT config as metadata)."""
        ...

    def build_tiny(self, out_dir: Path, seed: int = 0) -> Path:
        """Write a tiny random model folder in the real on-disk format."""
        ...
