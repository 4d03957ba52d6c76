"""Path keys and arguments: ``~`` and environment variables, local folders versus hub ids."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hv_tune.errors import ConfigError


def is_hub_id(path: str) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path)) and not Path(path).exists()


def expand_path(value: str, key: str) -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; an unset variable is an error naming ``key``."""
    if not value:
        return value
    out = os.path.expandvars(os.path.expanduser(value))
    unset = re.findall(r"\$\{?(\w+)", out)
    if unset:
        raise ConfigError(f"config key {key!r}: environment variable {unset[0]} in {value!r} is not set")
    return out


def check_model_path(path: str, what: str, revision: str | None = None, offline_cache: bool = True) -> str:
    """A local model folder, or (visibly) a hub id; returns "local" or "hub".

    A path whose first part is a local folder (``models/hunyuan``) is a local path, never a hub
    id; with ``HF_HUB_OFFLINE`` set a hub id must already be in the local hub cache. Neither
    needs the network, so a typo fails at once instead of after a network timeout.
    ``offline_cache=False`` skips the hub-cache check (for ``plan``, which needs no weights).

    Raises:
        ConfigError: naming ``what`` and the path when it resolves to neither.
    """
    p = Path(path)
    hint = "point it at a diffusers-format model folder (or run `finetune.py tiny-model DIR`)"
    if p.is_dir():
        if not (p / "model_index.json").is_file() and (p.parent / "model_index.json").is_file():
            raise ConfigError(f"{what}: {path!r} is the {p.name!r} part of the model folder {str(p.parent)!r}; "
                              f"point it at {str(p.parent)!r}")
        return "local"
    if p.exists():
        raise ConfigError(f"{what}: {path!r} is a file, not a model folder; {hint}")
    if not is_hub_id(path) or p.parent.is_dir():
        raise ConfigError(f"{what}: folder {path!r} does not exist; {hint}")
    if offline_cache and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "model_index.json", revision=revision), str):
            raise ConfigError(
                f"{what}: {path!r} is no local folder, and as a hub id it is not in the local hub cache while "
                f"HF_HUB_OFFLINE is set; download it first (`hf download {path}`) or {hint}"
            )
    return "hub"


def check_folder(path: str, key: str) -> None:
    """``path`` is a folder or can become one (no file in the way).

    Raises:
        ConfigError: naming the key and the file that is in the way.
    """
    p = Path(path)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == p else f"is under {q}, which is a file"
                raise ConfigError(f"config key {key!r}: {path!r} {where}; choose a folder path")
            return
