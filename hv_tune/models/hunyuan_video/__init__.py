"""HunyuanVideo (v1, text-to-video): spec, text encoding, key table, tiny builder, presets (docs/hunyuan_video.md)."""

from hv_tune.models.hunyuan_video.spec import HunyuanVideoSpec

__all__ = ["HunyuanVideoSpec"]
