"""The LoRA layouts hv-tune reads and writes, and which one a file is in (docs/lora-formats.md).

One vocabulary: ``Layout`` names each layout once; ``FORMATS`` says, per layout, how its
keys look and what it can carry, so a new layout is one entry there (plus its names in the
model spec). The layouts:

- ``diffusers`` (PEFT): ``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight``
  (also PEFT's ``base_model.model.`` prefix, or no prefix), alpha in the metadata;
- ``comfyui`` (Tencent's original names, as ComfyUI's LoRA key map and diffusion-pipe use
  them): ``diffusion_model.<original module>.lora_A.weight`` (``transformer.`` /
  ``base_model.model.`` / no prefix, ``lora_down`` / ``lora_up`` / ``.alpha`` are read too);
- ``kohya`` (musubi-tuner): ``lora_unet_<original module, dots as underscores>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``;
- ``comfyui-internal`` (LoRAs extracted in ComfyUI): ComfyUI's own module names
  (``img_attn.qkv``, ``img_mlp.0``, ``img_mod.lin``, ``time_in.in_layer``), with ``.alpha``,
  ``.diff_b`` (bias delta) and ``.diff`` (full weight delta) entries.

Module names are resolved through the model spec, so a key that looks right but names no
layer of the model ends up in the "unknown" list. Files for other model families are
recognised by key patterns that never occur in a LoRA of our families, and families whose
module names match the spec's (``spec.keys.lookalike_blocks``, e.g. Flux's in ComfyUI) by their
block counts unless the file reaches a module only the spec's family has (``spec.keys.own_module_markers``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from hv_tune.errors import HvTuneError
from hv_tune.models import OTHER_FAMILIES
from hv_tune.models.base import LORA_FILE, ModelSpec


class Layout(str, Enum):
    """A LoRA file layout; the value is its one name (CLI flags, config, notes)."""

    DIFFUSERS = "diffusers"
    COMFYUI = "comfyui"
    KOHYA = "kohya"
    COMFYUI_INTERNAL = "comfyui-internal"

    def __str__(self) -> str:
        return self.value


#: other names users and older flags give a layout
ALIASES = {"original": Layout.COMFYUI, "tencent": Layout.COMFYUI, "diffusion-pipe": Layout.COMFYUI}


@dataclass(frozen=True)
class Format:
    """How one layout's keys look and what a file in it can carry."""

    layout: Layout
    #: key of ``spec.keys.lora_prefixes`` for the prefix written
    prefix: str
    down: str
    up: str
    #: writes a ``.alpha`` tensor per module (else alpha / rank is folded into ``up``)
    alpha_key: bool
    #: can carry ``.diff`` / ``.diff_b`` deltas (ComfyUI applies them)
    diffs: bool
    #: module names: ``diffusers``, ``original`` (as ComfyUI's LoRA key map reads them),
    #: ``flat`` (original, dots as underscores) or ``internal`` (ComfyUI's module names)
    names: str
    #: file name in the output folder (``save.formats``); the diffusers one is ``LORA_FILE``
    file_name: str
    example: str


FORMATS: dict[Layout, Format] = {
    Layout.DIFFUSERS: Format(Layout.DIFFUSERS, "diffusers", "lora_A.weight", "lora_B.weight", False, False,
                             "diffusers", LORA_FILE,
                             "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"),
    Layout.COMFYUI: Format(Layout.COMFYUI, "comfyui", "lora_A.weight", "lora_B.weight", False, True,
                           "original", "lora_comfyui.safetensors",
                           "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight"),
    Layout.KOHYA: Format(Layout.KOHYA, "kohya", "lora_down.weight", "lora_up.weight", True, False,
                         "flat", "lora_kohya.safetensors", "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"),
    Layout.COMFYUI_INTERNAL: Format(Layout.COMFYUI_INTERNAL, "comfyui", "lora_down.weight", "lora_up.weight", True,
                                    True, "internal", "lora_comfyui_internal.safetensors",
                                    "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"),
}


