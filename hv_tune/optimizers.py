"""The optimizer and schedule names of ``training.optimizer`` / ``training.lr_scheduler``, the defaults from each
optimizer's guide, and the checks the config runs at load (no torch import here: ``hv_tune.config`` reads it).

``hv_tune.training.optim`` builds the optimizer and the schedule from these.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

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
