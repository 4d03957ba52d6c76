"""The training set-up as one named step: ``build_run`` makes everything a run holds before its
first step (accelerator, memory runtime, cached data, model with LoRA, optimizer, schedule).

``train()``, ``bench/train_step.py`` and the tests build a run here, so the step they time or
check is the step a user's run takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hv_tune.config import Config
from hv_tune.data.cache import CachedDataset
from hv_tune.export.save import check_save_formats
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.memory.runtime import MemoryRuntime
from hv_tune.models import LoadOptions, ModelSpec, get_spec
from hv_tune.models.base import resolve_dtype
from hv_tune.training.cache_check import prepare_cache
from hv_tune.training.guard import on_main_process
from hv_tune.training.optim import build_optimizer, build_scheduler


@dataclass
class TrainingRun:
    """What one training run holds before its first step.

    Attributes:
        transformer: the model with its float32 LoRA, fitted by ``memory`` and wrapped by ``accelerator``.
        lora_config: the PEFT config of the adapter (saved with every LoRA file).
        opts: how the base model was loaded (path, dtype); the VAE config and previews use it too.
    """

    cfg: Config
    spec: ModelSpec
    accelerator: Any
    memory: MemoryRuntime
    dataset: CachedDataset
    opts: LoadOptions
    transformer: torch.nn.Module
    lora_config: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build_run(cfg: Config, accelerator: Any = None) -> TrainingRun:
    """Build a run as configured: accelerator (when none is given), memory runtime (device checks
    first), the cache (built or rebuilt when missing or stale), the transformer with a fresh seeded
    LoRA, optimizer and schedule, the last two prepared by the accelerator.

    Raises:
        ConfigError: a memory setting the device cannot run, a layout of ``save.formats`` without a
            name for a targeted layer.
        DataError: the cache cannot be built.
    """
    spec = get_spec(cfg.model.name)
    accelerator = accelerator or make_accelerator(cfg, Path(cfg.output_dir))
    memory = MemoryRuntime.from_config(cfg, accelerator.device, accelerator.num_processes)
    dataset = ensure_cache(spec, cfg, accelerator)
    opts = LoadOptions.from_config(cfg.model, resolve_dtype(cfg.model.base_dtype, accelerator.device))
    transformer, lora_config = load_lora_model(spec, cfg, opts, memory)
    accelerator.print(memory.summary())
    optimizer = build_optimizer(lora_parameters(transformer), cfg.training)
    scheduler = build_scheduler(optimizer, cfg.training)
    # the memory runtime placed the model (swapped blocks must stay in CPU memory)
    transformer, optimizer = accelerator.prepare(transformer, optimizer, device_placement=[False, None])
    return TrainingRun(cfg, spec, accelerator, memory, dataset, opts, transformer, lora_config, optimizer, scheduler)


def ensure_cache(spec: ModelSpec, cfg: Config, accelerator: Any) -> CachedDataset:
    """The cached dataset; (re)builds the cache first (main process) when missing, stale or broken."""
    on_main_process(accelerator, lambda: prepare_cache(spec, cfg, str(accelerator.device)))
    accelerator.wait_for_everyone()
    return CachedDataset(cfg.data.cache_dir)


#: ``training.report_to`` -> Accelerate's tracker names
TRACKERS = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}


def make_accelerator(cfg: Config, out: Path) -> Any:
    """The run's ``Accelerator``: mixed precision (``auto`` = bf16 on CUDA) and the trackers of
    ``training.report_to``: TensorBoard event files in ``out/logs/hv-tune``; Weights & Biases runs in
    ``out/logs/wandb``, offline unless the user set ``WANDB_MODE`` (nothing logs in on its own)."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mp = cfg.training.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    trackers = TRACKERS[cfg.training.report_to]
    init_kwargs: dict[str, Any] = {}
    if "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        init_kwargs["wandb"] = {"dir": str(out / "logs"), "name": out.name}
    accelerator = Accelerator(
        mixed_precision=mp,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    accelerator.init_trackers("hv-tune", init_kwargs=init_kwargs)
    return accelerator


def load_lora_model(spec: ModelSpec, cfg: Config, opts: LoadOptions, memory: MemoryRuntime) -> tuple[Any, Any]:
    """Transformer with a fresh float32 LoRA (seeded), fitted to the device by ``memory``."""
    from accelerate.utils import set_seed

    transformer = spec.load_transformer(opts)
    targets = resolve_targets(spec, transformer, cfg.lora.targets)
    check_save_formats(spec, targets, cfg.save.formats)  # before any step (see trainer.check_export_layouts)
    lora_cfg = peft_config(cfg.lora, targets, [n for n, _ in transformer.named_modules()])
    set_seed(cfg.training.seed)
    add_lora(transformer, lora_cfg)
    if cfg.training.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return memory.prepare(spec, transformer), lora_cfg
