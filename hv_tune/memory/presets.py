"""Card-size presets: ``memory.preset: 24gb`` fills the keys a config leaves out.

Plain data, keyed by model spec name, because the right numbers depend on the model's
size (block count, bytes per block). The numbers and the arithmetic behind them are in
docs/memory.md. A preset never overrides a key the YAML or the command line sets.
"""

from __future__ import annotations

from typing import Any

from hv_tune.errors import ConfigError
from hv_tune.models.hunyuan_video_1_5.presets import PRESETS as HV15_PRESETS

# model name -> preset -> {"section.key": value}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "hunyuan-video": {
        # fp8 blocks ~16 GB: swap 36 of the 40 single blocks (~6 GB) and offload the checkpoints.
        "16gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 36, "memory.checkpointing": "offload"},
        # fp8 weights ~16.6 GB resident; offloading the block checkpoints (3.5 GB at 512x512x33) keeps headroom.
        "24gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 0, "memory.checkpointing": "offload"},
        # bf16 weights ~25.6 GB; block checkpoints stay on the GPU (fastest).
        "48gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
        "80gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
    },
    "hunyuan-video-1.5": HV15_PRESETS,
    "hunyuan-video-1.5-i2v": HV15_PRESETS,  # same transformer size
}
DEFAULT_MODEL = "hunyuan-video"


def preset_values(model: str, preset: str) -> dict[str, Any]:
    """The settings of ``preset`` for ``model`` ({} for ``none`` or an unknown name)."""
    return dict(PRESETS.get(model, {}).get(preset, {}))


def expand_memory_preset(raw: dict[str, Any]) -> list[str]:
    """Fill the keys of ``raw['memory']['preset']`` that ``raw`` does not set, in place.

    Unknown preset names are left for the config type check to report. Returns the
    dot-path keys that the preset filled in.
    """
    memory = raw.get("memory")
    if not isinstance(memory, dict) or not isinstance(memory.get("preset"), str):
        return []
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    name = model.get("name", DEFAULT_MODEL) if isinstance(model, dict) else DEFAULT_MODEL
    preset = memory["preset"]
    known = {p for table in PRESETS.values() for p in table}
    if preset in known and str(name) not in PRESETS:
        raise ConfigError(f"config key 'memory.preset': no presets for model {name!r}; set the memory keys yourself")
    if preset in known and preset not in PRESETS[str(name)]:
        raise ConfigError(f"config key 'memory.preset': no {preset} preset for model {name!r}; "
                          f"use one of {', '.join(PRESETS[str(name)])}, auto or none")
    filled = []
    for key, value in preset_values(str(name), preset).items():
        section, leaf = key.split(".")
        node = raw.setdefault(section, {})
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
            filled.append(key)
    return filled
