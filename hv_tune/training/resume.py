"""Resume: find a readable checkpoint, compare its config with the new one, apply changes.

A resumed run is *exact* (bit-identical to an uninterrupted one) only when every key that
shapes the trajectory is unchanged. ``compare`` sorts the differences:

- safe keys (``SAFE_KEYS``: stop step, checkpointing, validation, logging, output formats,
  memory placement) are taken as they are;
- ``STRUCTURAL_KEYS`` (LoRA rank and targets, the adapter type and its options) change the adapter's
  shape: never resumable;
- every other difference changes the trajectory: refused with the list of (key, old, new),
  unless ``--resume-anyway``, after which the new values really take effect (optimizer
  param groups and schedule included) and the run is marked as no longer exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hv_tune.config import Config, to_dict
from hv_tune.errors import ConfigError
from hv_tune.optimizers import FLAT_SCHEDULERS, optimizer_kwargs
from hv_tune.training.checkpoint import (
    LR_SCHEDULE,
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    saved_config,
)

SAFE_KEYS = (
    "output_dir", "data.cache_dir", "data.num_workers", "training.max_steps", "training.checkpoint_every",
    "training.checkpoints_to_keep", "training.log_every", "training.gradient_checkpointing",
    "validation.", "save.", "memory.",
)
STRUCTURAL_KEYS = ("lora.rank", "lora.targets", "lora.type", "lora.lokr.factor", "lora.lokr.decompose_both")


def find_resume(resume: str | bool | None, ckpt_root: Path) -> Checkpoint | None:
    """The checkpoint to resume from, read; a broken newest one is named and the previous used.

    Raises:
        ConfigError: ``resume`` is a path that is no checkpoint, or is broken (naming the file).
    """
    if resume is None or resume is False:
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"--resume {resume}: no such checkpoint folder (they live in {ckpt_root})")
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            good = [p for p in list_checkpoints(path.parent) if p != path]
            hint = f"; resume from another one, e.g. --resume {good[-1]}" if good else ""
            raise CheckpointError(f"{e}{hint}") from e
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            aside = path.with_name(path.name + ".corrupt")
            path.rename(aside)
            print(f"warning: {e}; moved it to {aside.name} and trying the previous checkpoint")
            continue
        print(f"resuming from {path}")
        return ckpt
    print(f"no checkpoint in {ckpt_root}; starting from scratch")
    return None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _is_safe(key: str, cfg: Config) -> bool:
    if key == "training.max_steps" and cfg.training.lr_scheduler not in FLAT_SCHEDULERS:
        return False  # a decaying schedule ends at max_steps: another max_steps is another lr curve
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_KEYS)


def compare(old: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every trajectory key that differs; safe keys are left out.

    Keys only one side knows (added or removed by another hv-tune version) are not compared.
    """
    a, b = _flat(old), _flat(to_dict(cfg))
    keys = sorted(set(a) & set(b))
    return [(k, a[k], b[k]) for k in keys if a[k] != b[k] and not _is_safe(k, cfg)]


def check_resume(ckpt: Checkpoint, cfg: Config, run_config: Path, anyway: bool) -> list[str]:
    """Refuse a resume that would not do what the config says; returns the accepted changes.

    Raises:
        ConfigError: max_steps below the checkpoint's step; a LoRA shape change; trajectory
            changes without ``anyway``. Each names the keys with their old and new values.
    """
    step = ckpt.state.step
    if cfg.training.max_steps < step:
        raise ConfigError(
            f"config key 'training.max_steps' is {cfg.training.max_steps}, below the step of checkpoint "
            f"{ckpt.path} ({step}): training to {cfg.training.max_steps} steps would need an earlier checkpoint "
            f"(--resume PATH), or raise training.max_steps to {step} or more"
        )
    old = saved_config(ckpt, run_config)
    st = ckpt.state
    adapter = {"type": st.lora_type, **({"lokr": st.lora_options} if st.lora_type == "lokr" else {})}
    if old is None:
        old = {"lora": {"rank": st.lora_rank, "alpha": st.lora_alpha, **adapter}, "training": {"seed": st.seed}}
        diffs = [d for d in compare(old, cfg) if d[0] in ("lora.rank", "lora.alpha", "training.seed", *STRUCTURAL_KEYS)]
    else:
        if isinstance(old.get("lora"), dict):  # a config saved before adapter types: the state knows the type
            old["lora"] = {**adapter, **old["lora"]}
        diffs = compare(old, cfg)
    diffs += _schedule_change(ckpt, old)
    listing = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in diffs)
    if any(k == "training.optimizer" for k, _, _ in diffs):
        raise ConfigError(f"--resume {ckpt.path}: training.optimizer cannot change within a run ({listing}): the "
                          "checkpoint holds the other optimizer's state; set it back, or start a new run")
    shape = [k for k, _, _ in diffs if k in STRUCTURAL_KEYS]
    if shape:
        raise ConfigError(
            f"--resume {ckpt.path}: the checkpoint's LoRA has another shape ({listing}); "
            f"{', '.join(shape)} cannot change within a run: set them back, or start a new run in another output_dir"
        )
    if diffs and not anyway:
        raise ConfigError(
            f"--resume {ckpt.path}: these keys differ from the checkpoint's config and change the training "
            f"trajectory: {listing}. Set them back to resume exactly, or pass --resume-anyway to continue "
            "with the new values (the run is then marked as not exact)"
        )
    return [f"step {step}: {k} {o!r} -> {n!r}" for k, o, n in diffs]


def _schedule_change(ckpt: Checkpoint, old: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """A checkpoint of hv-tune's own schedule (before diffusers' replaced it) with warmup steps: the warmup
    differed ((s+1)/N then, s/N now), so it resumes only with --resume-anyway. Without warmup both give
    the same learning rate at every step (constant: 1; cosine: the same formula) and it resumes exactly."""
    if ckpt.state.lr_schedule == LR_SCHEDULE:
        return []
    warmup = ((old or {}).get("training") or {}).get("lr_warmup_steps", 0)
    if not warmup:
        return []
    return [("training.lr_warmup_steps (warmup schedule)", f"{warmup} steps from lr/{warmup} (hv-tune's own)",
             f"{warmup} steps from 0 (diffusers')")]


def apply_hyperparameters(optimizer: Any, scheduler: Any, cfg: Config) -> None:
    """Make the config's optimizer and schedule values take effect over a loaded state.

    ``optimizer.load_state_dict`` restores the saved param groups (lr, betas, ...), and
    ``LambdaLR`` keeps the saved ``base_lrs``: both would silently keep the old values.
    """
    t = cfg.training
    settings = optimizer_kwargs(t)
    for group in optimizer.param_groups:
        group.update({k: v for k, v in settings.items() if k in group}, initial_lr=t.learning_rate)
    scheduler.base_lrs = [t.learning_rate for _ in optimizer.param_groups]
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step
