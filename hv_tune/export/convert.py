"""``convert``: a LoRA file from any supported format to any other, checked if asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.formats import unknown_keys_message
from hv_tune.export.lora_io import read_lora, write_lora
from hv_tune.export.lora_math import LoraModule
from hv_tune.models.base import ModelSpec

PROBES = 8
CHECK_RTOL = 1e-5
#: file names of the LoRA in other formats, written next to pytorch_lora_weights.safetensors
EXTRA_FILES = {"comfyui": "lora_comfyui.safetensors", "kohya": "lora_kohya.safetensors"}


@dataclass
class ConvertResult:
    out: Path
    source_format: str
    layers: int
    notes: list[str] = field(default_factory=list)
    check: list[str] = field(default_factory=list)


def _apply(m: LoraModule | None, x: torch.Tensor, out_f: int) -> torch.Tensor:
    """``delta W @ x`` without forming delta W: [out, r] @ ([r, in] @ [in, P])."""
    if m is None:
        return x.new_zeros(out_f, x.shape[1])
    return (m.up.double() @ (m.down.double() @ x)) * m.scale


def check_same_updates(
    before: Mapping[str, LoraModule], after: Mapping[str, LoraModule], shapes: Mapping[str, tuple[int, int]]
) -> list[str]:
    """Compare every layer's update on random probe vectors; one line per layer.

    Raises:
        HvTuneError: if a layer's update differs by more than ``CHECK_RTOL`` (relative).
    """
    gen = torch.Generator().manual_seed(0)
    lines = []
    for module in sorted(set(before) | set(after)):
        out_f, in_f = shapes[module]
        x = torch.randn(in_f, PROBES, generator=gen, dtype=torch.float64)
        a, b = _apply(before.get(module), x, out_f), _apply(after.get(module), x, out_f)
        err = ((a - b).norm() / a.norm().clamp_min(1e-30)).item()
        ranks = [m.rank if m is not None else 0 for m in (before.get(module), after.get(module))]
        lines.append(f"{module}: rank {ranks[0]} -> {ranks[1]}, relative difference {err:.1e}")
        if err > CHECK_RTOL:
            raise HvTuneError(f"check failed: {lines[-1]}")
    return lines


def convert_lora(
    spec: ModelSpec,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    shapes: Mapping[str, tuple[int, int]],
    check: bool = False,
    skip_unknown: bool = False,
) -> ConvertResult:
    """Read ``src`` (format detected from its keys), write ``dst`` in format ``to``.

    Args:
        shapes: the model's linear layer shapes (``spec.linear_shapes``).
        check: re-read ``dst`` and compare every layer's update with ``src``'s.
        skip_unknown: leave out keys that name no layer (they are listed in the notes)
            instead of refusing the file.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise HvTuneError(f"convert: input and output are the same file ({src})")
    lora = read_lora(spec, src, shapes)
    result = ConvertResult(Path(dst), lora.format, len(lora.modules), list(lora.notes))
    if lora.unknown:
        message = unknown_keys_message(str(src), lora.unknown)
        if not skip_unknown:
            raise HvTuneError(message + "\nconvert with --skip-unknown to leave them out")
        result.notes.append(message + "\n(left out: --skip-unknown)")
    write_lora(spec, lora.modules, dst, to, shapes)
    if check:
        result.check = check_same_updates(lora.modules, read_lora(spec, dst, shapes).modules, shapes)
    return result


def adapter_modules(adapter: Mapping[str, torch.Tensor], rank: int, alpha: float) -> dict[str, LoraModule]:
    """A PEFT adapter state dict (``<module>.lora_A.weight``, ``.lora_B.weight``) as LoRA modules."""
    modules = {}
    for key, down in adapter.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            modules[module] = LoraModule(down, adapter[f"{module}.lora_B.weight"], float(alpha))
            if modules[module].rank != rank:
                raise HvTuneError(f"adapter layer {module!r} has rank {modules[module].rank}, expected {rank}")
    return modules


def save_extra_formats(
    spec: ModelSpec, out_dir: Path, adapter: Mapping[str, torch.Tensor], rank: int, alpha: float,
    formats: list[str], model_path: str,
) -> list[Path]:
    """Write a trained adapter in each of ``formats`` other than diffusers (``EXTRA_FILES``)."""
    extra = [f for f in formats if f != "diffusers"]
    if not extra:
        return []
    modules = adapter_modules(adapter, rank, alpha)
    shapes = spec.linear_shapes(model_path)
    return [write_lora(spec, modules, Path(out_dir) / EXTRA_FILES[f], f, shapes) for f in extra]
