"""Checks of command-line values made before anything loads: numbers in range, outputs that are no input.

Every check raises ``ConfigError`` with one line that names the flag, the value and the fix
(the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hv_tune.errors import ConfigError

if TYPE_CHECKING:
    from hv_tune.models.base import ModelSpec

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
SIZE_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
              "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}


def check_int(value: int, flag: str, low: int, high: int | None = None, fix: str = "") -> int:
    """``value`` if ``low <= value (<= high)``.

    Raises:
        ConfigError: naming ``flag``, the value, the allowed range and ``fix``.
    """
    if value < low or (high is not None and value > high):
        allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"
        raise ConfigError(f"{flag} {value}: must be {allowed}{_fix(fix)}")
    return value


def check_float(value: float, flag: str, low: float | None = None, above: bool = False, fix: str = "") -> float:
    """``value`` if it is finite and at least ``low`` (more than ``low`` when ``above``).

    Raises:
        ConfigError: naming ``flag``, the value, the allowed range and ``fix``.
    """
    bad = not math.isfinite(value) or (low is not None and (value <= low if above else value < low))
    if bad:
        limit = "" if low is None else f" {'>' if above else '>='} {low:g}"
        raise ConfigError(f"{flag} {value:g}: must be a finite number{limit}{_fix(fix)}")
    return value


def _fix(fix: str) -> str:
    return f" ({fix})" if fix else ""


def check_sample_numbers(steps: int, shift: float, guidance: float, seed: int, fps: int | None) -> None:
    """The numeric ``sample`` flags that need no model.

    Raises:
        ConfigError: naming the flag, the value and the fix.
    """
    check_int(steps, "--steps", 1, fix="the number of denoising steps; default 30")
    check_float(shift, "--shift", 0, above=True, fix="the scheduler's flow shift; default 7")
    check_float(guidance, "--guidance", 0, fix="default 6")
    check_int(seed, "--seed", *SEED_RANGE)
    if fps is not None:
        check_int(fps, "--fps", 1, fix="frames per second of the mp4; leave it out for the model's rate")


def check_video_shape(spec: ModelSpec, frames: int, height: int, width: int) -> None:
    """Frame count and size by the model's ``VideoRules`` (``spec.video``).

    Raises:
        ConfigError: naming the flag, the rule and the nearest valid values.
    """
    rules = spec.video
    if not rules.frames_ok(frames):
        step = rules.frame_step
        below = (frames - 1) // step * step + 1
        near = [below, below + step] if below >= 1 else [1, 1 + step]
        raise ConfigError(f"--frames {frames}: {spec.name} takes {rules.frame_rule} frames "
                          f"(1, {1 + step}, {1 + 2 * step}, ...); use {near[0]} or {near[1]}")
    m = rules.pixel_multiple
    for flag, value in (("--height", height), ("--width", width)):
        if not rules.side_ok(value):
            raise ConfigError(f"{flag} {value}: must be a positive multiple of {m} for {spec.name}; "
                              f"use e.g. {max(m, round(value / m) * m)}")


def parse_size(text: str, flag: str) -> int:
    """``5GB`` / ``500MB`` / ``2GiB`` / ``100KB`` / a plain byte count -> bytes (at least 1).

    Raises:
        ConfigError: naming ``flag`` for anything else (a negative, zero or non-finite size).
    """
    t = text.strip().upper().replace(" ", "")
    unit = next((u for u in SIZE_UNITS if t.endswith(u)), "B")
    number, factor = t.removesuffix(unit), SIZE_UNITS[unit]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    size = int(value * factor) if math.isfinite(value) else 0
    if size < 1:
        raise ConfigError(f"{flag} {text}: use a positive size like 5GB, 500MB or 2GiB")
    return size


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and are one file or folder (also through links and ``./``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` (existing or not) is ``folder`` or lies under it, however either is spelled."""
    p = Path(os.path.abspath(path))
    return any(same_file(q, folder) for q in [p, *p.parents])


def refuse_inputs(out: str | os.PathLike, out_flag: str, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is one of the input files (``{flag text: path}``; None entries are skipped).

    Raises:
        ConfigError: naming both flags and the file.
    """
    for flag, path in inputs.items():
        if path is not None and same_file(out, path):
            raise ConfigError(f"{out_flag} {out} is the same file as {flag} ({path}); writing it would destroy "
                              f"an input: choose another {out_flag}")


def refuse_existing(out: str | os.PathLike, out_flag: str, overwrite: bool) -> None:
    """Refuse an existing output file unless ``overwrite``; a folder in the way is always refused.

    Raises:
        ConfigError: naming the file and the fix (another name, or ``--overwrite``).
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out_flag} {out} is a folder; name the file to write, e.g. {out / 'lora.safetensors'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out_flag} {out} already exists; choose a new name, or pass --overwrite to replace it")
