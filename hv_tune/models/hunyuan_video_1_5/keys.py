"""HunyuanVideo 1.5 module names: diffusers layout <-> the original (ComfyUI) layout of LoRA files.

Tencent's 1.5 checkpoint stores ``double_blocks.N.img_attn_q/k/v`` (and ``txt_attn_q/k/v``)
separately; ComfyUI loads 1.5 into its HunyuanVideo model, whose attention is a fused ``qkv``
and whose LoRA key map accepts the same names as for v1 (``img_attn_qkv``, ``img_mlp.fc1``,
``img_mod.linear`` under ``diffusion_model.``). The LoRA layouts therefore use v1's fused names:
a LoRA on separate q/k/v is fused (A concatenated, B block-diagonal) by the export code from
the ``Part`` records below. The kohya layout flattens these same fused rows, which musubi-tuner's
1.5 network does not apply for q/k/v (its attention is separate): docs/hunyuan_video_1_5.md, LoRA.
1.5 has no single-stream blocks; its other modules (byT5 and image
projections, ``cond_type_embed``) are not LoRA targets and have no row here.
Pure string logic, no diffusers import.
"""

from __future__ import annotations

import functools
import re

from hv_tune.models.base import Part
from hv_tune.models.hunyuan_video.keys import COMFY_INTERNAL, comfy_lora_name, fill_name, name_pattern

# (original template, diffusers part templates in row order); "{i}" is a block index.
_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("double_blocks.{i}.img_attn_qkv", ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                        "transformer_blocks.{i}.attn.to_v")),
    ("double_blocks.{i}.img_attn_proj", ("transformer_blocks.{i}.attn.to_out.0",)),
    ("double_blocks.{i}.txt_attn_qkv", ("transformer_blocks.{i}.attn.add_q_proj",
                                        "transformer_blocks.{i}.attn.add_k_proj",
                                        "transformer_blocks.{i}.attn.add_v_proj")),
    ("double_blocks.{i}.txt_attn_proj", ("transformer_blocks.{i}.attn.to_add_out",)),
    ("double_blocks.{i}.img_mlp.fc1", ("transformer_blocks.{i}.ff.net.0.proj",)),
    ("double_blocks.{i}.img_mlp.fc2", ("transformer_blocks.{i}.ff.net.2",)),
    ("double_blocks.{i}.txt_mlp.fc1", ("transformer_blocks.{i}.ff_context.net.0.proj",)),
    ("double_blocks.{i}.txt_mlp.fc2", ("transformer_blocks.{i}.ff_context.net.2",)),
    ("double_blocks.{i}.img_mod.linear", ("transformer_blocks.{i}.norm1.linear",)),
    ("double_blocks.{i}.txt_mod.linear", ("transformer_blocks.{i}.norm1_context.linear",)),
    ("final_layer.linear", ("proj_out",)),
)
# ComfyUI runs 1.5 on its HunyuanVideo model: the double-block internal names are v1's
_COMFY_INTERNAL = {k: v for k, v in COMFY_INTERNAL.items() if k.startswith("double_blocks.")}


@functools.cache
def _compiled() -> list[tuple[str, re.Pattern[str], re.Pattern[str], list[re.Pattern[str]], dict[str, re.Pattern]]]:
    out = []
    for orig, parts in _ROWS:
        internal = _COMFY_INTERNAL.get(orig, orig)
        comfy = {"internal": name_pattern(internal), "flat": name_pattern(internal, "_"),
                 "lora": name_pattern(comfy_lora_name(internal))}
        out.append((orig, name_pattern(orig), name_pattern(orig, "_"), [name_pattern(p) for p in parts], comfy))
    return out


def original_module(module: str) -> str | None:
    """``transformer_blocks.3.attn.to_k`` -> ``double_blocks.3.img_attn_qkv`` (None if unknown)."""
    for orig, _, _, part_patterns, _ in _compiled():
        for pat in part_patterns:
            m = pat.fullmatch(module)
            if m:
                return fill_name(orig, m)
    return None


def original_parts(original: str) -> tuple[Part, ...] | None:
    """``double_blocks.3.img_attn_qkv`` -> to_q, to_k, to_v of ``transformer_blocks.3``."""
    for (_, pat, _, _, _), (_, parts) in zip(_compiled(), _ROWS):
        m = pat.fullmatch(original)
        if m:
            return tuple(Part(fill_name(p, m)) for p in parts)
    return None


def original_from_flat(flat: str) -> str | None:
    """kohya's flattened name (``double_blocks_3_img_mlp_fc1``) -> ``double_blocks.3.img_mlp.fc1``."""
    for orig, _, flat_pat, _, _ in _compiled():
        m = flat_pat.fullmatch(flat)
        if m:
            return fill_name(orig, m)
    return None


def original_from_comfy(name: str, form: str = "internal") -> str | None:
    """Original module from a ComfyUI name: ``internal``, ``flat`` or ``lora`` form."""
    for orig, _, _, _, comfy in _compiled():
        m = comfy[form].fullmatch(name)
        if m:
            return fill_name(orig, m)
    return None


def comfy_name(original: str, form: str = "internal") -> str:
    """ComfyUI's ``internal`` name (``img_attn.qkv``) or its LoRA key map's (``lora``) name."""
    for orig, pat, _, _, _ in _compiled():
        m = pat.fullmatch(original)
        if m:
            internal = fill_name(_COMFY_INTERNAL.get(orig, orig), m)
            return comfy_lora_name(internal) if form == "lora" else internal
    return original
