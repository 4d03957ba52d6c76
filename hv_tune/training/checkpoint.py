"""Resumable checkpoints: ``OUTPUT_DIR/checkpoints/step_NNNNNNNN/``.

Each checkpoint folder is written under a temporary name and renamed when complete, so
a run killed mid-save leaves only a ``.tmp-*`` folder that resume ignores. Contents:

- for resuming: ``adapter.safetensors`` (the float32 PEFT state dict, exactly as trained; its
  metadata holds the model family and the PEFT config, so every verb also reads it at the trained
  strength), ``optimizer.pt`` and ``scheduler.pt`` (state dicts), ``rng.pt`` (torch CPU/CUDA RNG
  states), ``trainer_state.json`` (step, data position, LoRA shape and adapter type with its
  options, whether the run is still exact), ``config.yaml`` (the run's config, compared on resume);
- for using: the LoRA files a run stopped at this step would end with (``extra``, written by the
  trainer: ``pytorch_lora_weights.safetensors`` and each layout of ``save.formats``, the same
  bytes). Resume does not read them.

Tensors are loaded with ``weights_only=True``.

A checkpoint that cannot be read is reported by name (``CheckpointError``); pruning
(``checkpoints_to_keep``) counts only complete checkpoints, so it never deletes the last
good one because of a broken newer one.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hv_tune.data.sampler import DataState
from hv_tune.errors import ConfigError, DiskFullError
from hv_tune.io import (
    atomic_directory,
    free_bytes,
    is_disk_full,
    mb,
    safetensors_problem,
    sort_safetensors_metadata,
)

STEP_DIR = re.compile(r"^step_(\d{8})$")
#: ``TrainerState.lr_schedule`` of checkpoints written with diffusers' get_scheduler schedules
LR_SCHEDULE = "diffusers"


@dataclass
class TrainerState:
    step: int
    data: DataState
    lora_rank: int
    lora_alpha: float
    seed: int
    exact: bool = True  # False once resumed with --resume-anyway over changed trajectory keys
    changes: list[str] = field(default_factory=list)  # "step N: key old -> new" for each such change
    lora_type: str = "lora"  # lora.type (checkpoints written before adapter types were LoRA)
    lora_options: dict[str, Any] = field(default_factory=dict)  # the type's options (lora.lokr for lokr), by key
    #: whose learning-rate schedule wrote the checkpoint: LR_SCHEDULE, or "" (hv-tune's own schedule before
    #: diffusers' replaced it: its warmup started at lr/warmup, diffusers' starts at 0)
    lr_schedule: str = ""


class CheckpointError(ConfigError):
    """A checkpoint folder cannot be read; the message names the folder and file."""


FILES = ("adapter.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
CONFIG_FILE = "config.yaml"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    state: TrainerState,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    keep: int,
    config_text: str = "",
    metadata: dict[str, str] | None = None,
    extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write a checkpoint atomically, then delete all but the newest ``keep`` complete ones.

    Args:
        metadata: safetensors metadata of ``adapter.safetensors`` (``lora_io.adapter_metadata``).
        extra: writes more files into the (temporary) checkpoint folder it is given: the LoRA files.

    Raises:
        DiskFullError: the disk filled up while writing; nothing half-written is left behind.
    """

    def fill(tmp: Path) -> None:
        save_file(adapter, str(tmp / "adapter.safetensors"), metadata=metadata)
        sort_safetensors_metadata(tmp / "adapter.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if config_text:
            (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        if extra is not None:
            extra(tmp)

    final = checkpoint_dir(root, state.step)
    if final.exists() and checkpoint_problem(final):  # a broken leftover of an earlier run: set it aside
        final.rename(final.with_name(final.name + ".corrupt"))
    if not final.exists():  # an existing one is complete (it was renamed into place)
        try:
            atomic_directory(final, fill)
        except Exception as e:  # safetensors and torch report a full disk with their own types
            if not is_disk_full(e):
                raise
            what = f"the checkpoint of step {state.step}"
            raise disk_full_error(root, state_bytes(adapter), what, latest_checkpoint(root)) from e
    prune(root, keep, final)
    return final


def state_bytes(adapter: dict[str, torch.Tensor]) -> int:
    """Bytes a checkpoint needs: the float32 adapter, AdamW's two moments, and 1 MB for the rest."""
    n = sum(t.numel() for t in adapter.values())
    return 3 * 4 * n + 2**20


def disk_full_error(folder: Path, needed: int, what: str, last: Path | None) -> DiskFullError:
    """The message for a save that does not fit: folder, space needed and free, fix, last checkpoint."""
    return DiskFullError(
        f"not enough free space in {folder} for {what}: it needs about {mb(needed)}, {mb(free_bytes(folder))} "
        "are free. Free some space there (or copy the run to a bigger disk and set output_dir), then continue "
        f"with --resume; the last good checkpoint is intact: {last or 'none yet'}"
    )


def prune(root: Path, keep: int, newest: Path) -> None:
    """Delete complete checkpoints beyond the newest ``keep`` (``newest`` is always kept)."""
    good = [p for p in list_checkpoints(root) if p == newest or checkpoint_problem(p) is None]
    for old in good[:-keep]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder is incomplete (a quick check: files, sizes, headers), or None."""
    for name in FILES:
        f = Path(path) / name
        if not f.is_file() or f.stat().st_size == 0:
            return f"{f.name} is missing or empty"
    problem = safetensors_problem(Path(path) / "adapter.safetensors")
    if problem:
        return f"adapter.safetensors: {problem}"
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        if not zipfile.is_zipfile(Path(path) / name):
            return f"{name}: not a complete torch file"
    return None


@dataclass
class Checkpoint:
    path: Path
    state: TrainerState
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors + ``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: naming the folder and the file that cannot be read.
    """
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"--resume {path}: not a checkpoint folder (no trainer_state.json)")
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is broken: {problem}")
    name = "trainer_state.json"
    try:
        raw = json.loads((path / name).read_text())
        raw["data"] = DataState(**raw["data"])
        state = TrainerState(**raw)
        name = "adapter.safetensors"
        adapter = load_file(str(path / name))
        loaded = {}
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            loaded[name] = torch.load(path / name, weights_only=True)
    except Exception as e:  # any damage: the message names the file, the caller may fall back
        raise CheckpointError(f"checkpoint {path} is broken: {name} cannot be read ({type(e).__name__}: {e})") from e
    return Checkpoint(path, state, adapter, loaded["optimizer.pt"], loaded["scheduler.pt"], loaded["rng.pt"])


def saved_config(ckpt: Checkpoint, fallback: Path) -> dict[str, Any] | None:
    """The config a checkpoint was written with (its own copy, else the run's ``config.yaml``)."""
    import yaml

    for f in (ckpt.path / CONFIG_FILE, fallback):
        if f.is_file():
            raw = yaml.safe_load(f.read_text(encoding="utf-8"))
            return raw if isinstance(raw, dict) else None
    return None
