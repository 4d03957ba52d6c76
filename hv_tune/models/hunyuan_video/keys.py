"""HunyuanVideo module names: diffusers layout <-> Tencent's original checkpoint layout.

One table drives every place where the two layouts meet: LoRA conversion (ComfyUI and
kohya files use the original names), merging into an original-format checkpoint, and
format detection. Each original module is the row-wise concatenation of one or more
diffusers modules (``Part``): ``img_attn_qkv`` = to_q, to_k, to_v; a single block's
``linear1`` = to_q, to_k, to_v, proj_mlp; the final layer's ``adaLN_modulation.1`` stores
the two halves of ``norm_out.linear`` swapped (shift, scale vs. diffusers' scale, shift).

The mapping follows diffusers' conversion of Tencent's checkpoint
(``scripts/convert_hunyuan_video_to_diffusers.py``); ``tests/test_export_keys.py`` checks
it against diffusers' own single-file converter. Pure string logic, no diffusers import.
"""

from __future__ import annotations

import functools
import re

from hv_tune.models.base import KeyLayout, Part
from hv_tune.models.hunyuan_shared import (
    BLOCK_PATTERNS,
    COMFY_INTERNAL,
    LOOKALIKE_BLOCKS,
    LORA_PREFIXES,
    OWN_MODULE_MARKERS,
    comfy_lora_name,
    fill_name,
    name_pattern,
)

# (original module, its diffusers parts in row order); "{i}" is a block index.
_DOUBLE = "double_blocks.{i}.", "transformer_blocks.{i}."
_SINGLE = "single_blocks.{i}.", "single_transformer_blocks.{i}."
_REFINER = "txt_in.individual_token_refiner.blocks.{i}.", "context_embedder.token_refiner.refiner_blocks.{i}."

_BLOCK_TABLE: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {
    _DOUBLE: [
        ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
        ("img_attn_proj", ("attn.to_out.0",)),
        ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
        ("txt_attn_proj", ("attn.to_add_out",)),
        ("img_mlp.fc1", ("ff.net.0.proj",)),
        ("img_mlp.fc2", ("ff.net.2",)),
        ("txt_mlp.fc1", ("ff_context.net.0.proj",)),
        ("txt_mlp.fc2", ("ff_context.net.2",)),
        ("img_mod.linear", ("norm1.linear",)),
        ("txt_mod.linear", ("norm1_context.linear",)),
        ("img_attn_q_norm", ("attn.norm_q",)),
        ("img_attn_k_norm", ("attn.norm_k",)),
        ("txt_attn_q_norm", ("attn.norm_added_q",)),
        ("txt_attn_k_norm", ("attn.norm_added_k",)),
    ],
    _SINGLE: [
        ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
        ("linear2", ("proj_out",)),
        ("modulation.linear", ("norm.linear",)),
        ("q_norm", ("attn.norm_q",)),
        ("k_norm", ("attn.norm_k",)),
    ],
    _REFINER: [
        ("self_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
        ("self_attn_proj", ("attn.to_out.0",)),
        ("mlp.fc1", ("ff.net.0.proj",)),
        ("mlp.fc2", ("ff.net.2",)),
        ("adaLN_modulation.1", ("norm_out.linear",)),
        ("norm1", ("norm1",)),
        ("norm2", ("norm2",)),
    ],
}

_TOP_TABLE: list[tuple[str, tuple[Part, ...]]] = [
    ("img_in.proj", (Part("x_embedder.proj"),)),
    ("txt_in.input_embedder", (Part("context_embedder.proj_in"),)),
    ("txt_in.t_embedder.mlp.0", (Part("context_embedder.time_text_embed.timestep_embedder.linear_1"),)),
    ("txt_in.t_embedder.mlp.2", (Part("context_embedder.time_text_embed.timestep_embedder.linear_2"),)),
    ("txt_in.c_embedder.linear_1", (Part("context_embedder.time_text_embed.text_embedder.linear_1"),)),
    ("txt_in.c_embedder.linear_2", (Part("context_embedder.time_text_embed.text_embedder.linear_2"),)),
    ("time_in.mlp.0", (Part("time_text_embed.timestep_embedder.linear_1"),)),
    ("time_in.mlp.2", (Part("time_text_embed.timestep_embedder.linear_2"),)),
    ("guidance_in.mlp.0", (Part("time_text_embed.guidance_embedder.linear_1"),)),
    ("guidance_in.mlp.2", (Part("time_text_embed.guidance_embedder.linear_2"),)),
    ("vector_in.in_layer", (Part("time_text_embed.text_embedder.linear_1"),)),
    ("vector_in.out_layer", (Part("time_text_embed.text_embedder.linear_2"),)),
    ("final_layer.linear", (Part("proj_out"),)),
    # Tencent: [shift; scale]; diffusers' AdaLayerNormContinuous: [scale; shift]
    ("final_layer.adaLN_modulation.1", (Part("norm_out.linear", 1, 2), Part("norm_out.linear", 0, 2))),
]


@functools.cache
def _rows() -> list[tuple[str, tuple[Part, ...]]]:
    """Every table row as (original template, part templates)."""
    rows = list(_TOP_TABLE)
    for (orig_prefix, diff_prefix), entries in _BLOCK_TABLE.items():
        for orig, parts in entries:
            rows.append((orig_prefix + orig, tuple(Part(diff_prefix + p) for p in parts)))
    return rows


@functools.cache
def _compiled() -> list[tuple[re.Pattern[str], re.Pattern[str], str, tuple[Part, ...], list[re.Pattern[str]]]]:
    return [
        (name_pattern(orig), name_pattern(orig, "_"), orig, parts, [name_pattern(p.module) for p in parts])
        for orig, parts in _rows()
    ]


@functools.cache
def _compiled_comfy() -> list[tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str], str]]:
    """(ComfyUI-internal, its flat kohya form, ComfyUI LoRA name) patterns per original template."""
    out = []
    for orig, _ in _rows():
        internal = COMFY_INTERNAL.get(orig, orig)
        out.append((name_pattern(internal), name_pattern(internal, "_"), name_pattern(comfy_lora_name(internal)), orig))
    return out


