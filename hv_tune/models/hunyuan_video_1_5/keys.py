"""HunyuanVideo 1.5 module names: diffusers layout <-> the ComfyUI and kohya (musubi-tuner) LoRA layouts.

Two tables, one per layout family (docs/hunyuan_video_1_5.md, LoRA):

- ComfyUI loads 1.5 into its HunyuanVideo model, whose attention is a fused ``qkv`` and whose
  LoRA key map accepts the same names as for v1 (``img_attn_qkv``, ``img_mlp.fc1``,
  ``img_mod.linear`` under ``diffusion_model.``): ``_FUSED_ROWS``. A LoRA on separate q/k/v
  is fused (A concatenated, B block-diagonal) by the export code from the ``Part`` records.
- Tencent's 1.5 checkpoint, and musubi-tuner's 1.5 network (``MMDoubleStreamBlock``), keep
  ``img_attn_q/k/v`` and ``txt_attn_q/k/v`` separate: the kohya layout uses these names
  (``kohya_module``), one row per diffusers module (``_KOHYA_ROWS``).

Readers accept both: ``original_parts`` knows every name of either table, and
``original_from_flat`` also reads the fused kohya names hv-tune wrote before (2026-11-29).
1.5 has no single-stream blocks; its other modules (byT5 and image projections, embedders,
``cond_type_embed``, the token refiner) have no row here. Pure string logic, no diffusers import.
"""

from __future__ import annotations

import functools

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

_B = "transformer_blocks.{i}."
_IMG_QKV = (Part(_B + "attn.to_q"), Part(_B + "attn.to_k"), Part(_B + "attn.to_v"))
_TXT_QKV = (Part(_B + "attn.add_q_proj"), Part(_B + "attn.add_k_proj"), Part(_B + "attn.add_v_proj"))
# rows both layouts share: (original template, diffusers parts in row order); "{i}" is a block index
_SHARED_ROWS: tuple[tuple[str, tuple[Part, ...]], ...] = (
    ("double_blocks.{i}.img_attn_proj", (Part(_B + "attn.to_out.0"),)),
    ("double_blocks.{i}.txt_attn_proj", (Part(_B + "attn.to_add_out"),)),
    ("double_blocks.{i}.img_mlp.fc1", (Part(_B + "ff.net.0.proj"),)),
    ("double_blocks.{i}.img_mlp.fc2", (Part(_B + "ff.net.2"),)),
    ("double_blocks.{i}.txt_mlp.fc1", (Part(_B + "ff_context.net.0.proj"),)),
    ("double_blocks.{i}.txt_mlp.fc2", (Part(_B + "ff_context.net.2"),)),
    ("double_blocks.{i}.img_mod.linear", (Part(_B + "norm1.linear"),)),  # same chunk order (shift, scale, gate x2)
    ("double_blocks.{i}.txt_mod.linear", (Part(_B + "norm1_context.linear"),)),
    ("final_layer.linear", (Part("proj_out"),)),
    # Tencent (and ComfyUI): [shift; scale]; diffusers' AdaLayerNormContinuous: [scale; shift]
    ("final_layer.adaLN_modulation.1", (Part("norm_out.linear", 1, 2), Part("norm_out.linear", 0, 2))),
)
_FUSED_ROWS = (("double_blocks.{i}.img_attn_qkv", _IMG_QKV), ("double_blocks.{i}.txt_attn_qkv", _TXT_QKV),
               *_SHARED_ROWS)
_KOHYA_ROWS = (*((f"double_blocks.{{i}}.img_attn_{x}", (p,)) for x, p in zip("qkv", _IMG_QKV)),
               *((f"double_blocks.{{i}}.txt_attn_{x}", (p,)) for x, p in zip("qkv", _TXT_QKV)),
               *_SHARED_ROWS)
# ComfyUI runs 1.5 on its HunyuanVideo model: the double-block internal names are v1's
_COMFY_INTERNAL = {k: v for k, v in COMFY_INTERNAL.items() if k.startswith("double_blocks.")}


class _Row:
    """One table row with its compiled patterns."""

    def __init__(self, orig: str, parts: tuple[Part, ...]):
        self.orig, self.parts = orig, parts
        self.pattern, self.flat = name_pattern(orig), name_pattern(orig, "_")
        self.part_patterns = [name_pattern(p.module) for p in parts]
        internal = _COMFY_INTERNAL.get(orig, orig)
        self.internal = internal
        self.comfy = {"internal": name_pattern(internal), "flat": name_pattern(internal, "_"),
                      "lora": name_pattern(comfy_lora_name(internal))}


@functools.cache
def _table(kohya: bool) -> tuple[_Row, ...]:
    return tuple(_Row(o, p) for o, p in (_KOHYA_ROWS if kohya else _FUSED_ROWS))


def _module_in(rows: tuple[_Row, ...], module: str) -> str | None:
    for row in rows:
        for pat in row.part_patterns:
            m = pat.fullmatch(module)
            if m:
                return fill_name(row.orig, m)
    return None


def original_module(module: str) -> str | None:
    """``transformer_blocks.3.attn.to_k`` -> ``double_blocks.3.img_attn_qkv`` (ComfyUI's fused names)."""
    return _module_in(_table(False), module)


def kohya_module(module: str) -> str | None:
    """``transformer_blocks.3.attn.to_k`` -> ``double_blocks.3.img_attn_k`` (musubi-tuner's names)."""
    return _module_in(_table(True), module)


def original_parts(original: str) -> tuple[Part, ...] | None:
    """``double_blocks.3.img_attn_qkv`` -> to_q, to_k, to_v of ``transformer_blocks.3``;
    ``double_blocks.3.img_attn_k`` -> to_k (names of either table)."""
    for row in (*_table(False), *_table(True)):
        m = row.pattern.fullmatch(original)
        if m:
            return tuple(Part(fill_name(p.module, m), p.chunk, p.chunks) for p in row.parts)
    return None


def original_from_flat(flat: str) -> str | None:
    """kohya's flattened name (``double_blocks_3_img_attn_q``) -> ``double_blocks.3.img_attn_q``;
    the fused ``..._img_attn_qkv`` of older hv-tune files is read too."""
    for row in (*_table(True), *_table(False)):
        m = row.flat.fullmatch(flat)
        if m:
            return fill_name(row.orig, m)
    return None


def original_from_comfy(name: str, form: str = "internal") -> str | None:
    """Original module from a ComfyUI name: ``internal``, ``flat`` or ``lora`` form."""
    for row in _table(False):
        m = row.comfy[form].fullmatch(name)
        if m:
            return fill_name(row.orig, m)
    return None


def comfy_name(original: str, form: str = "internal") -> str:
    """ComfyUI's ``internal`` name (``img_attn.qkv``) or its LoRA key map's (``lora``) name."""
    for row in _table(False):
        m = row.pattern.fullmatch(original)
        if m:
            internal = fill_name(row.internal, m)
            return comfy_lora_name(internal) if form == "lora" else internal
    return original


#: HunyuanVideo 1.5's key layout (the spec's ``keys`` facet): ComfyUI loads 1.5 as a HunyuanVideo, so
#: the same prefixes, family markers and look-alikes apply
LAYOUT = KeyLayout(LORA_PREFIXES, OWN_MODULE_MARKERS, LOOKALIKE_BLOCKS, BLOCK_PATTERNS, original_module,
                   original_parts, kohya_module, original_from_flat, original_from_comfy, comfy_name)
