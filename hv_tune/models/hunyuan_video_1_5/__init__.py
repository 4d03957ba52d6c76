"""HunyuanVideo 1.5 (text-to-video): spec, text encoding, tiny builder (docs/hunyuan_video_1_5.md)."""

from hv_tune.models.hunyuan_video_1_5.spec import HunyuanVideo15Spec

__all__ = ["HunyuanVideo15Spec"]
