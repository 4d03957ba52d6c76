"""A tiny random HunyuanVideo 1.5 in diffusers' on-disk layout, built offline.

Every part of the released model at toy width: dual-stream blocks with a token refiner,
65 input channels (32 noisy + 32 conditioning latent + 1 mask), byT5 and image projections,
a 32-channel VAE with 16x spatial and 4x temporal compression, a Qwen2.5-VL text model with
the real Qwen2 tokenizer (``hv_tune.models.tokenizers``) and a byT5 encoder with the real
byte-level ``ByT5Tokenizer`` (it needs no vocabulary file), a ``ClassifierFreeGuidance``
guider and a flow-match scheduler. ``HunyuanVideo15Pipeline.from_pretrained`` loads and runs it.
The image-to-video variant adds a toy SigLIP (``image_encoder/``, ``feature_extractor/``) for
``HunyuanVideo15ImageToVideoPipeline``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hv_tune.models.tokenizers import write_qwen25_tokenizer

#: Qwen2.5-VL-7B's embedding table has 152,064 rows (151,643 ranks + 22 added tokens + padding)
QWEN25_VL_VOCAB_SIZE = 152_064
TEXT_DIM = 16
BYT5_DIM = 8

TRANSFORMER_CONFIG = dict(
    in_channels=65,
    out_channels=32,
    # inner width 64 > 32 outputs per token: the output head is a LayerNorm without affine (every
    # token on a sphere of dimension inner - 2) then proj_out; at inner 32 that sphere's image is a
    # 30-dim surface in the 32-dim velocity space and the model cannot fit even one latent
    num_attention_heads=4,
    attention_head_dim=16,
    num_layers=2,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=1,
    patch_size_t=1,
    qk_norm="rms_norm",
    text_embed_dim=TEXT_DIM,
    text_embed_2_dim=BYT5_DIM,
    image_embed_dim=1152,  # SigLIP width: the pipeline and the training inputs hard-code it
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
    target_size=32,
    task_type="t2v",
)
#: ``build_tiny(small=True)``: a wider, deeper transformer (bench/train_step.py --size small times its step)
SMALL_TRANSFORMER_CONFIG = dict(num_attention_heads=6, attention_head_dim=32, num_layers=6, mlp_ratio=4.0,
                                rope_axes_dim=(8, 12, 12))
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=32,
    block_out_channels=(8, 8, 16, 32, 64),  # the last is a multiple of 2 x latent_channels (the shortcuts)
    layers_per_block=1,
    spatial_compression_ratio=16,
    temporal_compression_ratio=4,
    scaling_factor=1.03682,
)
#: the 480p text-to-video checkpoints' scheduler shift and guider scale
SCHEDULER_SHIFT = 5.0
GUIDANCE_SCALE = 6.0
#: image-to-video: what the released I2V configs change (``task_type``; ``target_size`` 640 at 480p, here a
#: toy size: the I2V pipeline picks the output size from it and the image's aspect ratio) and a SigLIP width
I2V_TRANSFORMER_CONFIG = dict(TRANSFORMER_CONFIG, task_type="i2v", target_size=32, image_embed_dim=32)
#: SigLIP at toy size: 32x32 input, 8x8 patches -> 16 tokens of width 32 (released: 384, 14 -> 729 x 1152)
SIGLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=32, patch_size=8)


def _text_encoders(tokenizer):
    """Toy-width Qwen2.5-VL text model (real vocabulary size) and byT5 encoder."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=QWEN25_VL_VOCAB_SIZE,  # [152064, 16] embedding: 10 MB
        hidden_size=TEXT_DIM,  # 2 heads x 8: mrope_section sums to head_dim / 2
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))
    byt5 = T5EncoderModel(T5Config(
        vocab_size=384,  # byT5: 256 bytes + 3 specials + 125 extra ids
        d_model=BYT5_DIM,
        d_kv=4,
        d_ff=16,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ))
    return qwen, byt5


def _image_parts() -> dict:
    """A toy SigLIP vision model and its image processor (mean = std = 0.5, bicubic, as the released one)."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    size = SIGLIP_CONFIG["image_size"]
    return {"image_encoder": SiglipVisionModel(SiglipVisionConfig(**SIGLIP_CONFIG)),
            "feature_extractor": SiglipImageProcessor(size={"height": size, "width": size})}


def build_tiny_hunyuan_video_1_5_i2v(out_dir: Path, seed: int = 0, small: bool = False) -> Path:
    """Write a tiny random HunyuanVideo 1.5 image-to-video folder (``HunyuanVideo15ImageToVideoPipeline``)."""
    return build_tiny_hunyuan_video_1_5(out_dir, seed, i2v=True, small=small)


def build_tiny_hunyuan_video_1_5(out_dir: Path, seed: int = 0, i2v: bool = False, small: bool = False) -> Path:
    """Write a tiny random diffusers-format HunyuanVideo 1.5 text-to-video (or ``i2v``) folder to ``out_dir``
    (``small``: its transformer widened and deepened by ``SMALL_TRANSFORMER_CONFIG``).

    Raises:
        HvTuneError: the Qwen vocabulary package (a dev dependency) is not installed.
    """
    import shutil
    import tempfile

    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        folder = write_qwen25_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = Qwen2Tokenizer.from_pretrained(folder)
        torch.manual_seed(seed)
        qwen, byt5 = _text_encoders(tokenizer)
        pipeline, extra = (HunyuanVideo15ImageToVideoPipeline, _image_parts()) if i2v else (HunyuanVideo15Pipeline, {})
        pipe = pipeline(
            text_encoder=qwen,
            tokenizer=tokenizer,
            transformer=HunyuanVideo15Transformer3DModel(**{**(I2V_TRANSFORMER_CONFIG if i2v else TRANSFORMER_CONFIG),
                                                            **(SMALL_TRANSFORMER_CONFIG if small else {})}),
            vae=AutoencoderKLHunyuanVideo15(**VAE_CONFIG),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT),
            text_encoder_2=byt5,
            tokenizer_2=ByT5Tokenizer(),
            guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE_SCALE),
            **extra,
        )
        pipe.save_pretrained(str(out_dir))
        shutil.rmtree(out_dir / "tokenizer")  # the checkpoint's files, not transformers' re-serialisation
        shutil.move(str(folder), out_dir / "tokenizer")
    return out_dir


def build_full_width_hunyuan_video_1_5(out_dir: Path, component: str, max_shard_size: str = "10GB", seed: int = 0):
    """A random-weight component at the released 1.5 size in ``out_dir/<component>`` (diffusers layout) and
    a ``model_index.json``: the transformer at its released width (2048) with one block and one refiner
    block, in bf16; the VAE at full size (diffusers' default config, fp32). Returns the module."""
    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel

    from hv_tune.models.full_width import save_full_width

    builders = {
        "transformer": lambda: HunyuanVideo15Transformer3DModel(num_layers=1, num_refiner_layers=1).to(torch.bfloat16),
        "vae": AutoencoderKLHunyuanVideo15,
    }
    return save_full_width(out_dir, component, builders, "HunyuanVideo15Pipeline", max_shard_size, seed)
