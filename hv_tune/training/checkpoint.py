"""Resumable checkpoints: ``OUTPUT_DIR/checkpoints/step_NNNNNNNN/``.

Each checkpoint folder is written under a temporary name and renamed when complete, so
a run killed mid-save leaves only a ``.tmp-*`` folder that resume ignores. Contents:
``adapter.safetensors`` (LoRA weights), ``optimizer.pt`` and ``scheduler.pt`` (state
dicts), ``rng.pt`` (torch CPU/CUDA RNG states), ``trainer_state.json`` (step, data
position, LoRA shape). Tensors are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hv_tune.data.sampler import DataState
from hv_tune.errors import ConfigError
from hv_tune.io import atomic_directory

STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainerState:
    step: int
    data: DataState
    lora_rank: int
    lora_alpha: float
    seed: int


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
) -> Path:
    """Write a checkpoint atomically, then delete all but the newest ``keep``."""

    def fill(tmp: Path) -> None:
        save_file(adapter, str(tmp / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))

    final = checkpoint_dir(root, state.step)
    if not final.exists():  # an existing one is complete (it was renamed into place)
        atomic_directory(final, fill)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    path: Path
    state: TrainerState
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors + ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume {path}: not a checkpoint folder (no trainer_state.json)")
    raw = json.loads((path / "trainer_state.json").read_text())
    raw["data"] = DataState(**raw["data"])
    return Checkpoint(
        path=path,
        state=TrainerState(**raw),
        adapter=load_file(str(path / "adapter.safetensors")),
        optimizer=torch.load(path / "optimizer.pt", weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", weights_only=True),
        rng=torch.load(path / "rng.pt", weights_only=True),
    )
