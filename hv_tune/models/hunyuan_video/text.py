"""HunyuanVideo text encoding, as ``HunyuanVideoPipeline.encode_prompt`` computes it (docs/hunyuan_video.md).

The prompt goes into an LLM template, the template's first ``crop_start`` tokens are cropped
after encoding, embeddings are ``hidden_states[-3]`` (skip 2 layers, no final norm), 256 text
tokens after the crop; CLIP-L gives ``pooler_output`` at 77 tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from hv_tune.models.base import LoadOptions, TextEncoder, TextEncoders, TextStack

VIDEO_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 95,
}
# Tencent's image template (used for 1-frame items), crop 36.
IMAGE_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, size, "
        "texture, quantity, text, spatial relationships of the objects and background:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 36,
}
#: what ``encode_prompts`` gives, under ``HunyuanVideoPipeline.__call__``'s argument names
TEXT_FIELDS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")
LLM_MAX_TOKENS = 256
LLM_SKIP_LAYERS = 2
CLIP_MAX_TOKENS = 77


def template_for(num_frames: int) -> dict[str, Any]:
    """Video template for clips, image template for 1-frame items."""
    return IMAGE_TEMPLATE if num_frames == 1 else VIDEO_TEMPLATE


def load_encoders(opts: LoadOptions) -> TextEncoders:
    """Llama (``text_encoder``, fp8-eligible) and CLIP-L (``text_encoder_2``) with their tokenizers.

    AutoTokenizer keeps tokenizer.json's byte-level BPE (Llama 3, as Tencent's code loads it); the
    hub's model_index.json says LlamaTokenizerFast, which transformers 5 rebuilds as a Metaspace
    tokenizer (docs/decisions.md, tokenizers).
    """
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel

    kw = {"revision": opts.revision}
    return TextEncoders(
        text_encoder=TextEncoder(
            AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer", **kw),
            LlamaModel.from_pretrained(opts.path, subfolder="text_encoder", dtype=opts.dtype, **kw), fp8=True),
        text_encoder_2=TextEncoder(
            AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer_2", **kw),
            CLIPTextModel.from_pretrained(opts.path, subfolder="text_encoder_2", dtype=opts.dtype, **kw)),
    )


@torch.no_grad()
def encode_prompts(enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
    """LLM hidden states + mask (video or image template) and CLIP pooled output.

    Returns:
        ``prompt_embeds`` [B, 256, D_llm], ``prompt_attention_mask`` [B, 256] (int64),
        ``pooled_prompt_embeds`` [B, D_clip].
    """
    tpl = template_for(num_frames)
    crop = tpl["crop_start"]
    llm, clip = enc["text_encoder"], enc["text_encoder_2"]  # Llama, CLIP-L
    device = llm.model.device
    llm_in = llm.tokenizer(
        [tpl["template"].format(p) for p in prompts],
        max_length=LLM_MAX_TOKENS + crop,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    hidden = llm.model(
        input_ids=llm_in.input_ids.to(device),
        attention_mask=llm_in.attention_mask.to(device),
        output_hidden_states=True,
    ).hidden_states[-(LLM_SKIP_LAYERS + 1)]
    clip_ids = clip.tokenizer(
        prompts, padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    pooled = clip.model(clip_ids.to(clip.model.device), output_hidden_states=False).pooler_output
    return {
        "prompt_embeds": hidden[:, crop:],  # [B, crop + 256, D] -> [B, 256, D]
        "prompt_attention_mask": llm_in.attention_mask[:, crop:],
        "pooled_prompt_embeds": pooled,
    }

def dropped_tokens(enc: TextEncoders, prompts: list[str], num_frames: int) -> list[int]:
    """How many caption tokens ``encode_prompts`` cuts off, per prompt (0 when it all fits).

    Counted with the real tokenizer inside the template, as ``encode_prompts`` tokenizes:
    the caption keeps ``LLM_MAX_TOKENS`` (256) tokens after the template's crop. CLIP's
    77-token cut is not counted: it only feeds the pooled vector, as in the reference pipeline.
    """
    tpl = template_for(num_frames)
    suffix = tpl["template"].split("{}")[1]
    tokenizer = enc["text_encoder"].tokenizer
    n_suffix = len(tokenizer(suffix, add_special_tokens=False).input_ids)
    ids = tokenizer([tpl["template"].format(p) for p in prompts]).input_ids
    return [max(0, len(x) - tpl["crop_start"] - n_suffix - LLM_MAX_TOKENS) for x in ids]


#: the v1 text stack (facet ``ModelSpec.text``)
STACK = TextStack(TEXT_FIELDS, load_encoders, encode_prompts, dropped_tokens)
