"""Read any supported LoRA file into one canonical form, and write that form in any format.

The canonical form maps diffusers module names to ``LoraModule`` (down, up, alpha), in the
dtype of the file. Reading resolves fused original layers into their diffusers parts;
writing fuses them back (``lora_math``). Key names come from the model spec.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.formats import FORMATS, ParsedKey, classify_keys
from hv_tune.export.lora_math import LoraModule, fold_scale, fuse, unfuse
from hv_tune.io import atomic_save_safetensors
from hv_tune.models.base import ModelSpec, Part

#: safetensors metadata key: per fused original module, the rank of each part (block-diagonal layout)
FUSED_RANKS_KEY = "hv_tune.fused_ranks"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

Shapes = Mapping[str, tuple[int, int]]


@dataclass
class LoraFile:
    """A LoRA read from disk: diffusers module -> update, plus what was noticed on the way."""

    path: Path
    format: str
    modules: dict[str, LoraModule]
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a LoRA file: safetensors, or ``torch.load(weights_only=True)``.

    Raises:
        HvTuneError: naming the file when it is missing, unreadable or not a flat tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise HvTuneError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except SafetensorError as e:
            raise HvTuneError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of every kind: report the file, not a traceback
        raise HvTuneError(f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HvTuneError(f"{path}: expected a dict of tensors")
    return dict(obj), {}


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup (``(.*\\.)?(key)$``, first match wins)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def _diffusers_alphas(path: Path, meta: Mapping[str, str], groups: Mapping[str, dict], notes: list[str]) -> dict[str, float]:
    """Alpha per module from the adapter metadata, PEFT's adapter_config.json, or ``.alpha`` keys."""
    config: dict[str, Any] | None = None
    if DIFFUSERS_METADATA_KEY in meta:
        raw = json.loads(meta[DIFFUSERS_METADATA_KEY])
        config = {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in raw.items()}
    elif (path.parent / "adapter_config.json").is_file():
        config = json.loads((path.parent / "adapter_config.json").read_text())
        notes.append(f"alpha read from {path.parent / 'adapter_config.json'}")
    if config is not None and config.get("use_dora"):
        raise HvTuneError(f"{path}: the adapter config says use_dora=true; DoRA is not supported")
    alphas = {}
    for module, g in groups.items():
        rank = g["down"].shape[0]
        if "alpha" in g:
            alphas[module] = float(g["alpha"])
        elif config is None:
            alphas[module] = float(rank)
        else:
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
            alpha = float(config.get("lora_alpha", rank) if alpha is None else alpha)
            if config.get("use_rslora"):
                alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r): same update as alpha' / r
            alphas[module] = alpha
    if config is None and not any("alpha" in g for g in groups.values()):
        notes.append("no alpha in the file: alpha = rank (scale 1), as diffusers assumes")
    return alphas


def _group(tensors: Mapping[str, torch.Tensor], parsed: Mapping[str, ParsedKey], source: Path) -> dict[str, dict]:
    groups: dict[str, dict] = defaultdict(dict)
    for key, p in parsed.items():
        if p.kind in groups[p.module]:
            raise HvTuneError(f"{source}: two keys for {p.kind} of {p.module!r} (one is {key!r})")
        groups[p.module][p.kind] = tensors[key] if p.kind != "alpha" else float(tensors[key].float().item())
    for module, g in groups.items():
        if "down" not in g or "up" not in g:
            missing = "up (lora_B / lora_up)" if "down" in g else "down (lora_A / lora_down)"
            raise HvTuneError(f"{source}: module {module!r} has no {missing} weight")
        if g["down"].dim() != 2 or g["up"].dim() != 2 or g["down"].shape[0] != g["up"].shape[1]:
            raise HvTuneError(
                f"{source}: module {module!r}: down {tuple(g['down'].shape)} and up {tuple(g['up'].shape)} "
                "are not a LoRA pair ([r, in] and [out, r])"
            )
    return groups


