"""Card-size presets: ``memory.preset: 24gb`` fills the keys a config leaves out.

Plain data, keyed by model spec name, because the right numbers depend on the model's
size (block count, bytes per block). The numbers and the arithmetic behind them are in
docs/memory.md. A preset never overrides a key the YAML or the command line sets.
"""

from __future__ import annotations

from typing import Any

from hv_tune.errors import ConfigError
from hv_tune.models.hunyuan_video.presets import PRESETS as HV_PRESETS
from hv_tune.models.hunyuan_video_1_5.presets import PRESETS as HV15_PRESETS

# model name -> preset -> {"section.key": value}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "hunyuan-video": HV_PRESETS,
    "hunyuan-video-1.5": HV15_PRESETS,
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
