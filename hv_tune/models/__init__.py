"""Registry of base-model specs (name -> spec instance); no if/elif chains elsewhere."""

from __future__ import annotations

from typing import Any

from hv_tune.errors import ConfigError
from hv_tune.models.base import LoadOptions, ModelSpec, TextEncoders, VideoRules
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from hv_tune.models.hunyuan_video_1_5 import HunyuanVideo15I2VSpec, HunyuanVideo15Spec

MODEL_SPECS: dict[str, ModelSpec] = {
    HunyuanVideoSpec.name: HunyuanVideoSpec(),
    HunyuanVideo15Spec.name: HunyuanVideo15Spec(),
    HunyuanVideo15I2VSpec.name: HunyuanVideo15I2VSpec(),
}
#: the family a config, a verb or a model folder gets when nothing names one
DEFAULT_MODEL = HunyuanVideoSpec.name


def get_spec(name: str, where: str = "config key 'model.name'") -> ModelSpec:
    """The spec registered under ``name``, or a ConfigError naming ``where`` (the key or option
    that gave the name) and the valid names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown model {name!r}; known: {', '.join(sorted(MODEL_SPECS))}") from None


def memory_preset(name: str, preset: str) -> dict[str, Any]:
    """The settings (``{"section.key": value}``) of card-size ``preset`` for model ``name``.

    ``{}`` for a name no family has as a preset (``none``, ``auto``; the config's type check
    reports names nobody knows).

    Raises:
        ConfigError: ``preset`` is a preset of another family but not of ``name``'s.
    """
    table = get_spec(name).memory_presets  # an unknown model name is the error to report, not its presets
    if preset in table:
        return dict(table[preset])
    if any(preset in spec.memory_presets for spec in MODEL_SPECS.values()):
        if not table:
            raise ConfigError(f"config key 'memory.preset': no presets for model {name!r}; set the memory keys yourself")
        raise ConfigError(f"config key 'memory.preset': no {preset} preset for model {name!r}; "
                          f"use one of {', '.join(table)}, auto or none")
    return {}


def spec_for(name: str | None, folder: str | None, where: str = "config key 'model.name'") -> ModelSpec:
    """The spec named ``name`` (an unknown one is reported as ``where``'s); without a name, the one
    whose pipeline ``folder``'s ``model_index.json`` names (``_class_name``); ``DEFAULT_MODEL``'s
    when neither says."""
    if name:
        return get_spec(name, where)
    import json
    from pathlib import Path

    try:
        class_name = json.loads((Path(folder or "") / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    found = [s for s in MODEL_SPECS.values() if s.pipeline_class == class_name]
    return found[0] if found else get_spec(DEFAULT_MODEL)


__all__ = ["DEFAULT_MODEL", "MODEL_SPECS", "LoadOptions", "ModelSpec", "TextEncoders", "VideoRules", "get_spec", "memory_preset", "spec_for"]
