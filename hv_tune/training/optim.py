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
import importlib
import inspect
import io
from typing import Any

import torch

from hv_tune.errors import ConfigError

#: name -> (module, class, pip requirement)
OPTIMIZERS: dict[str, tuple[str, str, str]] = {
    "adamw": ("torch.optim", "AdamW", "torch"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes>=0.45 (pip install -e .[gpu])"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt==1.1.2"),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    "came": ("pytorch_optimizer", "CAME", "pytorch-optimizer==4.1.0"),
    "adamw_schedulefree": ("schedulefree", "AdamWScheduleFree", "schedulefree==1.4.1"),
}

#: Settings each optimizer's own guide recommends for fine-tuning diffusion models; ``optimizer_args`` wins.
#: prodigy: its README ("safeguard_warmup=True, use_bias_correction=True ... when training diffusion
#: models"); adafactor: transformers' docs and musubi-tuner's guide for an external learning rate and schedule
#: (no relative step, no parameter scaling, no warmup init).
GUIDE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prodigy": {"use_bias_correction": True, "safeguard_warmup": True},
    "adafactor": {"relative_step": False, "scale_parameter": False, "warmup_init": False},
}

#: ``training.learning_rate`` when the config leaves it unset: Prodigy's lr multiplies its own estimate
#: (its README: "We recommend using lr=1."), the others take a step size.
DEFAULT_LR = {"prodigy": 1.0}
DEFAULT_LR_OTHERS = 1e-4

#: schedules of diffusers' get_scheduler that hv-tune offers (piecewise_constant needs rules we do not take)
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
#: schedules that keep the learning rate flat after warmup (schedule-free AdamW takes only these)
FLAT_SCHEDULERS = ("constant", "constant_with_warmup")


def default_learning_rate(optimizer: str) -> float:
    """``training.learning_rate`` for an unset key: 1.0 for Prodigy, 1e-4 otherwise."""
    return DEFAULT_LR.get(optimizer, DEFAULT_LR_OTHERS)


def optimizer_class(name: str) -> type:
    """The optimizer class of ``training.optimizer`` ``name``, imported.

    Raises:
        ConfigError: naming the key and the pip command when the package is not installed.
    """
    module, cls, requirement = OPTIMIZERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(f"config key 'training.optimizer': {name} needs the package {requirement.split()[0]}, "
                          f"which is not installed ({e}); install it with `pip install {requirement}`, "
                          "or choose another optimizer") from e


def optimizer_kwargs(cfg: Any) -> dict[str, Any]:
    """The keyword arguments (besides the parameters) of ``cfg.optimizer``'s constructor.

    Args:
        cfg: the ``training`` section (``TrainingConfig``).
    """
    name = cfg.optimizer
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    common: dict[str, Any] = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    if name in ("adamw", "adamw8bit", "prodigy", "adamw_schedulefree"):
        common.update(betas=betas, eps=cfg.adam_epsilon)
    elif name == "came":  # a third beta (squared update residuals): CAME's own default
        common.update(betas=(*betas, 0.9999))
    return {**common, **GUIDE_DEFAULTS.get(name, {}), **dict(cfg.optimizer_args)}


def check_optimizer_args(cfg: Any) -> None:
    """Every key of ``training.optimizer_args`` is a constructor argument of the chosen optimizer.

    Raises:
        ConfigError: a missing package, or an unknown argument (named, with the ones it takes).
    """
    cls = optimizer_class(cfg.optimizer)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [n for n in params if n not in ("self", "params", "kwargs")]
    for key in cfg.optimizer_args:
        if key == "params" or (key not in known and not takes_any):
            raise ConfigError(f"config key 'training.optimizer_args.{key}': {cfg.optimizer} "
                              f"({cls.__module__}.{cls.__name__}) takes no argument {key!r}; it takes "
                              f"{', '.join(known)}")


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


def set_train_mode(optimizer: Any, train: bool) -> None:
    """Put a schedule-free optimizer's parameters at its training point ``y`` (``train``) or at the
    averaged point ``x`` that is evaluated and saved; a no-op for every other optimizer."""
    if not is_schedule_free(optimizer):
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    if train:
        inner.train()
    else:
        inner.eval()


@contextlib.contextmanager
def eval_weights(optimizer: Any):
    """Within the block, a schedule-free optimizer's parameters are its averaged weights ``x`` (what
    previews render and checkpoints save); they return to the training point afterwards. Both moves
    are the library's own ``eval()``/``train()``, so a run that saved here and one resumed from the
    save continue from the same numbers."""
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
