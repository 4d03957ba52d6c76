"""The one place a LoRA file's alpha comes from, whatever its layout.

Order, per module: the file's own ``<module>.alpha`` key; the file's safetensors metadata
(diffusers' ``lora_adapter_metadata``: a PEFT ``LoraConfig`` with ``lora_alpha``,
``alpha_pattern``, ``use_rslora``); an ``adapter_config.json`` beside the file (PEFT's and
diffusion-pipe's folders); for an hv-tune checkpoint's ``adapter.safetensors`` written before
its metadata held the config, the ``trainer_state.json`` beside it (``lora_alpha``); else
alpha = rank (scale 1, what diffusers and ComfyUI assume), with a note. kohya's ``ss_network_alpha`` metadata is not used: neither kohya's nor
musubi-tuner's loader reads it (a module without ``.alpha`` gets alpha = rank there too).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hv_tune.errors import HvTuneError

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
ADAPTER_CONFIG = "adapter_config.json"
#: an hv-tune checkpoint folder: its adapter file and the trainer state that knows the LoRA's alpha
CHECKPOINT_ADAPTER, TRAINER_STATE = "adapter.safetensors", "trainer_state.json"


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup (``(.*\\.)?(key)$``, first match wins)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def adapter_config(path: Path, meta: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The PEFT config that applies to a LoRA file, and where it came from.

    Raises:
        HvTuneError: naming the file when the config is not valid JSON.
    """
    config, source = None, ""
    try:
        if DIFFUSERS_METADATA_KEY in meta:
            raw = json.loads(meta[DIFFUSERS_METADATA_KEY])
            config = {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in raw.items()}
            source = f"{path} metadata ({DIFFUSERS_METADATA_KEY})"
        elif (path.parent / ADAPTER_CONFIG).is_file():
            config = json.loads((path.parent / ADAPTER_CONFIG).read_text())
            source = str(path.parent / ADAPTER_CONFIG)
        elif path.name == CHECKPOINT_ADAPTER and (path.parent / TRAINER_STATE).is_file():
            state = json.loads((path.parent / TRAINER_STATE).read_text())
            if isinstance(state, dict) and "lora_alpha" in state:
                config, source = {"lora_alpha": state["lora_alpha"]}, str(path.parent / TRAINER_STATE)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HvTuneError(f"{path}: its adapter config is not valid JSON ({e})") from e
    return config, source


def resolve_alphas(
    path: Path, meta: Mapping[str, str], ranks: Mapping[str, int], own: Mapping[str, float], notes: list[str]
) -> dict[str, float]:
    """Alpha of every module of a LoRA file.

    Args:
        path: the file (an ``adapter_config.json`` beside it is read when needed).
        meta: its safetensors metadata.
        ranks: module (as the file names it, without prefix) -> rank.
        own: module -> the file's own ``.alpha`` value, for modules that have one.
        notes: where to say which source was used (appended to).
    """
    config, source = (None, "") if all(m in own for m in ranks) else adapter_config(path, meta)
    alphas: dict[str, float] = {}
    from_config, defaulted = 0, []
    for module, rank in ranks.items():
        if module in own:
            alphas[module] = float(own[module])
        elif config is not None:
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
            alpha = float(config.get("lora_alpha", rank) if alpha is None else alpha)
            if config.get("use_rslora"):
                alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r): same update as alpha' / r
            alphas[module] = alpha
            from_config += 1
        else:
            alphas[module] = float(rank)
            defaulted.append(module)
    if from_config and not source.endswith("metadata (" + DIFFUSERS_METADATA_KEY + ")"):
        notes.append(f"alpha of {from_config} layer(s) read from {source}")
    if defaulted:
        notes.append(f"no alpha for {len(defaulted)} layer(s) (no .alpha key, metadata or {ADAPTER_CONFIG}): "
                     "alpha = rank (scale 1), as diffusers and ComfyUI assume")
    return alphas
