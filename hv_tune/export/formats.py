"""Which LoRA format a file is in, read from its keys (DESIGN.md §4, docs/lora-formats.md).

- ``diffusers``: ``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight``
  (also PEFT's ``base_model.model.`` prefix, or no prefix), alpha in the metadata;
- ``comfyui`` (original): ``diffusion_model.<original module>.lora_A.weight`` / ``.lora_B.weight``
  (``lora_down`` / ``lora_up`` / ``.alpha`` are read too);
- ``kohya`` (musubi-tuner): ``lora_unet_<original module, dots as underscores>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``.

Module names are resolved through the model spec, so a key that looks right but names no
layer of the model ends up in the "unknown" list. Files for other model families are
recognised by key patterns that never occur in a HunyuanVideo LoRA.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from hv_tune.errors import HvTuneError
from hv_tune.models.base import ModelSpec

FORMATS = ("diffusers", "comfyui", "kohya")
KINDS = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "alpha": "alpha",
}
_KEY = re.compile(r"(?P<module>.+?)\.(?P<kind>lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha)")
_PEFT_PREFIX = "base_model.model."

# Key patterns (re.search) that identify another model family. None of them can match a
# HunyuanVideo key in any of the three formats (tests/test_export_formats.py checks that).
OTHER_FAMILIES: dict[str, tuple[str, ...]] = {
    "Flux": (
        r"(img|txt)_attn\.(qkv|proj)\.",  # Flux's original names put a dot before qkv
        r"(img|txt)_mod[._]lin\.",
        r"(img|txt)_mlp[._][02]\.",
        r"modulation[._]lin\.",
        r"(^|[._])(img_in|txt_in)\.(lora_|alpha)",  # Flux's img_in/txt_in are linear layers
        r"(^|\.)(x_embedder|context_embedder)\.lora_",
    ),
    "SDXL": (r"^lora_te2_", r"^text_encoder_2\.", r"conditioner\.embedders\.1\."),
    "Stable Diffusion (UNet)": (
        r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]\d",
        r"^lora_te\d?_text_model",
        r"^unet\.",
    ),
    "Wan": (r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn)[._](q|k|v|o)[._]", r"[._]ffn[._]\d", r"(^|\.)blocks\.\d+\.attn[12]\."),
    "LTX-Video or CogVideoX": (r"transformer_blocks[._]\d+[._]attn[12][._]",),
}
_FAMILY_RES = {name: [re.compile(p) for p in pats] for name, pats in OTHER_FAMILIES.items()}
_UNSUPPORTED = {"lora_magnitude_vector": "DoRA", "dora_scale": "DoRA", ".hada_": "LoHa", ".lokr_": "LoKr"}


@dataclass(frozen=True)
class ParsedKey:
    """A LoRA key resolved to (format, module name in that format's layout, kind)."""

    format: str
    module: str  # diffusers module (diffusers format) or original module (comfyui, kohya)
    kind: str  # down | up | alpha


@dataclass
class KeyReport:
    """Every key of a file, sorted into parsed keys and unknown ones."""

    parsed: dict[str, ParsedKey] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def format(self) -> str:
        formats = Counter(p.format for p in self.parsed.values())
        return formats.most_common(1)[0][0]


def parse_key(spec: ModelSpec, key: str) -> ParsedKey | None:
    """Resolve one key against the spec's layouts; None if it names no known layer."""
    body = key.removeprefix(_PEFT_PREFIX)
    kohya = spec.lora_prefixes["kohya"]
    if body.startswith(kohya):
        m = _KEY.fullmatch(body[len(kohya) :])
        if m and "." not in m["module"]:
            original = spec.original_from_flat(m["module"])
            if original is not None:
                return ParsedKey("kohya", original, KINDS[m["kind"]])
        return None
    for prefix in (spec.lora_prefixes["comfyui"], spec.lora_prefixes["diffusers"]):
        if body.startswith(prefix):
            body = body[len(prefix) :]
            break
    m = _KEY.fullmatch(body)
    if m is None:
        return None
    module, kind = m["module"], KINDS[m["kind"]]
    if spec.original_parts(module) is not None:
        return ParsedKey("comfyui", module, kind)
    if spec.original_module(module) is not None:
        return ParsedKey("diffusers", module, kind)
    return None


def looks_like_family(keys: list[str]) -> tuple[str, str] | None:
    """(family, an example key) when keys match another model family's patterns."""
    for family, patterns in _FAMILY_RES.items():
        for key in keys:
            if any(p.search(key) for p in patterns):
                return family, key
    return None


def classify_keys(spec: ModelSpec, keys: list[str], source: str) -> KeyReport:
    """Sort a file's keys; refuse files for other families, other adapter types, or mixed formats.

    Raises:
        HvTuneError: naming ``source``, the family it looks like and an example key; or the
            adapter type (DoRA, LoHa, LoKr); or the key styles that are mixed.
    """
    for marker, kind in _UNSUPPORTED.items():
        hit = next((k for k in keys if marker in k), None)
        if hit is not None:
            raise HvTuneError(f"{source}: this is a {kind} adapter (key {hit!r}); only plain LoRA files are supported")
    family = looks_like_family(keys)
    if family is not None:
        raise HvTuneError(
            f"{source}: this LoRA looks like a {family[0]} LoRA, not {spec.name} (key {family[1]!r}); "
            f"use it with a {family[0]} model"
        )
    report = KeyReport()
    for key in keys:
        parsed = parse_key(spec, key)
        if parsed is None:
            report.unknown.append(key)
        else:
            report.parsed[key] = parsed
    if not report.parsed:
        shown = ", ".join(repr(k) for k in keys[:5])
        raise HvTuneError(
            f"{source}: no {spec.name} LoRA keys found (first keys: {shown}); expected "
            f"diffusers ('transformer.transformer_blocks.0.attn.to_q.lora_A.weight'), ComfyUI "
            f"('diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight') or kohya "
            f"('lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight') keys"
        )
    styles = Counter(p.format for p in report.parsed.values())
    if len(styles) > 1:
        examples = {f: next(k for k, p in report.parsed.items() if p.format == f) for f in styles}
        raise HvTuneError(f"{source}: keys of several formats in one file: {examples}; convert each part separately")
    return report


def unknown_keys_message(source: str, unknown: list[str], limit: int = 20) -> str:
    """A readable list of keys that name no layer of the model."""
    shown = "\n  ".join(unknown[:limit])
    more = f"\n  ... and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return f"{source}: {len(unknown)} key(s) name no layer this tool knows:\n  {shown}{more}"
