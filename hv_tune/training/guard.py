"""Protections around a run: one run per output folder, free space, clean stops on signals."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from hv_tune.errors import ConfigError, HvTuneError
from hv_tune.export.formats import FORMATS
from hv_tune.io import free_bytes
from hv_tune.models.base import LORA_FILE
from hv_tune.training.checkpoint import disk_full_error, list_checkpoints

# what a run writes into output_dir (the cache may live there too: it is not part of a run)
RUN_FILES = ("checkpoints", "logs", "samples", "config.yaml", *(f.file_name for f in FORMATS.values()))
PREVIOUS_DIR = "previous-runs"


def claim_output_dir(out: Path, resuming: bool, overwrite: bool) -> None:
    """Make sure a fresh run does not mix with another run's files in ``out``.

    Another run's checkpoints or final LoRA refuse a fresh run unless ``overwrite``, which
    moves that run's files into ``out/previous-runs/<UTC time>/`` first.

    Raises:
        ConfigError: naming the folder, what it holds, and ``--resume`` / another folder / ``--overwrite``.
    """
    if resuming:
        return
    ckpts = list_checkpoints(out / "checkpoints")
    final = out / LORA_FILE
    held = ([f"checkpoints up to {ckpts[-1].name}"] if ckpts else []) + (["a finished LoRA"] if final.exists() else [])
    leftovers = [n for n in RUN_FILES if (out / n).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"output_dir {out} holds another run ({' and '.join(held)}); continue it with --resume, "
            f"set output_dir to another folder, or pass --overwrite to move the old run aside into {out / PREVIOUS_DIR}/"
        )
    if leftovers:
        aside = out / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside.mkdir(parents=True, exist_ok=True)
        for name in leftovers:
            (out / name).rename(aside / name)
        print(f"moved the previous run's files ({', '.join(leftovers)}) to {aside}")


def ensure_free_space(folder: Path, needed: int, what: str, last: Path | None) -> None:
    """Refuse to start a save that cannot fit.

    Raises:
        DiskFullError: naming the folder, the space needed and free, the fix and the last checkpoint.
    """
    if free_bytes(folder) < needed:
        raise disk_full_error(folder, needed, what, last)


def signal_label(signum: int) -> str:
    """How a person knows the signal: ``Ctrl-C (SIGINT)``, ``SIGTERM``."""
    name = signal.Signals(signum).name
    return f"Ctrl-C ({name})" if signum == signal.SIGINT else name


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next step boundary.

    A second signal restores the default handlers and raises ``KeyboardInterrupt`` at once.
    Handlers are only installed in the main thread (Python's rule); elsewhere this is inert.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal_label(signum)}: saving a checkpoint after this step "
              "(press Ctrl-C again to quit at once)", flush=True)


def on_main_process(process: Any, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the main process only; an ``HvTuneError`` there is raised on every process.

    Without this, the other processes would wait forever at their next collective for a main
    process that already stopped with a message.
    """
    box: list[HvTuneError | None] = [None]
    if process.is_main_process:
        try:
            fn()
        except HvTuneError as e:
            box[0] = e
    if process.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(box)
    if box[0] is not None:
        raise box[0]
