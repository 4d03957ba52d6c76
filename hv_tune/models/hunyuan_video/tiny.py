"""A tiny random HunyuanVideo in diffusers' on-disk layout, built offline.

The architecture keeps every part of the real one (double, single and refiner blocks,
guidance embedding, 3D causal VAE with 8x spatial and 4x temporal compression, Llama +
CLIP text encoders) at toy width, so tests, the demo and benchmarks go through the same
loading and forward code as the 13B model. The tokenizers are the real ones (Llama 3 and
CLIP vocabularies from dev dependencies, see ``hv_tune.models.tokenizers``), in the files and
classes of the public diffusers-format checkpoint, so the text path is the one users hit token
for token; the text encoders' embedding tables have the real vocabulary sizes at toy width.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hv_tune.models.tokenizers import (
    CLIP_VOCAB_SIZE,
    LLAVA_LLAMA3_VOCAB_SIZE,
    write_clip_tokenizer,
    write_llama3_tokenizer,
)

# model_index.json entries of the public checkpoint (hunyuanvideo-community/HunyuanVideo).
TOKENIZER_CLASSES = {"tokenizer": ["transformers", "LlamaTokenizerFast"], "tokenizer_2": ["transformers", "CLIPTokenizer"]}

TRANSFORMER_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=4,
    attention_head_dim=16,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
)
#: ``build_tiny(small=True)``: a wider, deeper transformer (bench/train_step.py --size small times its step)
SMALL_TRANSFORMER_CONFIG = dict(TRANSFORMER_CONFIG, num_attention_heads=6, attention_head_dim=32,
                                num_single_layers=4, mlp_ratio=4.0, rope_axes_dim=(8, 12, 12))
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    act_fn="silu",
    norm_num_groups=4,
    scaling_factor=0.476986,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)


def _text_encoders(tokenizer, tokenizer_2):
    """Toy-width Llama and CLIP text encoders with the real vocabulary sizes and special ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    llama = LlamaModel(
        LlamaConfig(
            vocab_size=LLAVA_LLAMA3_VOCAB_SIZE,  # [128320, 16] embedding: 8 MB
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=8,
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    )
    return llama, clip


def build_tiny_hunyuan_video(out_dir: Path, seed: int = 0, small: bool = False) -> Path:
    """Write a tiny random diffusers-format HunyuanVideo folder to ``out_dir`` (``small``: with
    ``SMALL_TRANSFORMER_CONFIG``'s transformer, seeded with ``seed`` on its own).

    ``diffusers.HunyuanVideoPipeline.from_pretrained(out_dir)`` loads and runs it. The tokenizer
    folders are written by ``hv_tune.models.tokenizers`` and named in ``model_index.json`` as the
    hub names them (``LlamaTokenizerFast``, ``CLIPTokenizer``).

    Raises:
        HvTuneError: the vocabulary packages (dev dependencies) are not installed.
    """
    import json
    import shutil
    import tempfile

    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        folders = {"tokenizer": write_llama3_tokenizer(Path(tmp) / "tokenizer"),
                   "tokenizer_2": write_clip_tokenizer(Path(tmp) / "tokenizer_2")}
        tokenizers = {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}
        torch.manual_seed(seed)
        llama, clip = _text_encoders(tokenizers["tokenizer"], tokenizers["tokenizer_2"])
        pipe = HunyuanVideoPipeline(
            transformer=HunyuanVideoTransformer3DModel(**TRANSFORMER_CONFIG),
            vae=AutoencoderKLHunyuanVideo(**VAE_CONFIG),
            text_encoder=llama,
            text_encoder_2=clip,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            **tokenizers,
        )
        pipe.save_pretrained(str(out_dir))
        for name, folder in folders.items():  # the hub's files, not transformers 5's re-serialisation
            shutil.rmtree(out_dir / name)
            shutil.move(str(folder), out_dir / name)
    if small:
        torch.manual_seed(seed)
        HunyuanVideoTransformer3DModel(**SMALL_TRANSFORMER_CONFIG).save_pretrained(out_dir / "transformer")
    index_path = out_dir / "model_index.json"
    index = {**json.loads(index_path.read_text()), **TOKENIZER_CLASSES}
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return out_dir


def build_full_width_hunyuan_video(out_dir: Path, component: str, max_shard_size: str = "10GB", seed: int = 0):
    """A random-weight component at the released model's size in ``out_dir/<component>`` (diffusers
    layout) and a ``model_index.json``: the transformer at the 13B width (3072) with one double, one single
    and one refiner block, in bf16 (about 1.4 GB); the VAE at full size (diffusers' default config, fp32).
    Returns the module (what the benches time or count)."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    from hv_tune.models.full_width import save_full_width

    builders = {
        "transformer": lambda: HunyuanVideoTransformer3DModel(
            num_layers=1, num_single_layers=1, num_refiner_layers=1).to(torch.bfloat16),
        "vae": AutoencoderKLHunyuanVideo,
    }
    return save_full_width(out_dir, component, builders, "HunyuanVideoPipeline", max_shard_size, seed)


def reference_transformer(file: str, model_folder: str, dtype: torch.dtype):
    """The transformer of an original-layout (Tencent) file through diffusers' own converter
    (``from_single_file``; it needs the released width): an independent check of our key table."""
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel.from_single_file(file, config=model_folder, subfolder="transformer",
                                                           torch_dtype=dtype)