def to_layout(name: str | Layout) -> Layout:
    """A layout from its name or an alias.

    Raises:
        HvTuneError: naming the valid layouts.
    """
    if isinstance(name, Layout):
        return name
    key = str(name).lower()
    if key in ALIASES:
        return ALIASES[key]
    try:
        return Layout(key)
    except ValueError:
        names = ", ".join([*(f.value for f in Layout), *ALIASES])
        raise HvTuneError(f"unknown LoRA format {name!r}; use one of {names}") from None


KINDS = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "alpha": "alpha",
    "diff": "diff",
    "diff_b": "diff_b",
}
_KEY = re.compile(
    r"(?P<module>.+?)\.(?P<kind>lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha|diff_b|diff)"
)
_PEFT_PREFIX = "base_model.model."

# the registry's key patterns of unregistered families (``hv_tune.models.OTHER_FAMILIES``)
_FAMILY_RES = {name: [re.compile(p) for p in pats] for name, pats in OTHER_FAMILIES.items()}


@dataclass(frozen=True)
class ParsedKey:
    """A LoRA key resolved to (layouts it fits, module, kind)."""

    layouts: frozenset[Layout]
    module: str  # diffusers module (diffusers layout) or original module (every other layout)
    kind: str  # down | up | alpha | diff | diff_b


@dataclass
class KeyReport:
    """Every key of a file, sorted into parsed keys and unknown ones, and the file's layout."""

    parsed: dict[str, ParsedKey] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    layout: Layout = Layout.DIFFUSERS

    @property
    def format(self) -> Layout:
        return self.layout


def _original_layouts(spec: ModelSpec, module: str) -> tuple[set[Layout], str | None]:
    """Layouts an (unprefixed, dotted) module name fits, and the original module it names."""
    layouts: set[Layout] = set()
    original = None
    if spec.keys.original_parts(module) is not None:
        layouts.add(Layout.COMFYUI)
        original = module
    lora_named = spec.keys.original_from_comfy(module, "lora")
    if lora_named is not None:
        layouts.add(Layout.COMFYUI)
        original = original or lora_named
    internal = spec.keys.original_from_comfy(module, "internal")
    if internal is not None:
        layouts.add(Layout.COMFYUI_INTERNAL)
        original = original or internal
    return layouts, original


def parse_key(spec: ModelSpec, key: str) -> ParsedKey | None:
    """Resolve one key against the spec's layouts; None if it names no known layer."""
    body = key.removeprefix(_PEFT_PREFIX)
    kohya = spec.keys.lora_prefixes["kohya"]
    if body.startswith(kohya):
        m = _KEY.fullmatch(body[len(kohya) :])
        if m and "." not in m["module"]:
            flat = m["module"]
            original = spec.keys.original_from_flat(flat) or spec.keys.original_from_comfy(flat, "flat")
            if original is not None:
                return ParsedKey(frozenset({Layout.KOHYA}), original, KINDS[m["kind"]])
        return None
    for prefix in (spec.keys.lora_prefixes["comfyui"], spec.keys.lora_prefixes["diffusers"]):
        if body.startswith(prefix):
            body = body[len(prefix) :]
            break
    m = _KEY.fullmatch(body)
    if m is None:
        return None
    module, kind = m["module"], KINDS[m["kind"]]
    layouts, original = _original_layouts(spec, module)
    if original is not None:
        return ParsedKey(frozenset(layouts), original, kind)
    if spec.keys.original_module(module) is not None:
        return ParsedKey(frozenset({Layout.DIFFUSERS}), module, kind)
    return None


def looks_like_family(keys: list[str]) -> tuple[str, str] | None:
    """(family, an example key) when keys match another model family's patterns."""
    for family, patterns in _FAMILY_RES.items():
        for key in keys:
            if any(p.search(key) for p in patterns):
                return family, key
    return None