def _check_shape(source: Path, module: str, m: LoraModule, shapes: Shapes, what: str) -> None:
    if module not in shapes:
        raise HvTuneError(f"{source}: {what} {module!r} is not a linear layer of the model")
    out_f, in_f = shapes[module]
    if m.down.shape[1] != in_f or m.up.shape[0] != out_f:
        raise HvTuneError(
            f"{source}: {what} {module!r} has down {tuple(m.down.shape)}, up {tuple(m.up.shape)}, but the layer "
            f"is [{out_f}, {in_f}]: the LoRA was made for a model of another size (pass --model DIR of that model)"
        )


def _part_rows(spec_parts: tuple[Part, ...], shapes: Shapes, source: Path, original: str) -> list[int]:
    rows = []
    for p in spec_parts:
        if p.module not in shapes:
            raise HvTuneError(f"{source}: {original!r} contains {p.module!r}, which is not a linear layer of the model")
        rows.append(shapes[p.module][0] // p.chunks)
    return rows


def _resolve_original(
    spec: ModelSpec, source: Path, original: str, m: LoraModule, shapes: Shapes, ranks: list[int] | None
) -> dict[str, LoraModule]:
    """Split a fused original-layout module into diffusers modules."""
    parts = spec.original_parts(original)
    rows = _part_rows(parts, shapes, source, original)
    in_f = shapes[parts[0].module][1]
    if m.down.shape[1] != in_f or m.up.shape[0] != sum(rows):
        raise HvTuneError(
            f"{source}: {original!r} has down {tuple(m.down.shape)}, up {tuple(m.up.shape)}, but the layer is "
            f"[{sum(rows)}, {in_f}]: the LoRA was made for a model of another size (pass --model DIR of that model)"
        )
    pieces = unfuse(m, rows, ranks)
    out: dict[str, LoraModule] = {}
    by_module: dict[str, list[tuple[Part, LoraModule | None]]] = defaultdict(list)
    for part, piece in zip(parts, pieces):
        by_module[part.module].append((part, piece))
    for module, chunks in by_module.items():
        present = [pc for _, pc in chunks if pc is not None]
        if not present:
            continue
        if len(chunks) == 1:
            out[module] = present[0]
            continue
        # a module split into row chunks (final layer): the chunks must share one down
        ordered = [pc for _, pc in sorted(chunks, key=lambda t: t[0].chunk)]
        if any(pc is None for pc in ordered) or any(not torch.equal(pc.down, ordered[0].down) for pc in ordered):
            raise HvTuneError(f"{source}: {original!r}: cannot split this LoRA into {module!r} exactly")
        out[module] = LoraModule(ordered[0].down, torch.cat([pc.up for pc in ordered]), ordered[0].alpha)
    return out


def read_lora(spec: ModelSpec, path: str | os.PathLike, shapes: Shapes) -> LoraFile:
    """Read a LoRA in any supported format as diffusers modules, checked against ``shapes``.

    Args:
        shapes: ``(out, in)`` of the model's linear layers (``spec.linear_shapes`` or a checkpoint's).

    Raises:
        HvTuneError: naming the file and key for anything that does not fit the model.
    """
    path = Path(path)
    tensors, meta = load_tensors(path)
    report = classify_keys(spec, list(tensors), str(path))
    groups = _group(tensors, report.parsed, path)
    lora = LoraFile(path, report.format, {}, report.unknown)
    if report.format == "diffusers":
        alphas = _diffusers_alphas(path, meta, groups, lora.notes)
        for module, g in groups.items():
            m = LoraModule(g["down"], g["up"], alphas[module])
            _check_shape(path, module, m, shapes, "layer")
            lora.modules[module] = m
        return lora
    fused_ranks = json.loads(meta.get(FUSED_RANKS_KEY, "{}"))
    for original, g in groups.items():
        m = LoraModule(g["down"], g["up"], g.get("alpha", float(g["down"].shape[0])))
        lora.modules.update(_resolve_original(spec, path, original, m, shapes, fused_ranks.get(original)))
    return lora


# ----------------------------------------------------------------------------- writing


def _fuse_original(
    spec: ModelSpec, modules: Mapping[str, LoraModule], shapes: Shapes
) -> dict[str, tuple[LoraModule, list[int] | None]]:
    """Group diffusers modules into original modules and fuse each group."""
    originals: dict[str, None] = {}
    for module in modules:
        original = spec.original_module(module)
        if original is None:
            raise HvTuneError(f"layer {module!r} has no name in the original layout")
        originals.setdefault(original, None)
    fused = {}
    for original in originals:
        parts = spec.original_parts(original)
        rows = _part_rows(parts, shapes, Path("<lora>"), original)
        pieces = []
        for part, n in zip(parts, rows):
            m = modules.get(part.module)
            if m is not None and part.chunks > 1:
                m = LoraModule(m.down, m.up.chunk(part.chunks)[part.chunk], m.alpha)  # rows of one chunk
            pieces.append(m)
            if m is not None and m.up.shape[0] != n:
                raise HvTuneError(f"layer {part.module!r}: up has {m.up.shape[0]} rows, the model's layer {n}")
        fused[original] = fuse(pieces, rows)
    return fused


def _most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


def _write_diffusers(spec: ModelSpec, modules: Mapping[str, LoraModule], out: Path) -> Path:
    from peft import LoraConfig

    names = sorted(modules)
    r = _most_common([modules[n].rank for n in names])
    alpha = _most_common([modules[n].alpha for n in names])
    # "^name": the same anchored pattern diffusers writes, so a module never matches a longer name
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=names,
        rank_pattern={f"^{n}": modules[n].rank for n in names if modules[n].rank != r},
        alpha_pattern={f"^{n}": modules[n].alpha for n in names if modules[n].alpha != alpha},
    )
    state = {}
    for n in names:  # clone: parts of a fused layer share one down tensor, safetensors wants separate storage
        state[f"{n}.lora_A.weight"] = modules[n].down.clone().contiguous()
        state[f"{n}.lora_B.weight"] = modules[n].up.clone().contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-lora-") as tmp:
        written = spec.save_lora(Path(tmp), state, config)
        os.replace(written, out)
    return out


