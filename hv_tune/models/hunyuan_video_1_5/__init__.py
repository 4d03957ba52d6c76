"""HunyuanVideo 1.5 (text-to-video, image-to-video): specs, text encoding, tiny builder (docs/hunyuan_video_1_5.md)."""

from hv_tune.models.hunyuan_video_1_5.i2v import HunyuanVideo15I2VSpec
from hv_tune.models.hunyuan_video_1_5.spec import HunyuanVideo15Spec

__all__ = ["HunyuanVideo15I2VSpec", "HunyuanVideo15Spec"]
