"""What the memory plan knows about HunyuanVideo 1.5 without a download or tensor values.

Published transformer configs: diffusers' ``scripts/convert_hunyuan_video1_5_to_diffusers.py`` builds
every 1.5 transformer from ``HunyuanVideo15Transformer3DModel``'s defaults (8.3B: 54 dual-stream
blocks of width 2048, 65 input channels, Qwen2.5-VL 3584 / byT5 1472 / SigLIP 1152 condition widths)
and changes only ``target_size`` (640 at 480p, 960 at 720p), ``task_type`` and, for the step-distilled
checkpoint, ``use_meanflow``; none of these changes a layer. ``tests/test_plan_offline.py`` checks
the sizes against the class's defaults.

Values the forward reads (``HunyuanVideo15Transformer3DModel.forward``): it takes the text-to-video
branch when ``torch.all(image_embeds == 0)`` (the T2V pipeline passes zeros) and the image-to-video
branch otherwise (SigLIP embeddings), and it moves the tokens each text mask keeps before the padding.
The plan's inputs say both (``hv_tune.memory.known``): text masks all ones (every token kept: the
sequence is 729 image + 256 byT5 + 1000 Qwen tokens whatever the masks keep, since padding stays in
the sequence as zeros), image embeddings zeros for text-to-video and ``I2V_IMAGE_EMBEDS`` for
image-to-video.
"""

from __future__ import annotations

#: the published checkpoint ``bench/train_step.py --size full`` builds, per spec name
FULL_SIZE = {"hunyuan-video-1.5": "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v",
             "hunyuan-video-1.5-i2v": "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"}
#: a non-zero stand-in for the SigLIP image embeddings of a planned image-to-video batch
I2V_IMAGE_EMBEDS = 1.0

_SHAPES: dict[str, object] = {
    "in_channels": 65, "out_channels": 32, "num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 54,
    "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 1, "patch_size_t": 1, "qk_norm": "rms_norm",
    "text_embed_dim": 3584, "text_embed_2_dim": 1472, "image_embed_dim": 1152, "rope_theta": 256.0,
    "rope_axes_dim": [16, 56, 56], "use_meanflow": False,
}


def _published(resolution: int, task: str) -> dict[str, object]:
    return {**_SHAPES, "target_size": {480: 640, 720: 960}[resolution], "task_type": task}


#: transformer ``config.json`` of the published diffusers-format checkpoints, by hub id (default branch)
PUBLISHED: dict[str, dict[str, object]] = {
    f"hunyuanvideo-community/HunyuanVideo-1.5-{res}p_{task}": _published(res, task)
    for res in (480, 720) for task in ("t2v", "i2v")
}

#: the cache stage's encoders: (name, parameters, embedding parameters that stay in the compute dtype,
#: fp8-capable). Counted on the meta device from the published configs with transformers' classes:
#: ``Qwen2_5_VLTextModel`` (vocab 152064, width 3584, 28 layers, 4 KV heads), ``T5EncoderModel``
#: (byT5-small: width 1472, 12 layers) and, for image-to-video, ``SiglipVisionModel`` (so400m,
#: 384 px / patch 14 = 729 tokens). fp8: ``model.text_encoder_dtype`` applies to Qwen2.5-VL.
_TEXT = [("text_encoder (Qwen2.5-VL 7B)", 7_070_619_136, 544_997_376, True),
         ("text_encoder_2 (byT5-small)", 217_657_472, 0, False)]
CACHE_ENCODERS: dict[str, list[tuple[str, int, int, bool]]] = {
    "hunyuan-video-1.5": _TEXT,
    "hunyuan-video-1.5-i2v": [*_TEXT, ("image_encoder (SigLIP so400m)", 428_225_600, 0, False)],
}
