"""The training loop: cache -> LoRA on the transformer -> checkpoints -> LoRA file.

``train`` reads as a table of contents; each helper below does one thing.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hv_tune.config import Config, save_config
from hv_tune.data.cache import INDEX_FILE, CachedDataset, collate
from hv_tune.data.encode import build_cache
from hv_tune.data.sampler import DataState, epoch_batches, rank_batches
from hv_tune.errors import ConfigError, DataError, TrainingError
from hv_tune.export.save import save_trained_lora
from hv_tune.lora import (
    add_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    peft_config,
    resolve_targets,
)
from hv_tune.memory.runtime import MemoryRuntime
from hv_tune.models import LoadOptions, ModelSpec, get_spec
from hv_tune.models.base import resolve_dtype
from hv_tune.training.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from hv_tune.training.optim import build_optimizer, build_scheduler
from hv_tune.training.step import step_generator, training_loss
from hv_tune.training.validation import Validator

LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class TrainResult:
    """Where the LoRA went, and this process's final adapter weights (float32, CPU)."""

    lora_path: Path
    adapter: dict[str, torch.Tensor]
    steps: int


def train(cfg: Config, resume: str | bool | None = None) -> TrainResult:
    """Train a LoRA as configured and save it as ``output_dir/pytorch_lora_weights.safetensors``.

    Args:
        resume: ``True`` resumes from the newest checkpoint in ``output_dir`` (if any),
            a path resumes from that checkpoint folder, ``None``/``False`` starts fresh.
    """
    out = Path(cfg.output_dir)
    spec = get_spec(cfg.model.name)
    ckpt_path = find_resume(resume, out / "checkpoints")
    accelerator = make_accelerator(cfg, out)
    memory = MemoryRuntime.from_config(cfg, accelerator.device, accelerator.num_processes)
    dataset = ensure_cache(spec, cfg, accelerator)
    opts = LoadOptions.from_config(cfg.model, resolve_dtype(cfg.model.base_dtype, accelerator.device))
    transformer, lora_cfg = load_lora_model(spec, cfg, opts, memory)
    accelerator.print(memory.summary())
    optimizer = build_optimizer(lora_parameters(transformer), cfg.training)
    scheduler = build_scheduler(optimizer, cfg.training)
    # the memory runtime placed the model (swapped blocks must stay in CPU memory)
    transformer, optimizer = accelerator.prepare(transformer, optimizer, device_placement=[False, None])
    state = TrainerState(0, DataState(), cfg.lora.rank, cfg.lora.alpha, cfg.training.seed)
    if ckpt_path is not None:
        state = restore(ckpt_path, cfg, accelerator, transformer, optimizer, scheduler)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    loop = TrainLoop(cfg, spec, accelerator, transformer, optimizer, scheduler, dataset, opts, memory)
    loop.run(state)
    adapter = lora_state_dict(accelerator.unwrap_model(transformer))
    return TrainResult(finish(spec, accelerator, adapter, lora_cfg, out, cfg), adapter, state.step)


# ----------------------------------------------------------------------------- set-up


def ensure_cache(spec: ModelSpec, cfg: Config, accelerator: Any) -> CachedDataset:
    """The cached dataset; builds the cache first (main process) when it is missing."""
    index = Path(cfg.data.cache_dir) / INDEX_FILE
    if not index.is_file() and cfg.data.sources:
        if accelerator.is_main_process:
            accelerator.print(f"no cache at {cfg.data.cache_dir}: running the cache step first")
            accelerator.print(build_cache(spec, cfg, str(accelerator.device)).table())
        accelerator.wait_for_everyone()
    return CachedDataset(cfg.data.cache_dir)


