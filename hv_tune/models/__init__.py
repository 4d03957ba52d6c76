"""Registry of base-model specs (name -> spec instance); no if/elif chains elsewhere."""

from __future__ import annotations

from hv_tune.errors import ConfigError
from hv_tune.models.base import LoadOptions, ModelSpec, TextEncoders
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from hv_tune.models.hunyuan_video_1_5 import HunyuanVideo15Spec

MODEL_SPECS: dict[str, ModelSpec] = {
    HunyuanVideoSpec.name: HunyuanVideoSpec(),
    HunyuanVideo15Spec.name: HunyuanVideo15Spec(),
}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``, or a ConfigError listing the valid names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ConfigError(
            f"config key 'model.name': unknown model {name!r}; known: {', '.join(sorted(MODEL_SPECS))}"
        ) from None


__all__ = ["MODEL_SPECS", "LoadOptions", "ModelSpec", "TextEncoders", "get_spec"]