@functools.lru_cache(maxsize=4096)
def comfy_internal(original: str) -> str:
    """``double_blocks.3.img_mlp.fc1`` -> ComfyUI's internal ``double_blocks.3.img_mlp.0``."""
    for pat, _, orig, _, _ in _compiled():
        m = pat.fullmatch(original)
        if m:
            return fill_name(COMFY_INTERNAL.get(orig, orig), m)
    return original


@functools.lru_cache(maxsize=4096)
def original_from_comfy(name: str, form: str = "internal") -> str | None:
    """Original module from a ComfyUI name (None if unknown).

    Args:
        form: ``internal`` (``img_mlp.0``), ``flat`` (kohya-style ``img_mlp_0``, what ComfyUI
            maps for ``lora_unet_`` keys) or ``lora`` (ComfyUI's LoRA key map: ``img_mlp.fc1``,
            ``time_in.in_layer``).
    """
    index = {"internal": 0, "flat": 1, "lora": 2}[form]
    for row in _compiled_comfy():
        m = row[index].fullmatch(name)
        if m:
            return fill_name(row[3], m)
    return None


@functools.lru_cache(maxsize=4096)
def original_module(module: str) -> str | None:
    """``transformer_blocks.3.attn.to_k`` -> ``double_blocks.3.img_attn_qkv`` (None if unknown)."""
    for _, _, orig, _, part_patterns in _compiled():
        for pat in part_patterns:
            m = pat.fullmatch(module)
            if m:
                return fill_name(orig, m)
    return None


@functools.lru_cache(maxsize=4096)
def original_parts(original: str) -> tuple[Part, ...] | None:
    """``double_blocks.3.img_attn_qkv`` -> parts to_q, to_k, to_v of ``transformer_blocks.3``."""
    for pat, _, _, parts, _ in _compiled():
        m = pat.fullmatch(original)
        if m:
            return tuple(Part(fill_name(p.module, m), p.chunk, p.chunks) for p in parts)
    return None


@functools.lru_cache(maxsize=4096)
def original_from_flat(flat: str) -> str | None:
    """kohya's flattened name (``double_blocks_3_img_mlp_fc1``) -> ``double_blocks.3.img_mlp.fc1``."""
    for _, flat_pat, orig, _, _ in _compiled():
        m = flat_pat.fullmatch(flat)
        if m:
            return fill_name(orig, m)
    return None


def comfy_name(original: str, form: str = "internal") -> str:
    """ComfyUI's ``internal`` name of an original module, or its LoRA key map's (``lora``) name."""
    internal = comfy_internal(original)
    return comfy_lora_name(internal) if form == "lora" else internal


#: HunyuanVideo's key layout (the spec's ``keys`` facet); musubi's v1 network has Tencent's fused layers,
#: so kohya files name the original modules
LAYOUT = KeyLayout(LORA_PREFIXES, OWN_MODULE_MARKERS, LOOKALIKE_BLOCKS, BLOCK_PATTERNS, original_module,
                   original_parts, original_module, original_from_flat, original_from_comfy, comfy_name)
