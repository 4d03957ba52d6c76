"""Registry of base-model specs (name -> spec instance); no if/elif chains elsewhere."""

from __future__ import annotations

from typing import Any

from hv_tune.errors import ConfigError
from hv_tune.models.base import LoadOptions, ModelSpec, TextEncoders, VideoRules
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from hv_tune.models.hunyuan_video_1_5 import HunyuanVideo15I2VSpec, HunyuanVideo15Spec
from hv_tune.models.other_families import OTHER_FAMILIES

MODEL_SPECS: dict[str, ModelSpec] = {
    HunyuanVideoSpec.name: HunyuanVideoSpec(),
    HunyuanVideo15Spec.name: HunyuanVideo15Spec(),
    HunyuanVideo15I2VSpec.name: HunyuanVideo15I2VSpec(),
}
#: the family a config, a verb or a model folder gets when nothing names one
DEFAULT_MODEL = HunyuanVideoSpec.name


def register(spec: ModelSpec) -> ModelSpec:
    """Add a family to the registry: the one line a family folder outside this package needs
    (``SPEC = register(MySpec())`` in its ``__init__.py``); registering the same spec again is a no-op.

    Raises:
        ConfigError: another spec already has ``spec.name`` or ``spec.pipeline_class``.
    """
    taken = [s for s in MODEL_SPECS.values() if s is not spec and spec_clash(s, spec)]
    if taken:
        raise ConfigError(f"model family {spec.name!r} ({spec.pipeline_class}) clashes with the registered "
                          f"{taken[0].name!r} ({taken[0].pipeline_class}): give it its own name and pipeline class")
    MODEL_SPECS[spec.name] = spec
    return spec


def spec_clash(a: ModelSpec, b: ModelSpec) -> bool:
    """Two specs a folder or a config could not tell apart (same name or pipeline class)."""
    return a.name == b.name or a.pipeline_class == b.pipeline_class


def unregister(name: str) -> None:
    """Remove a family registered with ``register`` (no error when it is not registered)."""
    MODEL_SPECS.pop(name, None)


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


def folder_spec(folder: str | None) -> ModelSpec | None:
    """The registered spec whose pipeline ``folder``'s ``model_index.json`` names (``_class_name``);
    None when the folder has no readable one (a hub id, a single file) or names another pipeline."""
    import json
    from pathlib import Path

    try:
        class_name = json.loads((Path(folder or "") / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return next((s for s in MODEL_SPECS.values() if s.pipeline_class == class_name), None)


def spec_for(name: str | None, folder: str | None, where: str = "config key 'model.name'") -> ModelSpec:
    """The spec named ``name``; without a name, the one of ``folder`` (``folder_spec``);
    ``DEFAULT_MODEL``'s when neither says.

    Raises:
        ConfigError: ``name`` is unknown, or ``folder`` holds another registered family's model
            (named as ``where``'s error, with both ways out).
    """
    found = folder_spec(folder)
    if not name:
        return found or get_spec(DEFAULT_MODEL)
    spec = get_spec(name, where)
    if found is not None and found.name != spec.name:
        raise ConfigError(f"{where}: {name!r}, but {folder} holds a {found.pipeline_class} model ({found.name!r}); "
                          f"set {where.removeprefix('config key ').strip(chr(39))} to {found.name!r} or point at a "
                          f"{spec.pipeline_class} model folder")
    return spec


__all__ = ["DEFAULT_MODEL", "MODEL_SPECS", "OTHER_FAMILIES", "folder_spec", "LoadOptions", "ModelSpec", "TextEncoders",
           "VideoRules", "get_spec", "memory_preset", "register", "spec_for", "unregister"]
