"""The training loop: cache -> LoRA on the transformer -> checkpoints -> LoRA file.

``train`` reads as a table of contents; each helper below does one thing.
"""

from __future__ import annotations

import contextlib
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from hv_tune.config import Config, to_dict
from hv_tune.data.cache import collate
from hv_tune.data.sampler import DataState, epoch_batches, rank_batches
from hv_tune.errors import DataError, Interrupted, TrainingError
from hv_tune.export.formats import Layout, to_layout
from hv_tune.export.lora_io import adapter_metadata
from hv_tune.export.save import check_save_formats, save_trained_lora
from hv_tune.io import atomic_write_text, count, is_disk_full
from hv_tune.lora import (
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    lora_type_options,
    resolve_target_names,
)
from hv_tune.models import ModelSpec, get_spec
from hv_tune.models.base import LORA_FILE
from hv_tune.training.checkpoint import (
    LR_SCHEDULE,
    Checkpoint,
    TrainerState,
    checkpoint_dir,
    disk_full_error,
    latest_checkpoint,
    save_checkpoint,
    set_rng_state,
    state_bytes,
)
from hv_tune.training.guard import (
    StopOnSignal,
    claim_output_dir,
    ensure_free_space,
    on_main_process,
    signal_label,
)
from hv_tune.training.optim import eval_weights, set_train_mode
from hv_tune.training.resume import apply_hyperparameters, check_resume, find_resume
from hv_tune.training.setup import TrainingRun, build_run, make_accelerator
from hv_tune.training.step import step_generator, training_loss
from hv_tune.training.validation import Validator, preview_images


@dataclass
class TrainResult:
    """Where the LoRA went, and this process's final adapter weights (float32, CPU)."""

    lora_path: Path
    adapter: dict[str, torch.Tensor]
    steps: int


def train(
    cfg: Config, resume: str | bool | None = None, overwrite: bool = False, resume_anyway: bool = False
) -> TrainResult:
    """Train a LoRA as configured and save it as ``output_dir/pytorch_lora_weights.safetensors``.

    Args:
        resume: ``True`` resumes from the newest readable checkpoint in ``output_dir`` (if any),
            a path resumes from that checkpoint folder, ``None``/``False`` starts fresh.
        overwrite: a fresh run into a folder holding another run moves that run aside first.
        resume_anyway: resume although trajectory keys changed (the run is marked not exact).

    Raises:
        ConfigError: another run in ``output_dir``; a resume whose config differs (listed).
        DiskFullError: not enough space for a checkpoint or the final LoRA (nothing good is lost).
        Interrupted: SIGINT/SIGTERM; a checkpoint of the last finished step was saved.
    """
    from accelerate import PartialState

    out = Path(cfg.output_dir)
    spec = get_spec(cfg.model.name)
    check_export_layouts(spec, cfg)
    preview_images(spec, cfg)  # a missing or unreadable preview image stops the run before anything loads
    process = PartialState()
    found: list[Any] = []  # the main process goes first: it sets broken checkpoints aside
    on_main_process(process, lambda: found.extend(check_run(cfg, resume, overwrite, resume_anyway, claim=True)))
    if not process.is_main_process:
        found.extend(check_run(cfg, resume, overwrite, resume_anyway, claim=False))
    ckpt, changes = found
    run = build_run(cfg, make_accelerator(cfg, out))
    accelerator, transformer = run.accelerator, run.transformer
    state = TrainerState(0, DataState(), cfg.lora.rank, cfg.lora.alpha, cfg.training.seed, lr_schedule=LR_SCHEDULE,
                         lora_type=cfg.lora.type, lora_options=lora_type_options(cfg.lora))
    if ckpt is not None:
        state = restore(ckpt, run, changes)
    config_text = run_config_text(cfg, state)
    if accelerator.is_main_process:
        atomic_write_text(out / "config.yaml", config_text)
    loop = TrainLoop(run)
    loop.config_text = config_text
    loop.run(state)
    with eval_weights(run.optimizer):  # schedule-free AdamW: the averaged weights are the result
        adapter = lora_state_dict(accelerator.unwrap_model(transformer))
    return TrainResult(finish(spec, accelerator, adapter, run.lora_config, out, cfg), adapter, state.step)


