"""HunyuanVideo 1.5 prompt encoding, as ``HunyuanVideo15Pipeline.encode_prompt`` does it.

Two encoders (docs/hunyuan_video_1_5.md):

- Qwen2.5-VL: the prompt goes into a chat (system message + user turn, generation prompt
  added; an empty prompt becomes ``" "``), padded to ``crop_start + 1000`` tokens;
  embeddings are ``hidden_states[-3]``; the first ``crop_start`` (108) tokens, the system
  part, are cropped from embeddings and mask.
- byT5: only the quoted text of the prompt (``"..."`` or curly quotes), deduplicated and
  written as ``Text "a". Text "b". ``, 256 byte tokens; a prompt without quotes gives zeros
  and an all-zero mask.

The unconditional side of classifier-free guidance is ``encode_prompt(None)``, i.e. the
empty prompt: caption dropout trains on exactly ``encode_text([""])``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from hv_tune.models.base import LoadOptions, TextEncoder, TextEncoders, TextStack

SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects: \
        1. The main content and theme of the video. \
        2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects. \
        3. Actions, events, behaviors temporal relationships, physical movement changes of the objects. \
        4. background environment, light, style and atmosphere. \
        5. camera angles, movements, and transitions used in the video."
)
CROP_START = 108
LLM_MAX_TOKENS = 1000
LLM_SKIP_LAYERS = 2
BYT5_MAX_TOKENS = 256
_GLYPH = re.compile(r"\"(.*?)\"|“(.*?)”")

#: cache/batch keys of one prompt's embeddings ([L, D] / [L] per item)
TEXT_FIELDS = ("prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2")


def glyph_text(prompt: str) -> str | None:
    """The byT5 input for ``prompt``: its quoted texts as ``Text "x". ``, or None without quotes."""
    found = [a or b for a, b in _GLYPH.findall(prompt)]
    if len(found) > 1:
        found = list(dict.fromkeys(found))
    return ". ".join(f'Text "{t}"' for t in found) + ". " if found else None


def chat(prompts: list[str]) -> list[list[dict[str, str]]]:
    """Chat messages per prompt (an empty prompt becomes one space, as in the pipeline)."""
    return [[{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": p or " "}] for p in prompts]


@torch.no_grad()
def encode_llm(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL embeddings [B, 1000, D] and mask [B, 1000] (int64) after the system crop."""
    device = text_encoder.device
    ids = tokenizer.apply_chat_template(
        chat(prompts), add_generation_prompt=True, tokenize=True, return_dict=True, padding="max_length",
        max_length=LLM_MAX_TOKENS + CROP_START, truncation=True, return_tensors="pt",
    )
    hidden = text_encoder(
        input_ids=ids.input_ids.to(device), attention_mask=ids.attention_mask.to(device), output_hidden_states=True
    ).hidden_states[-(LLM_SKIP_LAYERS + 1)]
    return hidden[:, CROP_START:], ids.attention_mask[:, CROP_START:]  # [B, 108 + 1000, D] -> [B, 1000, D]


@torch.no_grad()
def encode_glyphs(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """byT5 embeddings [B, 256, D] and mask [B, 256] (int64); zeros for prompts without quotes."""
    device, dim = text_encoder.device, text_encoder.config.d_model
    embeds, masks = [], []
    for prompt in prompts:
        glyph = glyph_text(prompt)
        if glyph is None:
            embeds.append(torch.zeros(1, BYT5_MAX_TOKENS, dim, device=device, dtype=text_encoder.dtype))
            masks.append(torch.zeros(1, BYT5_MAX_TOKENS, dtype=torch.int64))
            continue
        tok = tokenizer(glyph, padding="max_length", max_length=BYT5_MAX_TOKENS, truncation=True,
                        add_special_tokens=True, return_tensors="pt")
        out = text_encoder(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.float().to(device))
        embeds.append(out[0])
        masks.append(tok.attention_mask.to(torch.int64))
    return torch.cat(embeds), torch.cat(masks)


def dropped_llm_tokens(tokenizer: Any, prompts: list[str]) -> list[int]:
    """Caption tokens ``encode_llm`` cuts off per prompt (0 when it fits).

    ``encode_llm`` truncates the whole chat at ``crop_start + 1000`` tokens from the end, so the
    chat's closing tokens (end of the user turn, assistant header) go first, then the caption's:
    a caption of ``n`` tokens loses ``max(0, n - 1000)``.
    """
    marker = "\x00"  # splits the rendered chat into the part before and after the caption
    rendered = tokenizer.apply_chat_template(chat([marker]), add_generation_prompt=True, tokenize=False)
    rendered = rendered[0] if isinstance(rendered, list) else rendered
    n_suffix = len(tokenizer(rendered.split(marker, 1)[1], add_special_tokens=False).input_ids)
    full = tokenizer.apply_chat_template(chat(prompts), add_generation_prompt=True, tokenize=True, return_dict=True)
    return [max(0, len(ids) - CROP_START - n_suffix - LLM_MAX_TOKENS) for ids in full["input_ids"]]


def encode_prompts(enc: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Both encoders' outputs under ``TEXT_FIELDS`` (``enc`` is a ``TextEncoders``)."""
    llm, glyphs = enc["text_encoder"], enc["text_encoder_2"]  # Qwen2.5-VL, byT5
    llm, mask = encode_llm(llm.tokenizer, llm.model, prompts)
    glyph, glyph_mask = encode_glyphs(glyphs.tokenizer, glyphs.model, prompts)
    return dict(zip(TEXT_FIELDS, (llm, mask, glyph, glyph_mask)))


def load_encoders(opts: LoadOptions) -> TextEncoders:
    """Qwen2.5-VL (``text_encoder``, fp8-eligible) and byT5 (``text_encoder_2``) with their tokenizers."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextModel, Qwen2Tokenizer, T5EncoderModel

    kw = {"revision": opts.revision}
    return TextEncoders(
        text_encoder=TextEncoder(
            Qwen2Tokenizer.from_pretrained(opts.path, subfolder="tokenizer", **kw),
            Qwen2_5_VLTextModel.from_pretrained(opts.path, subfolder="text_encoder", dtype=opts.dtype, **kw),
            fp8=True),
        text_encoder_2=TextEncoder(
            ByT5Tokenizer.from_pretrained(opts.path, subfolder="tokenizer_2", **kw),
            T5EncoderModel.from_pretrained(opts.path, subfolder="text_encoder_2", dtype=opts.dtype, **kw)),
    )


def encode(enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
    """``prompt_embeds`` [B, 1000, D], ``prompt_attention_mask`` [B, 1000], ``prompt_embeds_2`` [B, 256, D2]
    (byT5, zeros without quoted text), ``prompt_attention_mask_2`` [B, 256]; masks int64. One template for
    videos and images (the pipeline has one), so ``num_frames`` is unused."""
    return encode_prompts(enc, prompts)


def dropped_tokens(enc: TextEncoders, prompts: list[str], num_frames: int) -> list[int]:
    """Caption tokens the Qwen2.5-VL encoder cuts off per prompt (1000 kept after the crop); byT5 reads only
    quoted text (256 bytes) and what it cuts is not counted."""
    return dropped_llm_tokens(enc["text_encoder"].tokenizer, prompts)


#: the 1.5 text stack (facet ``ModelSpec.text``)
STACK = TextStack(TEXT_FIELDS, load_encoders, encode, dropped_tokens)