def find_resume(resume: str | bool | None, ckpt_root: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        found = latest_checkpoint(ckpt_root)
        print(f"resuming from {found}" if found else f"no checkpoint in {ckpt_root}; starting from scratch")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder (they live in {ckpt_root})")
    return path


def make_accelerator(cfg: Config, out: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mp = cfg.training.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(
        mixed_precision=mp,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    accelerator.init_trackers("hv-tune")
    return accelerator


def load_lora_model(spec: ModelSpec, cfg: Config, opts: LoadOptions, memory: MemoryRuntime) -> tuple[Any, Any]:
    """Transformer with a fresh float32 LoRA (seeded), fitted to the device by ``memory``."""
    from accelerate.utils import set_seed

    transformer = spec.load_transformer(opts)
    targets = resolve_targets(spec, transformer, cfg.lora.targets)
    lora_cfg = peft_config(cfg.lora, targets)
    set_seed(cfg.training.seed)
    add_lora(transformer, lora_cfg)
    if cfg.training.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return memory.prepare(spec, transformer), lora_cfg


def restore(path: Path, cfg: Config, accelerator: Any, transformer: Any, optimizer: Any, scheduler: Any) -> TrainerState:
    """Put adapter, optimizer, schedule, RNG and data position back from a checkpoint."""
    ckpt = load_checkpoint(path)
    if (ckpt.state.lora_rank, ckpt.state.lora_alpha) != (cfg.lora.rank, cfg.lora.alpha):
        raise ConfigError(
            f"--resume {path}: checkpoint has lora.rank={ckpt.state.lora_rank}, lora.alpha={ckpt.state.lora_alpha} "
            f"but the config says {cfg.lora.rank}, {cfg.lora.alpha}; resume with the same LoRA shape"
        )
    load_lora_state_dict(accelerator.unwrap_model(transformer), ckpt.adapter)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    set_rng_state(ckpt.rng)
    accelerator.print(f"resumed from {path} at step {ckpt.state.step}")
    return ckpt.state


def finish(
    spec: ModelSpec, accelerator: Any, adapter: dict[str, torch.Tensor], lora_cfg: Any, out: Path, cfg: Config
) -> Path:
    """Save the final LoRA in diffusers format and ``save.formats`` (atomically); close the trackers."""
    final = out / LORA_FILE
    if accelerator.is_main_process:
        for line in save_trained_lora(spec, out, adapter, lora_cfg, cfg.save.formats, cfg.model.path):
            accelerator.print(line)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


# ----------------------------------------------------------------------------- loop


class TrainLoop:
    """Runs optimizer steps from a ``TrainerState`` to ``training.max_steps``."""

    def __init__(self, cfg, spec, accelerator, transformer, optimizer, scheduler, dataset, opts, memory=None):
        self.cfg, self.spec, self.acc = cfg, spec, accelerator
        self.memory = memory or MemoryRuntime.from_config(cfg, accelerator.device, accelerator.num_processes)
        self.model, self.optimizer, self.scheduler = transformer, optimizer, scheduler
        self.dataset = dataset
        self.vae_config = spec.load_vae_config(opts)
        self.model_dtype = opts.dtype
        self.params = lora_parameters(accelerator.unwrap_model(transformer))
        self.ckpt_root = Path(cfg.output_dir) / "checkpoints"
        self._epoch_iter: Any = None
        self.validator = Validator(cfg, spec, accelerator, opts, self.vae_config)

    def run(self, state: TrainerState) -> None:
        t = self.cfg.training
        bar = tqdm(total=t.max_steps, initial=state.step, desc="train", unit="step", disable=not self.acc.is_main_process)
        while state.step < t.max_steps:
            loss = self.optimizer_step(state)
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                self.save(state)
            self.validator.maybe_run(state.step, self.model)
        bar.close()

    def optimizer_step(self, state: TrainerState) -> float:
        t = self.cfg.training
        losses = []
        for micro in range(t.gradient_accumulation_steps):
            batch = self.next_batch(state)
            gen = step_generator(t.seed, state.step, micro, self.acc.process_index)
            last = micro == t.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last else self.acc.no_sync(self.model):
                with self.memory.forward_context():
                    loss = training_loss(
                        self.spec, self.model, batch, self.cfg.objective, self.vae_config,
                        t.guidance_scale, gen, self.model_dtype,
                    )
                self.check_finite(loss, state, batch)
                self.acc.backward(loss / t.gradient_accumulation_steps)
                self.memory.after_backward()
            losses.append(loss.detach())
        grad_norm = self.acc.clip_grad_norm_(self.params, t.max_grad_norm or math.inf)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.acc.reduce(torch.stack(losses).mean(), reduction="mean").item()
        if (state.step + 1) % t.log_every == 0:
            logs = {"loss": mean_loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            self.acc.log(logs, step=state.step + 1)
        return mean_loss

    def next_batch(self, state: TrainerState) -> dict[str, torch.Tensor]:
        """The next batch of this rank, rolling over to a new epoch when one ends."""
        if self._epoch_iter is None:
            self._epoch_iter = self.epoch_loader(state.data)
        batch = next(self._epoch_iter, None)
        if batch is None:
            state.data = DataState(epoch=state.data.epoch + 1, position=0)
            self._epoch_iter = self.epoch_loader(state.data)
            batch = next(self._epoch_iter)
        state.data.position += 1
        return {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}

    def epoch_loader(self, data: DataState):
        t, d = self.cfg.training, self.cfg.data
        entries = self.dataset.entries
        all_batches = epoch_batches(
            [e.bucket for e in entries], [len(e.texts) for e in entries],
            t.batch_size, t.seed, data.epoch, self.acc.num_processes,
            repeats=[e.repeats for e in entries], caption_dropout=[e.caption_dropout for e in entries],
        )
        mine = rank_batches(all_batches, self.acc.process_index, self.acc.num_processes)
        if not mine:
            raise DataError(
                f"cache {d.cache_dir} has {len(entries)} items: too few for one batch per process "
                f"({self.acc.num_processes} processes, batch size {t.batch_size})"
            )
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=mine[data.position :],
            collate_fn=collate,
            num_workers=d.num_workers,
            pin_memory=self.acc.device.type == "cuda",
            generator=torch.Generator(),  # keep the global RNG (LoRA dropout) untouched
        )
        return iter(loader)

    def check_finite(self, loss: torch.Tensor, state: TrainerState, batch: dict[str, torch.Tensor]) -> None:
        """Stop every process on a NaN/inf loss, before it reaches the weights."""
        ok = torch.isfinite(loss.detach()).float().reshape(1)
        if self.acc.num_processes > 1:
            ok = self.acc.gather(ok)
        if ok.min().item() < 1:
            last = latest_checkpoint(self.ckpt_root)
            items = [self.dataset.entries[i].id for i in batch["index"].tolist()]
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at step {state.step + 1} on items {items}; "
                f"nothing was saved after the last good checkpoint: {last or 'none yet'}. "
                "Lower training.learning_rate, check those cache items, and resume with --resume."
            )

    def save(self, state: TrainerState) -> None:
        if self.acc.is_main_process:
            adapter = lora_state_dict(self.acc.unwrap_model(self.model))
            save_checkpoint(
                self.ckpt_root, state, adapter, self.optimizer, self.scheduler, self.cfg.training.checkpoints_to_keep
            )
        self.acc.wait_for_everyone()
