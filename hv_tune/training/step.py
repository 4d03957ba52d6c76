"""One training loss: draw latents, sigma and noise, run the transformer, weight the MSE."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hv_tune.config import ObjectiveConfig
from hv_tune.diffusion import add_noise, flow_matching_loss, flow_target, loss_weights, sample_sigmas
from hv_tune.models.base import ModelSpec


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """CPU generator for one micro-batch: a pure function of its position in training.

    Noise, sigmas and latent samples then do not depend on how many steps ran in this
    process, which is what makes resume exact.
    """
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def training_loss(
    spec: ModelSpec,
    transformer: nn.Module,
    batch: Mapping[str, torch.Tensor],
    objective: ObjectiveConfig,
    vae_config: Mapping[str, Any],
    guidance_scale: float,
    generator: torch.Generator,
    model_dtype: torch.dtype,
) -> torch.Tensor:
    """Flow-matching loss of one batch (docs/hunyuan_video.md), a float32 scalar."""
    device = batch["latent_mean"].device
    x0 = spec.sample_latents(vae_config, batch["latent_mean"], batch["latent_logvar"], generator)
    b = x0.shape[0]
    sigma = sample_sigmas(
        b, objective.timestep_sampling, generator, objective.logit_mean, objective.logit_std, objective.shift
    )
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
    noisy = add_noise(x0, noise, sigma.to(device))
    pred = transformer(**spec.transformer_inputs(noisy, sigma.to(device), batch, guidance_scale, model_dtype))[0]
    weights = loss_weights(sigma, objective.loss_weighting, objective.mode_scale).to(device)
    return flow_matching_loss(pred, flow_target(x0, noise), weights)
