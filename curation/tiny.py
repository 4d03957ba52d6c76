"""Tiny random models in their real on-disk formats, for the tests and the demo.

- ``clip/``: an open_clip ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``),
  a small ViT with open_clip's own BPE tokenizer.
- ``aesthetic.pth``: a LAION aesthetic MLP state dict (keys ``layers.0/2/4/6/7``), input = the tiny
  CLIP's embedding size, hidden sizes as in the real head.
- ``vlm/``: a Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) from a small config, with a
  processor whose tokenizer is a byte-level BPE trained offline with ``tokenizers``.

Weights are random: scores and captions are meaningless, the loading and data paths are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hv_tune.io import atomic_torch_save, atomic_write_text

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TINY_EMBED = 32
VLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A tiny open_clip model folder loadable as ``local-dir:OUT``."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "model_cfg": {
            "embed_dim": TINY_EMBED,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg["model_cfg"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    atomic_write_text(out / "open_clip_config.json", json.dumps(cfg, indent=2))
    return out


def aesthetic_state_dict(in_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LAION-layout state dict: in_dim -> 1024 -> 128 -> 64 -> 16 -> 1."""
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim, 1024, 128, 64, 16, 1]
    sd = {}
    for key, (i, o) in zip(("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"), zip(dims[:-1], dims[1:])):
        sd[f"{key}.weight"] = torch.randn(o, i, generator=g) / i**0.5
        sd[f"{key}.bias"] = torch.randn(o, generator=g) * 0.1
    sd["layers.7.bias"] += 5.0  # centre the random head near the usual 1-10 range
    return sd


def build_tiny_aesthetic(path: Path, in_dim: int = TINY_EMBED, seed: int = 0) -> Path:
    """Save a LAION-layout aesthetic head as ``.pth`` (``torch.save`` of the state dict)."""
    return atomic_torch_save(path, aesthetic_state_dict(in_dim, seed))


def _tiny_tokenizer():  # -> transformers Qwen2TokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a video of a red circle moving left to right on a dark background, static camera, soft light, "
              "subject motion scene camera lighting style describe caption clip"] * 4
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=VLM_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)


def build_tiny_vlm(out: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL folder (model + processor) saved with ``save_pretrained``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VLM_SPECIAL}
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56 * 4}
    image_proc = Qwen2VLImageProcessor(**pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_proc = Qwen2VLVideoProcessor(size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56 * 4},
                                       patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                                    chat_template=CHAT_TEMPLATE)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32, window_size=56, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_models(out: Path, seed: int = 0) -> dict[str, Path]:
    """All three tiny models under ``out`` (the layout ``configs/curation_tiny.yaml`` expects)."""
    out = Path(out)
    return {
        "clip": build_tiny_clip(out / "clip", seed),
        "aesthetic": build_tiny_aesthetic(out / "aesthetic.pth", TINY_EMBED, seed),
        "vlm": build_tiny_vlm(out / "vlm", seed),
    }