def family_by_blocks(spec: ModelSpec, parsed: dict[str, ParsedKey]) -> tuple[str, str] | None:
    """(family, explanation) when the blocks a file reaches are exactly a look-alike family's.

    A file whose highest double block is that family's last (and whose single blocks, if
    any, end at its last too) and that reaches no module only ``spec``'s family has is that family's.
    """
    own = [k for k, p in parsed.items() if any(x in p.module for x in spec.keys.own_module_markers)]
    double_re, single_re = (re.compile(p) for p in spec.keys.block_patterns)
    doubles = {int(m[1]) for p in parsed.values() if (m := double_re.match(p.module))}
    singles = {int(m[1]) for p in parsed.values() if (m := single_re.match(p.module))}
    if own or not (doubles or singles):
        return None
    for family, (n_double, n_single) in spec.keys.lookalike_blocks.items():
        double_fits = not doubles or max(doubles) == n_double - 1
        single_fits = not singles or max(singles) == n_single - 1
        if double_fits and single_fits:
            return family, (f"its blocks end at double block {max(doubles, default='-')} and single block "
                            f"{max(singles, default='-')}: {family} has {n_double} + {n_single}")
    return None


def classify_keys(spec: ModelSpec, keys: list[str], source: str) -> KeyReport:
    """Sort a plain LoRA file's keys; refuse files for other families, or mixed layouts (DoRA, LoKr and
    LoHa files are sorted by ``adapter_io``).

    Raises:
        HvTuneError: naming ``source``, the family it looks like and an example key; or the key
            styles that are mixed.
    """
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
        expected = ", ".join(f"{f.layout} ({f.example!r})" for f in FORMATS.values())
        raise HvTuneError(f"{source}: no {spec.name} LoRA keys found (first keys: {shown}); expected {expected} keys")
    by_blocks = family_by_blocks(spec, report.parsed)
    if by_blocks is not None:
        raise HvTuneError(
            f"{source}: this LoRA looks like a {by_blocks[0]} LoRA, not {spec.name} ({by_blocks[1]}); "
            f"use it with a {by_blocks[0]} model"
        )
    report.layout = _common_layout(report, source)
    return report


def _common_layout(report: KeyReport, source: str) -> Layout:
    """The one layout every parsed key fits (in ``Layout`` order when several do)."""
    common = set(Layout)
    for p in report.parsed.values():
        common &= p.layouts
    if common:
        return next(layout for layout in Layout if layout in common)
    examples: dict[str, str] = {}
    for key, p in report.parsed.items():
        examples.setdefault("/".join(sorted(str(x) for x in p.layouts)), key)
    raise HvTuneError(f"{source}: keys of several formats in one file: {examples}; convert each part separately")


def unknown_keys_message(source: str, unknown: list[str], limit: int = 20, what: str = "name no layer this tool knows") -> str:
    """A readable list of keys (at most ``limit`` shown)."""
    shown = "\n  ".join(unknown[:limit])
    more = f"\n  ... and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return f"{source}: {len(unknown)} key(s) {what}:\n  {shown}{more}"


def unknown_keys_policy(source: str, unknown: list[str], skip_unknown: bool, fix: str,
                        what: str = "name no layer this tool knows") -> list[str]:
    """The one policy for keys a step cannot use: refuse (listing them) unless told to skip.

    Args:
        fix: what the user can do, e.g. ``"merge with --skip-unknown to leave them out"``.

    Returns:
        Notes for the user (empty when nothing is left out).

    Raises:
        HvTuneError: listing the keys, when there are some and ``skip_unknown`` is false.
    """
    if not unknown:
        return []
    message = unknown_keys_message(source, unknown, what=what)
    if not skip_unknown:
        raise HvTuneError(f"{message}\n{fix}")
    return [message + "\n(left out: --skip-unknown)"]
