"""A tiny random HunyuanVideo in diffusers' on-disk layout, built offline.

The architecture keeps every part of the real one (double, single and refiner blocks,
guidance embedding, 3D causal VAE with 8x spatial and 4x temporal compression, Llama +
CLIP text encoders) at toy width, so tests, the demo and benchmarks go through the same
loading and forward code as the 13B model. Tokenizers are trained here with the
``tokenizers`` library: the Llama one splits text like Llama-3 (its template prefix is 95
tokens for video and 36 for images, as with the real tokenizer) and the CLIP one is a
CLIP-style BPE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hv_tune.models.hunyuan_video import IMAGE_TEMPLATE, VIDEO_TEMPLATE

# Llama-3's pre-tokenizer pattern (words with their leading space, 1-3 digit groups, ...).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Words the demo and tests use, so their prompts are whole tokens rather than bytes.
_WORDS = (
    "a an the red green blue yellow white black orange purple circle square triangle ball box shape "
    "moves moving slides bounces spins grows shrinks left right up down across to from on in over "
    "dark light bright background scene camera static slow fast small large big of and with style "
    "video image painting film frame sky water sun night day person cat dog tree house street sks"
).split()

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


def _corpus() -> list[str]:
    prompts = [" ".join(_WORDS[i : i + 8]) for i in range(0, len(_WORDS), 4)]
    return [tpl["template"].format(p) for tpl in (VIDEO_TEMPLATE, IMAGE_TEMPLATE) for p in prompts] * 4


def build_llama_tokenizer():
    """Byte-level BPE with Llama-3's split pattern and special tokens, BOS prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=_LLAMA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        padding_side="right",
    )


def build_clip_tokenizer(work_dir: Path):
    """A CLIP tokenizer over single byte-level characters (no merges), as CLIPTokenizer.

    Built from a fixed vocabulary rather than trained: the ``tokenizers`` BPE trainer orders
    tied merges by hash, so a trained vocabulary (and every number that depends on it) changed
    from build to build.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    del work_dir
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def build_tiny_hunyuan_video(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random diffusers-format HunyuanVideo folder to ``out_dir``.

    ``diffusers.HunyuanVideoPipeline.from_pretrained(out_dir)`` loads and runs it.
    """
    import tempfile

    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tokenizer = build_llama_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_2 = build_clip_tokenizer(Path(tmp))
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
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
            vocab_size=len(tokenizer_2),
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
    pipe = HunyuanVideoPipeline(
        transformer=HunyuanVideoTransformer3DModel(**TRANSFORMER_CONFIG),
        vae=AutoencoderKLHunyuanVideo(**VAE_CONFIG),
        text_encoder=llama,
        tokenizer=tokenizer,
        text_encoder_2=clip,
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out_dir))
    return out_dir