def check_export_layouts(spec: ModelSpec, cfg: Config) -> None:
    """Every targeted layer has a name in each layout of ``save.formats`` (checked on the meta model,
    before any weight is loaded or step trained). Raises ``ConfigError`` naming the layers.

    A transformer config that cannot be read yet (a missing folder, a single-file checkpoint)
    skips this early check: ``load_lora_model`` checks the loaded model's layers instead.
    """
    if all(to_layout(f) == Layout.DIFFUSERS for f in cfg.save.formats):
        return
    try:
        names = list(spec.linear_shapes(cfg.model.path))
    except (OSError, ValueError):
        return
    check_save_formats(spec, resolve_target_names(spec, names, cfg.lora.targets), cfg.save.formats)


def check_run(
    cfg: Config, resume: str | bool | None, overwrite: bool, anyway: bool, claim: bool
) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint to resume from and the accepted config changes; claims ``output_dir`` if ``claim``."""
    out = Path(cfg.output_dir)
    ckpt = find_resume(resume, out / "checkpoints")
    changes = check_resume(ckpt, cfg, out / "config.yaml", anyway) if ckpt else []
    if claim:
        claim_output_dir(out, resuming=bool(resume), overwrite=overwrite)
    return ckpt, changes


def run_config_text(cfg: Config, state: TrainerState) -> str:
    """The resolved config as YAML; a run resumed with changed trajectory keys says so on top."""
    head = ""
    if not state.exact:
        head = "# NOT EXACT: resumed with --resume-anyway over changed keys, so this run differs from an\n" \
               "# uninterrupted one with this config:\n" + "".join(f"#   {c}\n" for c in state.changes)
    return head + yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- resume and finish


def restore(ckpt: Checkpoint, run: TrainingRun, changes: list[str]) -> TrainerState:
    """Put adapter, optimizer, schedule, RNG and data position back from a checkpoint.

    ``changes`` (accepted with --resume-anyway) make the config's values take effect and
    mark the run as not exact.
    """
    cfg, accelerator, optimizer, scheduler = run.cfg, run.accelerator, run.optimizer, run.scheduler
    load_lora_state_dict(accelerator.unwrap_model(run.transformer), ckpt.adapter)
    optimizer.load_state_dict(ckpt.optimizer)
    set_train_mode(optimizer, True)  # schedule-free: the checkpoint holds its averaged weights (eval mode)
    scheduler.load_state_dict(ckpt.scheduler)
    set_rng_state(ckpt.rng)
    state = ckpt.state
    state.lr_schedule = LR_SCHEDULE  # an older schedule was accepted by check_resume (same lr from here on)
    if changes:
        apply_hyperparameters(optimizer, scheduler, cfg)
        state.exact, state.changes = False, state.changes + changes
        state.lora_alpha, state.seed = cfg.lora.alpha, cfg.training.seed
        accelerator.print("resuming with changed keys (the run is no longer exact):\n  " + "\n  ".join(changes))
    accelerator.print(f"resumed from {ckpt.path} at step {state.step}")
    return state


def finish(
    spec: ModelSpec, accelerator: Any, adapter: dict[str, torch.Tensor], lora_cfg: Any, out: Path, cfg: Config
) -> Path:
    """Save the final LoRA in diffusers format and ``save.formats`` (atomically); close the trackers."""
    final = out / LORA_FILE
    if accelerator.is_main_process:
        needed = state_bytes(adapter) // 3 * (1 + len(cfg.save.formats))
        ensure_free_space(out, needed, "the final LoRA", latest_checkpoint(out / "checkpoints"))
        try:
            for line in save_trained_lora(spec, out, adapter, lora_cfg, cfg.save.formats, cfg.model.path):
                accelerator.print(line)
        except Exception as e:  # safetensors and torch report a full disk with their own types
            if not is_disk_full(e):
                raise
            raise disk_full_error(out, needed, "the final LoRA", latest_checkpoint(out / "checkpoints")) from e
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


# ----------------------------------------------------------------------------- loop


class TrainLoop:
    """Runs optimizer steps from a ``TrainerState`` to ``training.max_steps``."""

    def __init__(self, run: TrainingRun):
        cfg, spec, accelerator, opts = run.cfg, run.spec, run.accelerator, run.opts
        self.cfg, self.spec, self.acc, self.memory = cfg, spec, accelerator, run.memory
        self.model, self.optimizer, self.scheduler = run.transformer, run.optimizer, run.scheduler
        self.dataset = run.dataset
        self.vae_config = spec.load_vae_config(opts)
        self.model_dtype = opts.dtype
        self.params = lora_parameters(accelerator.unwrap_model(run.transformer))
        self.ckpt_root = Path(cfg.output_dir) / "checkpoints"
        self._epoch_iter: Any = None
        self.validator = Validator(cfg, spec, accelerator, opts, self.vae_config)
        self.config_text = ""  # the run's config, saved into each checkpoint (compared on resume)
        self.step_lr = 0.0  # the learning rate the last optimizer step used (logged and shown)

    def run(self, state: TrainerState) -> None:
        t = self.cfg.training
        bar = tqdm(total=t.max_steps, initial=state.step, desc="train", unit="step", disable=not self.acc.is_main_process)
        with StopOnSignal() as stop:
            while state.step < t.max_steps:
                loss = self.optimizer_step(state)
                state.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.step_lr:.2e}")  # the lr this step used
                if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                    self.save(state)
                if self.validator.due(state.step):
                    with eval_weights(self.optimizer):  # schedule-free AdamW previews its averaged weights
                        self.validator.maybe_run(state.step, self.model)
                if state.step < t.max_steps and self.stop_requested(stop):
                    bar.close()
                    path = self.save(state)
                    name = signal_label(stop.signum or signal.SIGINT)
                    raise Interrupted(f"stopped by {name} at step {state.step}: checkpoint saved to {path}; "
                                      "continue with --resume", stop.signum or signal.SIGINT)
        bar.close()

    def stop_requested(self, stop: StopOnSignal) -> bool:
        """Whether any process got a stop signal (all processes agree, so all of them save)."""
        flag = torch.tensor([1.0 if stop.signum else 0.0], device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return flag.item() > 0

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
        # the lr this step uses: after scheduler.step() the groups already hold the next step's
        self.step_lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.acc.reduce(torch.stack(losses).mean(), reduction="mean").item()
        if (state.step + 1) % t.log_every == 0:
            logs = {"loss": mean_loss, "lr": self.step_lr, "grad_norm": float(grad_norm)}
            if "d" in self.optimizer.param_groups[0]:  # Prodigy: its step size is d * lr (d after this step)
                logs["prodigy_d"] = float(self.optimizer.param_groups[0]["d"])
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
            [e.bucket for e in entries], [len(e.captions) for e in entries],
            t.batch_size, t.seed, data.epoch, self.acc.num_processes,
            repeats=[e.repeats for e in entries], caption_dropout=[e.caption_dropout for e in entries],
        )
        mine = rank_batches(all_batches, self.acc.process_index, self.acc.num_processes)
        if not mine:
            raise DataError(
                f"cache {d.cache_dir} has {count(len(entries), 'item')}: too few for one batch per process "
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

    def save(self, state: TrainerState) -> Path:
        """Write a checkpoint of ``state`` (main process), after checking there is room for it: the resume
        state plus the LoRA files a run stopped here would end with (``save_trained_lora``)."""
        with eval_weights(self.optimizer):  # schedule-free AdamW: save its averaged weights (all processes)
            self._save(state)
        self.acc.wait_for_everyone()
        return checkpoint_dir(self.ckpt_root, state.step)

    def _save(self, state: TrainerState) -> None:
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model)
            adapter, lora_cfg = lora_state_dict(model), model.peft_config["default"]
            what = f"the checkpoint of step {state.step}"
            needed = state_bytes(adapter) * (4 + len(self.cfg.save.formats)) // 3  # + one LoRA file per layout
            ensure_free_space(self.ckpt_root, needed, what, latest_checkpoint(self.ckpt_root))
            save_checkpoint(self.ckpt_root, state, adapter, self.optimizer, self.scheduler,
                            self.cfg.training.checkpoints_to_keep, self.config_text,
                            adapter_metadata(self.spec, lora_cfg), lambda tmp: save_trained_lora(
                                self.spec, tmp, adapter, lora_cfg, self.cfg.save.formats, self.cfg.model.path))
