"""Reading DoRA, LoKr and LoHa files (PEFT and LyCORIS key names, every layout) into the canonical form.

Keys (docs/lora-formats.md, "Adapter types"): PEFT's ``get_peft_model_state_dict`` names
(``<module>.lokr_w1``, ``lokr_w1_a/_b``, ``lokr_w2``, ``lokr_w2_a/_b``, ``hada_w1_a/_b``,
``hada_w2_a/_b``, ``lora_magnitude_vector`` with ``lora_A/B``) with alpha and rank in the PEFT
config (metadata or ``adapter_config.json``), or LyCORIS's (the same factor names, ``dora_scale``,
``.alpha``; ComfyUI and musubi-tuner read these) under any layout's module names. Module names
are resolved by ``formats.parse_key``, so every layout's names work for every type.

Adapter types hv-tune does not support (OFT, BOFT, GLoRA, (IA)^3, Tucker-decomposed LoKr/LoHa,
...) are refused naming the type and its keys.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.adapters import DoraModule, LohaModule, LokrModule, lycoris_lokr_scale
from hv_tune.export.alpha import _pattern_value, adapter_config
from hv_tune.export.formats import Layout, parse_key
from hv_tune.export.lora_math import LoraModule
from hv_tune.models.base import ModelSpec

#: key fragments of adapter types we do not read -> the type's name
UNSUPPORTED = {
    ".oft_blocks": "OFT (LyCORIS diag-oft)", ".oft_diag": "OFT (LyCORIS)", ".oft_r": "OFT (PEFT)",
    ".oft_R": "OFT", ".boft_R": "BOFT", ".boft_s": "BOFT", ".a1.weight": "GLoRA", ".b1.weight": "GLoRA",
    ".lokr_t2": "LoKr with Tucker decomposition (convolutions only)",
    ".hada_t1": "LoHa with Tucker decomposition (convolutions only)", ".lora_mid": "LoCon with Tucker decomposition",
    ".ia3_l": "(IA)^3 (PEFT)", ".on_input": "(IA)^3 (LyCORIS)", ".w_norm": "LyCORIS norm", ".b_norm": "LyCORIS norm",
    ".lora_E": "AdaLoRA", ".vera_lambda": "VeRA",
}
_SUFFIX = re.compile(
    r"(?P<base>.+?)\.(?P<kind>lokr_w[12](?:_[ab])?|hada_w[12]_[ab]|lora_magnitude_vector(?:\.weight)?|dora_scale"
    r"|lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha|diff_b|diff)"
)
_ADAPTER_MARKERS = (".lokr_", ".hada_", "lora_magnitude_vector", ".dora_scale")


def refuse_unsupported(keys: list[str], source: str) -> None:
    """Refuse a file holding an adapter type hv-tune cannot apply.

    Raises:
        HvTuneError: naming the type and up to 5 of its keys.
    """
    for marker, kind in UNSUPPORTED.items():
        hits = [k for k in keys if marker in k]
        if hits:
            shown = ", ".join(repr(k) for k in hits[:5]) + (f" (and {len(hits) - 5} more)" if len(hits) > 5 else "")
            raise HvTuneError(f"{source}: this is a {kind} adapter (keys {shown}); hv-tune reads LoRA, DoRA, LoKr "
                              "and LoHa files only")


def has_adapter_keys(keys: list[str]) -> bool:
    """Whether a file holds DoRA, LoKr or LoHa keys (else it is a plain LoRA file)."""
    return any(m in k for k in keys for m in _ADAPTER_MARKERS)


def _kind(suffix: str) -> str:
    return {"lora_A.weight": "down", "lora_down.weight": "down", "lora_B.weight": "up", "lora_up.weight": "up",
            "lora_magnitude_vector.weight": "magnitude", "lora_magnitude_vector": "magnitude"}.get(suffix, suffix)


def group_adapter_keys(spec: ModelSpec, tensors: Mapping[str, torch.Tensor], source: str
                       ) -> tuple[Layout, dict[str, dict[str, torch.Tensor]], list[str]]:
    """Adapter keys grouped by module (diffusers module for the diffusers layout, else original module).

    Returns:
        The file's layout, module -> {kind: tensor}, and the keys naming no layer.

    Raises:
        HvTuneError: for keys of several layouts, or none that name a layer.
    """
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown: list[str] = []
    common = set(Layout)
    for key, t in tensors.items():
        m = _SUFFIX.fullmatch(key)
        parsed = parse_key(spec, f"{m['base']}.alpha") if m else None
        if parsed is None:
            unknown.append(key)
            continue
        common &= parsed.layouts
        groups[parsed.module][_kind(m["kind"])] = t
    if not groups:
        raise HvTuneError(f"{source}: no {spec.name} adapter keys found (first keys: {list(tensors)[:5]})")
    if not common:
        raise HvTuneError(f"{source}: keys of several formats in one file; convert each part separately")
    return next(x for x in Layout if x in common), dict(groups), unknown


def _config_scale(config: Mapping[str, Any] | None, module: str, rank: int | None, alpha_key: str) -> float | None:
    """``alpha / r`` from a PEFT config (``rank_pattern`` / ``alpha_pattern``), None without one."""
    if config is None:
        return None
    r = _pattern_value(config.get("rank_pattern") or {}, module) or config.get("r", rank)
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    alpha = config.get(alpha_key, r) if alpha is None else alpha
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))  # rsLoRA: alpha / sqrt(r)


def build_module(module: str, g: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, peft: bool,
                 source: str) -> LoraModule | DoraModule | LokrModule | LohaModule | None:
    """One module from its keys: PEFT's scale (``alpha / r`` of the config) when ``peft``, else LyCORIS's
    (``.alpha`` key; ComfyUI's and musubi-tuner's reading). None for a module that only has deltas.

    Raises:
        HvTuneError: naming the module for an incomplete set of keys or a column-wise DoRA scale.
    """
    alpha = float(g["alpha"].float().item()) if "alpha" in g else None
    if any(k.startswith("lokr_") for k in g):
        m = LokrModule(**{k.removeprefix("lokr_"): v for k, v in g.items() if k.startswith("lokr_")})
        if (m.w1 is None) == (m.w1_a is None) or (m.w2 is None) == (m.w2_a is None):
            raise HvTuneError(f"{source}: LoKr module {module!r} needs lokr_w1 (or _a/_b) and lokr_w2 (or _a/_b)")
        scale = _config_scale(config, module, m.rank, "alpha") if peft else None
        m.scale = scale if scale is not None else lycoris_lokr_scale(alpha, m)
        return m
    if any(k.startswith("hada_") for k in g):
        if len([k for k in g if k.startswith("hada_")]) != 4:
            raise HvTuneError(f"{source}: LoHa module {module!r} needs hada_w1_a/_b and hada_w2_a/_b")
        m = LohaModule(g["hada_w1_a"], g["hada_w1_b"], g["hada_w2_a"], g["hada_w2_b"])
        scale = _config_scale(config, module, m.rank, "alpha") if peft else None
        m.scale = scale if scale is not None else (1.0 if alpha is None else alpha / m.rank)
        return m
    if "down" not in g:
        return None
    down, up = g["down"], g["up"]
    rank = int(down.shape[0])
    scale = _config_scale(config, module, rank, "lora_alpha") if peft else None
    lora = LoraModule(down, up, scale * rank if scale is not None else (alpha if alpha is not None else float(rank)))
    if "magnitude" in g:
        return DoraModule(lora, g["magnitude"].reshape(-1))
    if "dora_scale" in g:
        d = g["dora_scale"]
        if d.dim() != 2 or d.shape[1] != 1 or d.shape[0] != up.shape[0]:
            raise HvTuneError(f"{source}: {module!r}.dora_scale has shape {tuple(d.shape)}: a norm per input column "
                              "(LyCORIS wd_on_out=False), which is not PEFT's DoRA; only [out, 1] is read")
        return DoraModule(lora, d.reshape(-1))
    return lora


def file_config(path: Path, meta: Mapping[str, str], notes: list[str]) -> dict[str, Any] | None:
    """The PEFT config of a file (metadata or ``adapter_config.json``), with a note where it came from."""
    config, source = adapter_config(path, meta)
    if config is not None and source and "metadata" not in source:
        notes.append(f"alpha and rank read from {source}")
    return config


def rows_of(spec: ModelSpec, original: str, shapes: Mapping[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Row indices of each diffusers part inside a fused original layer, in the part's own row order."""
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    row = 0
    for part in spec.keys.original_parts(original):
        if part.module not in shapes:
            raise HvTuneError(f"{original!r} contains {part.module!r}, which is not a linear layer of the model")
        n = shapes[part.module][0] // part.chunks
        pieces[part.module].append((part.chunk, torch.arange(row, row + n)))
        row += n
    return {module: torch.cat([t for _, t in sorted(c, key=lambda x: x[0])]) for module, c in pieces.items()}


