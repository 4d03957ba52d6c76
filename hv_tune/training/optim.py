"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from hv_tune.config import TrainingConfig
from hv_tune.errors import ConfigError


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``total``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.Optimizer:
    kw = dict(
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    if not torch.cuda.is_available():
        raise ConfigError("config key 'training.optimizer': adamw8bit needs a CUDA GPU; use adamw on CPU")
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, **kw)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.lr_warmup_steps, cfg.max_steps, cfg.lr_scheduler)
    )
