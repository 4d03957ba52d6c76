"""Flow-matching diffusion math for HunyuanVideo training, as pure functions.

Conventions (docs/hunyuan_video.md, matching diffusers and Tencent):
``x_t = (1 - sigma) * x0 + sigma * noise``, target ``v = noise - x0``, the transformer
gets ``timestep = sigma * 1000`` and ``guidance = guidance_scale * 1000``; sampling steps
``x += v * (sigma_next - sigma)`` with sigma going 1 -> 0.
"""

from __future__ import annotations

import math

import torch

TIMESTEP_SCALE = 1000.0
GUIDANCE_SCALE_FACTOR = 1000.0


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """``sigma' = s*sigma / (1 + (s-1)*sigma)``; shift > 1 moves mass towards noise."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigmas(
    batch_size: int,
    scheme: str,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Draw training sigmas in (0, 1) on the CPU from ``generator``.

    Args:
        batch_size: number of sigmas.
        scheme: ``uniform`` or ``logit_normal`` (sigmoid of N(logit_mean, logit_std)).
        generator: CPU generator; the only source of randomness.
        shift: applied after drawing (1.0 = none).
        eps: sigmas are clamped to [eps, 1 - eps] so neither end is exactly hit.
    """
    if scheme == "uniform":
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    elif scheme == "logit_normal":
        z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        u = torch.sigmoid(z * logit_std + logit_mean)
    else:
        raise ValueError(f"unknown timestep sampling scheme {scheme!r}")
    return shift_sigmas(u, shift).clamp(eps, 1.0 - eps).float()


def sigma_quantiles(
    quantiles: list[float], scheme: str, logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """The sigmas at fixed quantiles of the training distribution of ``sample_sigmas``.

    Evaluating the loss there gives a deterministic, stratified estimate of the training
    objective: the same sigmas in every run and at every step, so eval losses compare.
    Shift is monotonic, so shifted quantiles are quantiles of the shifted distribution.
    """
    q = torch.tensor(quantiles, dtype=torch.float64)
    if scheme == "uniform":
        u = q
    elif scheme == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.special.ndtri(q))
    else:
        raise ValueError(f"unknown timestep sampling scheme {scheme!r}")
    return shift_sigmas(u, shift).float()


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # [B] -> [B, 1, 1, ...] to broadcast over latent dims
    return sigma.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) * x0 + sigma * noise`` per batch item."""
    s = _expand(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the transformer learns: ``v = noise - x0``."""
    return noise - x0


def timesteps_from_sigmas(sigma: torch.Tensor) -> torch.Tensor:
    """What the transformer receives as ``timestep``: ``sigma * 1000``."""
    return sigma * TIMESTEP_SCALE


def guidance_tensor(guidance_scale: float, batch_size: int) -> torch.Tensor:
    """Embedded guidance for the distilled model: ``guidance_scale * 1000`` per item."""
    return torch.full((batch_size,), guidance_scale * GUIDANCE_SCALE_FACTOR)


def loss_weights(sigma: torch.Tensor, scheme: str, mode_scale: float = 1.29) -> torch.Tensor:
    """Per-item loss weight as a function of sigma (the SD3 schemes).

    ``none``: 1. ``sigma_sqrt``: sigma^-2. ``cosmap``: 2 / (pi * (1 - 2 sigma + 2 sigma^2)).
    ``logit_normal`` (N(0, 1) in logit space) and ``mode`` weight each sigma by the density of
    that SD3 sampling scheme, so uniform sampling plus this weight has the same expected loss
    as sampling from the scheme itself (each density integrates to 1 on (0, 1)).
    """
    s = sigma.double()
    if scheme == "none":
        w = torch.ones_like(s)
    elif scheme == "sigma_sqrt":
        w = s.pow(-2.0)
    elif scheme == "cosmap":
        w = 2.0 / (math.pi * (1.0 - 2.0 * s + 2.0 * s * s))
    elif scheme == "logit_normal":
        logit = torch.log(s / (1.0 - s))
        w = torch.exp(-0.5 * logit**2) / (math.sqrt(2.0 * math.pi) * s * (1.0 - s))
    elif scheme == "mode":
        w = _mode_density(s, mode_scale)
    else:
        raise ValueError(f"unknown loss weighting {scheme!r}")
    return w.float()


def _mode_time(u: torch.Tensor, scale: float) -> torch.Tensor:
    """SD3's mode sampling map u -> t = 1 - u - scale * (cos(pi u / 2)^2 - 1 + u)."""
    return 1.0 - u - scale * (torch.cos(math.pi * u / 2.0) ** 2 - 1.0 + u)


def _mode_density(t: torch.Tensor, scale: float, iters: int = 60) -> torch.Tensor:
    """Density of SD3 mode sampling at t: 1 / |dt/du| at the u with t(u) = t.

    t(u) decreases monotonically on [0, 1] for scale < 1 / (pi/2 - 1), so u is found by
    bisection (pure tensor ops, exact to ~1e-18 after 60 halvings).
    """
    lo, hi = torch.zeros_like(t), torch.ones_like(t)
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_high = _mode_time(mid, scale) > t  # t(mid) above target: move right
        lo = torch.where(too_high, mid, lo)
        hi = torch.where(too_high, hi, mid)
    u = (lo + hi) / 2
    dt_du = -(1.0 + scale) + scale * (math.pi / 2.0) * torch.sin(math.pi * u)
    return 1.0 / dt_du.abs()


def flow_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted MSE, mean over all elements; computed in float32."""
    per_item = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return (weights.to(per_item) * per_item).mean()


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One sampler step: ``x + v * (sigma_next - sigma)``."""
    return x + v * (sigma_next - sigma)