def _write_original(spec: ModelSpec, modules: Mapping[str, LoraModule], out: Path, fmt: str, shapes: Shapes) -> Path:
    prefix = spec.lora_prefixes[fmt]
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, list[int]] = {}
    for original, (m, part_ranks) in sorted(_fuse_original(spec, modules, shapes).items()):
        if part_ranks is not None:
            ranks[original] = part_ranks
        if fmt == "comfyui":  # no alpha in this format: readers (diffusers, ComfyUI) use scale 1
            m = fold_scale(m)
            state[f"{prefix}{original}.lora_A.weight"] = m.down
            state[f"{prefix}{original}.lora_B.weight"] = m.up
        else:
            flat = prefix + original.replace(".", "_")
            state[f"{flat}.lora_down.weight"] = m.down
            state[f"{flat}.lora_up.weight"] = m.up
            state[f"{flat}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    metadata = {"format": "pt", FUSED_RANKS_KEY: json.dumps(ranks, sort_keys=True)}
    if fmt == "kohya":
        metadata["ss_network_module"] = "networks.lora"
        metadata["ss_network_dim"] = str(_most_common([m.rank for m in modules.values()]))
        metadata["ss_network_alpha"] = str(_most_common([m.alpha for m in modules.values()]))
    return atomic_save_safetensors(out, state, metadata)


def write_lora(spec: ModelSpec, modules: Mapping[str, LoraModule], out: str | os.PathLike, fmt: str, shapes: Shapes) -> Path:
    """Write diffusers-named LoRA modules as one file in ``fmt`` (atomically).

    Args:
        shapes: the model's linear layer shapes; fusing needs the sizes of parts without a LoRA.
    """
    if fmt not in FORMATS:
        raise HvTuneError(f"unknown LoRA format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not modules:
        raise HvTuneError("the LoRA has no layers to write")
    out = Path(out)
    if fmt == "diffusers":
        return _write_diffusers(spec, modules, out)
    return _write_original(spec, modules, out, fmt, shapes)
