"""Registry of base-model specs (name -> spec instance); no if/elif chains elsewhere."""

from __future__ import annotations

from hv_tune.errors import ConfigError
from hv_tune.models.base import LoadOptions, ModelSpec, TextEncoders
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from hv_tune.models.hunyuan_video_1_5 import HunyuanVideo15I2VSpec, HunyuanVideo15Spec

MODEL_SPECS: dict[str, ModelSpec] = {
    HunyuanVideoSpec.name: HunyuanVideoSpec(),
    HunyuanVideo15Spec.name: HunyuanVideo15Spec(),
    HunyuanVideo15I2VSpec.name: HunyuanVideo15I2VSpec(),
}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``, or a ConfigError listing the valid names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ConfigError(
            f"config key 'model.name': unknown model {name!r}; known: {', '.join(sorted(MODEL_SPECS))}"
        ) from None


def spec_for(name: str | None, folder: str | None) -> ModelSpec:
    """The spec named ``name``; without a name, the one whose pipeline ``folder``'s
    ``model_index.json`` names (``_class_name``); ``hunyuan-video`` when neither says."""
    if name:
        return get_spec(name)
    import json
    from pathlib import Path

    try:
        class_name = json.loads((Path(folder or "") / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    found = [s for s in MODEL_SPECS.values() if s.pipeline_class == class_name]
    return found[0] if found else get_spec("hunyuan-video")


__all__ = ["MODEL_SPECS", "LoadOptions", "ModelSpec", "TextEncoders", "get_spec", "spec_for"]
