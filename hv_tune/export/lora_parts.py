"""The pieces of LoRA reading and writing that every adapter type shares (no file I/O of its own).

``lora_io`` (plain LoRA) and ``adapter_io`` / ``adapter_write`` (DoRA, LoKr, LoHa) build on these:
the canonical ``LoraFile``, fused-layer row bookkeeping (``part_rows``, ``resolve_original``,
``fuse_original``, ``split_delta``, ``fuse_diffs``), layout names (``module_name``) and PEFT metadata.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.formats import Layout, ParsedKey
from hv_tune.export.lora_math import LoraModule, fuse, unfuse
from hv_tune.models.base import ModelSpec, Part

Shapes = Mapping[str, tuple[int, int]]


@dataclass
class LoraFile:
    """A LoRA read from disk: diffusers module -> update, plus what was noticed on the way."""

    path: Path
    format: Layout
    modules: dict[str, LoraModule]
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: full deltas added to diffusers parameters (``<module>.weight`` from ``.diff``,
    #: ``<module>.bias`` from ``.diff_b``), in the file's dtype
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the family the file records (``hv_tune.export.family.FAMILY_KEY``), None without a record
    family: str | None = None


def check_finite(path: Path, tensors: Mapping[str, torch.Tensor], parsed: Mapping[str, ParsedKey]) -> None:
    """Refuse a file with NaN or inf values, naming the layers (a diverged training run).

    Raises:
        HvTuneError: naming the file and up to 10 layers.
    """
    bad = sorted({parsed[k].module if k in parsed else k for k, t in tensors.items()
                  if t.is_floating_point() and not torch.isfinite(t).all()})
    if bad:
        shown = ", ".join(bad[:10]) + (f" ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise HvTuneError(f"{path}: NaN or inf values in {len(bad)} layer(s): {shown}; the LoRA is broken "
                          "(did its training diverge?) and is not used")


def part_rows(spec_parts: tuple[Part, ...], shapes: Shapes, source: Path, original: str) -> list[int]:
    rows = []
    for p in spec_parts:
        if p.module not in shapes:
            raise HvTuneError(f"{source}: {original!r} contains {p.module!r}, which is not a linear layer of the model")
        rows.append(shapes[p.module][0] // p.chunks)
    return rows


def resolve_original(
    spec: ModelSpec, source: Path, original: str, m: LoraModule, shapes: Shapes, ranks: list[int] | None
) -> dict[str, LoraModule]:
    """Split a fused original-layout module into diffusers modules."""
    parts = spec.keys.original_parts(original)
    rows = part_rows(parts, shapes, source, original)
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


def split_delta(spec: ModelSpec, source: Path, original: str, delta: torch.Tensor, kind: str,
                 shapes: Shapes) -> dict[str, torch.Tensor]:
    """A fused layer's ``.diff`` [rows, in] or ``.diff_b`` [rows] as deltas of diffusers parameters."""
    parts = spec.keys.original_parts(original)
    suffix = "weight" if kind == "diff" else "bias"
    if len(parts) == 1 and parts[0].chunks == 1:  # a 1:1 tensor (also norms): checked against the base when merged
        return {f"{parts[0].module}.{suffix}": delta}
    rows = part_rows(parts, shapes, source, original)
    in_f = shapes[parts[0].module][1]
    want = (sum(rows), in_f) if kind == "diff" else (sum(rows),)
    if tuple(delta.shape) != want:
        raise HvTuneError(f"{source}: {original}.{kind} has shape {tuple(delta.shape)}, the layer needs {want}")
    chunks: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for part, piece in zip(parts, delta.split(rows)):
        chunks[part.module].append((part.chunk, piece))
    return {f"{module}.{suffix}": torch.cat([t for _, t in sorted(c, key=lambda x: x[0])])
            for module, c in chunks.items()}


def fuse_original(
    spec: ModelSpec, modules: Mapping[str, LoraModule], shapes: Shapes, kohya: bool = False
) -> dict[str, tuple[LoraModule, list[int] | None]]:
    """Group diffusers modules into original (``kohya``: kohya-layout) modules and fuse each group."""
    name_of = spec.keys.kohya_module if kohya else spec.keys.original_module
    originals: dict[str, None] = {}
    for module in modules:
        original = name_of(module)
        if original is None:
            raise HvTuneError(f"layer {module!r} has no name in the {'kohya' if kohya else 'original'} layout")
        originals.setdefault(original, None)
    fused = {}
    for original in originals:
        parts = spec.keys.original_parts(original)
        rows = part_rows(parts, shapes, Path("<lora>"), original)
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


def most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


def peft_metadata(lora_config: Any) -> str:
    """A PEFT ``LoraConfig`` as the JSON of diffusers' ``lora_adapter_metadata`` (sorted: same bytes every run)."""
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in lora_config.to_dict().items()}
    return json.dumps(config, sort_keys=True, default=str)


def module_name(spec: ModelSpec, original: str, names: str) -> str:
    """An original module's name in a layout's naming scheme (``Format.names``)."""
    if names == "flat":
        return original.replace(".", "_")
    if names == "internal":
        return spec.keys.comfy_name(original)
    return spec.keys.comfy_name(original, "lora")  # Tencent's names, embedders as ComfyUI's key map reads them


def fuse_diffs(spec: ModelSpec, diffs: Mapping[str, torch.Tensor], shapes: Shapes) -> dict[tuple[str, str], torch.Tensor]:
    """Deltas of diffusers parameters as deltas of fused original ones: (original, kind) -> tensor.

    A part without a delta of its own gets zero rows.
    """
    fused: dict[tuple[str, str], torch.Tensor] = {}
    for name in diffs:
        module, _, suffix = name.rpartition(".")
        original = spec.keys.original_module(module)
        kind = "diff" if suffix == "weight" else "diff_b"
        if original is None or (original, kind) in fused:
            continue
        parts = spec.keys.original_parts(original)
        if len(parts) == 1 and parts[0].chunks == 1:  # 1:1 (also norms): the delta as it is
            fused[(original, kind)] = diffs[name]
            continue
        pieces = []
        for part in parts:
            out_f, in_f = shapes[part.module]
            rows = out_f // part.chunks
            full = diffs.get(f"{part.module}.{suffix}")
            ref = next(iter(diffs.values()))
            if full is None:
                full = ref.new_zeros((out_f, in_f) if kind == "diff" else (out_f,))
            pieces.append(full[part.chunk * rows : (part.chunk + 1) * rows])
        fused[(original, kind)] = torch.cat(pieces)
    return fused
