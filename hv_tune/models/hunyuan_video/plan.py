"""What the memory plan knows about HunyuanVideo without a download: published transformer configs.

``hunyuanvideo-community/HunyuanVideo`` is diffusers' conversion of Tencent's ``HYVideo-T/2-cfgdistill``
checkpoint: ``TRANSFORMER_CONFIGS["HYVideo-T/2-cfgdistill"]`` in diffusers'
``scripts/convert_hunyuan_video_to_diffusers.py``, which is also ``HunyuanVideoTransformer3DModel``'s
default config (13B: 20 double + 40 single blocks of width 3072). ``tests/test_plan_offline.py`` checks
these against the class's defaults.
"""

from __future__ import annotations

#: the published checkpoint ``bench/train_step.py --size full`` builds, per spec name
FULL_SIZE = {"hunyuan-video": "hunyuanvideo-community/HunyuanVideo"}
#: transformer ``config.json`` of the published diffusers-format checkpoints, by hub id (default branch)
PUBLISHED: dict[str, dict[str, object]] = {
    "hunyuanvideo-community/HunyuanVideo": {
        "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
        "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2,
        "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096,
        "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56],
        "image_condition_type": None,
    },
}

#: the cache stage's encoders: (name, parameters, embedding parameters that stay in the compute dtype,
#: fp8-capable). Counted on the meta device from the published configs with transformers' classes:
#: ``LlamaModel`` (vocab 128320, width 4096, 32 layers, 8 KV heads: the llava-llama-3-8b text model)
#: and ``CLIPTextModel`` (CLIP ViT-L/14 text). fp8: ``model.text_encoder_dtype`` applies to the Llama.
CACHE_ENCODERS: dict[str, list[tuple[str, int, int, bool]]] = {
    "hunyuan-video": [("text_encoder (Llama 3 8B)", 7_505_186_816, 525_598_720, True),
                      ("text_encoder_2 (CLIP-L)", 123_060_480, 0, False)],
}
