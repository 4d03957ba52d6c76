"""Optimizer and learning-rate schedule, both from maintained libraries (none of them is our code).

Optimizers (``training.optimizer``), each a class of the package named (docs/decisions.md says why):

============================  =============================================  ==========================
name                          class                                          package
============================  =============================================  ==========================
``adamw``                     ``torch.optim.AdamW``                          torch
``adamw8bit``                 ``bitsandbytes.optim.AdamW8bit`` (CUDA only)   bitsandbytes (``.[gpu]``)
``prodigy``                   ``prodigyopt.Prodigy``                         prodigyopt (the authors')
``adafactor``                 ``transformers.optimization.Adafactor``        transformers
``came``                      ``pytorch_optimizer.CAME``                     pytorch-optimizer
``adamw_schedulefree``        ``schedulefree.AdamWScheduleFree``             schedulefree (Meta's)
============================  =============================================  ==========================

The keyword arguments are, in order of precedence: ``training.optimizer_args``, then the
settings each optimizer's own guide gives for this use (``GUIDE_DEFAULTS``), then the common
keys (``learning_rate``, ``adam_beta1/2``, ``adam_epsilon``, ``weight_decay``) where the
optimizer takes them. Every optimizer keeps its whole state (Prodigy's ``d``, schedule-free's
``z`` and averaging weights) in ``state_dict()``, which the checkpoint saves.

Schedules (``training.lr_scheduler``) are diffusers' ``get_scheduler`` (a ``LambdaLR``).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch

from hv_tune.errors import ConfigError
from hv_tune.optimizers import optimizer_class, optimizer_kwargs


def build_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optimizer`` over ``params``; schedule-free AdamW starts in train mode.

    Raises:
        ConfigError: adamw8bit without CUDA, a missing package, an argument the optimizer refuses.
    """
    if cfg.optimizer == "adamw8bit" and not torch.cuda.is_available():
        raise ConfigError("config key 'training.optimizer': adamw8bit needs a CUDA GPU; use adamw on CPU")
    cls = optimizer_class(cfg.optimizer)
    kwargs = optimizer_kwargs(cfg)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # prodigyopt prints a line about its weight decay
            optimizer = cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config keys 'training.optimizer'/'training.optimizer_args': {cfg.optimizer} "
                          f"refused its settings {kwargs}: {e}") from e
    set_train_mode(optimizer, True)
    return optimizer


def is_schedule_free(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the one an ``AcceleratedOptimizer`` wraps) keeps a train/eval mode."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(inner.param_groups) and "train_mode" in inner.param_groups[0]


#: optimizer-state key holding a schedule-free parameter's training point ``y`` while the parameter holds ``x``
TRAIN_POINT = "hv_tune_y"


@torch.no_grad()
def set_train_mode(optimizer: Any, train: bool) -> None:
    """Put a schedule-free optimizer's parameters at its training point ``y`` (``train``) or at the
    averaged point ``x`` that is evaluated and saved; a no-op for every other optimizer.

    ``eval()`` is the library's; ``y`` is kept in the optimizer state (``TRAIN_POINT``, so a checkpoint
    saved in eval mode holds it) and put back exactly, because the library's ``train()`` recomputes it
    from ``x`` and ``z`` with rounding: saves and previews would nudge the run, and a resumed run would
    not continue from the same numbers. Without a kept ``y`` (a fresh optimizer) it is the library's ``train()``.
    """
    if not is_schedule_free(optimizer):
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for group in inner.param_groups for p in group["params"]]
    if not train:
        if inner.param_groups[0]["train_mode"]:
            kept = [p.detach().clone() for p in params]
            inner.eval()
            for p, y in zip(params, kept):
                if "z" in inner.state[p]:
                    inner.state[p][TRAIN_POINT] = y
        return
    if inner.param_groups[0]["train_mode"]:
        return
    if all(TRAIN_POINT in inner.state[p] for p in params if "z" in inner.state[p]):
        for p in params:
            if TRAIN_POINT in inner.state[p]:
                p.copy_(inner.state[p].pop(TRAIN_POINT))
        for group in inner.param_groups:
            group["train_mode"] = True
    else:
        inner.train()


@contextlib.contextmanager
def eval_weights(optimizer: Any):
    """Within the block, a schedule-free optimizer's parameters are its averaged weights ``x`` (what
    previews render and checkpoints save); afterwards they are exactly the training point again
    (``set_train_mode``), so a run that saved or previewed here, one that did not, and one resumed
    from the save all continue from the same numbers."""
    if not is_schedule_free(optimizer):
        yield
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    was_training = inner.param_groups[0]["train_mode"]
    set_train_mode(optimizer, False)
    try:
        yield
    finally:
        set_train_mode(optimizer, was_training)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' ``get_scheduler(cfg.lr_scheduler)`` over ``cfg.max_steps`` optimizer steps.

    Warmup (``lr_warmup_steps``) is diffusers': step ``s`` of the warmup trains at ``s / warmup * lr``,
    so the first step's lr is 0. ``lr_num_cycles`` (cosine_with_restarts) and ``lr_power`` (polynomial,
    decaying to diffusers' ``lr_end`` 1e-7) are passed on.
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_steps,
        num_cycles=cfg.lr_num_cycles, power=cfg.lr_power,
    )
