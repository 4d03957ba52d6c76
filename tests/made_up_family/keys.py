"""The made-up family's key table: its own original names, one fused row, its own prefixes."""

from __future__ import annotations

import re

from hv_tune.models.base import KeyLayout, Part

# original template -> diffusers parts in row order ("{i}" is a block index)
ROWS = {
    "dbl.{i}.qkv": ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                    "transformer_blocks.{i}.attn.to_v"),
    "dbl.{i}.out": ("transformer_blocks.{i}.attn.to_out.0",),
}


def _pattern(template: str, sep: str = ".") -> re.Pattern[str]:
    return re.compile(re.escape(template.replace(".", sep)).replace(r"\{i\}", r"(?P<i>\d+)"))


def _fill(template: str, m: re.Match[str]) -> str:
    return template.replace("{i}", m["i"])


def original_module(module: str) -> str | None:
    for orig, parts in ROWS.items():
        for part in parts:
            if m := _pattern(part).fullmatch(module):
                return _fill(orig, m)
    return None


def original_parts(original: str) -> tuple[Part, ...] | None:
    for orig, parts in ROWS.items():
        if m := _pattern(orig).fullmatch(original):
            return tuple(Part(_fill(p, m)) for p in parts)
    return None


def original_from_flat(flat: str) -> str | None:
    for orig in ROWS:
        if m := _pattern(orig, "_").fullmatch(flat):
            return _fill(orig, m)
    return None


def original_from_comfy(name: str, form: str = "internal") -> str | None:
    """ComfyUI's LoRA key map would read the original names; the family has no ComfyUI-internal names."""
    if form == "flat":
        return original_from_flat(name)
    return name if form == "lora" and original_parts(name) else None


def comfy_name(original: str, form: str = "internal") -> str:
    return original


LAYOUT = KeyLayout(
    lora_prefixes={"diffusers": "transformer.", "comfyui": "made_up_model.", "kohya": "lora_made_up_"},
    own_module_markers=("dbl.",), lookalike_blocks={},
    block_patterns=(r"^(?:dbl|transformer_blocks)\.(\d+)\.", r"^single_transformer_blocks\.(\d+)\."),
    original_module=original_module, original_parts=original_parts, kohya_module=original_module,
    original_from_flat=original_from_flat, original_from_comfy=original_from_comfy, comfy_name=comfy_name,
)
