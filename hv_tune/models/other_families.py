"""Families hv-tune does not train but recognises in a LoRA file, so it can say whose file it is
(``hv_tune.export.formats.looks_like_family``). Data the registry holds: adding a family to
``MODEL_SPECS`` or here is a change under ``hv_tune/models/`` only.
"""

from __future__ import annotations

#: Key patterns (re.search) that identify another model family. None of them can match a key
#: of a registered family in any layout (tests/test_export_lora.py checks that). Families whose
#: module names match a spec's (Flux's are ComfyUI's HunyuanVideo names) list only their own
#: modules here; the rest is told apart by block counts (``spec.keys.lookalike_blocks``).
OTHER_FAMILIES: dict[str, tuple[str, ...]] = {
    "Flux": (
        r"(^|[._])(img_in|txt_in)\.(lora_|alpha|diff)",  # Flux's img_in/txt_in are linear layers
        r"(^|\.)(x_embedder|context_embedder)\.lora_",
    ),
    "SDXL": (r"^lora_te2_", r"^text_encoder_2\.", r"conditioner\.embedders\.1\."),
    "Stable Diffusion (UNet)": (
        r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]\d",
        r"^lora_te\d?_text_model",
        r"^unet\.",
    ),
    "Wan": (r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn)[._](q|k|v|o)[._]", r"[._]ffn[._]\d", r"(^|\.)blocks\.\d+\.attn[12]\."),
    "LTX-Video or CogVideoX": (r"transformer_blocks[._]\d+[._]attn[12][._]",),
}