def _resolve_fused(spec: ModelSpec, source: Path, original: str, m: Any, shapes: Mapping[str, tuple[int, int]]
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A module of an original (possibly fused) layer as diffusers modules, or as weight deltas where the
    type does not split by rows (LoKr)."""
    from hv_tune.export.adapters import loha_rows, lokr_delta, module_shape
    from hv_tune.export.lora_parts import resolve_original

    if isinstance(m, LoraModule):
        return resolve_original(spec, source, original, m, shapes, None), {}
    idx = rows_of(spec, original, shapes)
    rows, in_f = sum(len(i) for i in idx.values()), shapes[next(iter(idx))][1]
    if module_shape(m) != (rows, in_f):
        raise HvTuneError(f"{source}: {original!r} is {list(module_shape(m))}, the layer is [{rows}, {in_f}]: the "
                          "adapter was made for a model of another size (pass --model DIR of that model)")
    parts = spec.keys.original_parts(original)
    if len(parts) == 1 and parts[0].chunks == 1:
        return {parts[0].module: m}, {}
    if isinstance(m, LokrModule):
        delta = lokr_delta(m).to(next(iter(m.tensors().values())).dtype)
        return {}, {f"{module}.weight": delta[i] for module, i in idx.items()}
    if isinstance(m, LohaModule):
        return {module: p for module, i in idx.items() if (p := loha_rows(m, i)) is not None}, {}
    return {module: DoraModule(LoraModule(m.lora.down, m.lora.up[i], m.lora.alpha), m.magnitude[i])
            for module, i in idx.items()}, {}


def read_adapter_file(spec: ModelSpec, path: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str],
                      shapes: Mapping[str, tuple[int, int]]) -> Any:
    """``lora_io.read_lora`` for files with DoRA, LoKr or LoHa keys: a ``LoraFile`` whose modules are of
    those types (plain LoRA layers of the same file too) and whose deltas hold what does not split.

    Scales: PEFT's (``alpha / r`` of the config) for a file with a PEFT config and no ``.alpha`` keys
    (our diffusers layout, diffusion-pipe's folders), else LyCORIS's (ComfyUI's, musubi-tuner's).

    Raises:
        HvTuneError: naming the file and key for anything that does not fit the model.
    """
    from hv_tune.export.adapters import module_shape
    from hv_tune.export.lora_parts import LoraFile, check_finite, split_delta

    check_finite(path, tensors, {})
    layout, groups, unknown = group_adapter_keys(spec, tensors, str(path))
    lora = LoraFile(path, layout, {}, unknown)
    config = file_config(path, meta, lora.notes)
    for module, g in sorted(groups.items()):
        m = build_module(module, g, config, config is not None and "alpha" not in g, str(path))
        if layout == Layout.DIFFUSERS:
            if m is not None:
                if module not in shapes or module_shape(m) != tuple(shapes[module]):
                    raise HvTuneError(f"{path}: layer {module!r} ({list(module_shape(m))}) does not fit the model "
                                      f"({list(shapes.get(module, ()))}): made for a model of another size?")
                lora.modules[module] = m
            lora.diffs.update({f"{module}.{s}": g[k] for k, s in (("diff", "weight"), ("diff_b", "bias")) if k in g})
            continue
        if m is not None:
            modules, diffs = _resolve_fused(spec, path, module, m, shapes)
            lora.modules.update(modules)
            lora.diffs.update(diffs)
        for kind in ("diff", "diff_b"):
            if kind in g:
                for name, d in split_delta(spec, path, module, g[kind], kind, shapes).items():
                    lora.diffs[name] = lora.diffs[name] + d if name in lora.diffs else d
    return lora


def peft_modules(state: Mapping[str, torch.Tensor], config: Any, source: str = "adapter") -> dict[str, Any]:
    """A PEFT state dict (``get_peft_model_state_dict`` names, any of the four types) and its PEFT config
    (object or dict) as modules of the canonical form, with PEFT's scales.

    Raises:
        HvTuneError: naming a key that is no LoRA/DoRA/LoKr/LoHa parameter.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    refuse_unsupported(list(state), source)
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, t in state.items():
        m = _SUFFIX.fullmatch(key.removeprefix("base_model.model."))
        if m is None or m["kind"] in ("alpha", "diff", "diff_b", "dora_scale"):
            raise HvTuneError(f"{source}: key {key!r} is not a PEFT LoRA, DoRA, LoKr or LoHa parameter")
        groups[m["base"]][_kind(m["kind"])] = t
    return {module: build_module(module, g, cfg, True, source) for module, g in sorted(groups.items())}
