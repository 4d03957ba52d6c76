"""``convert``: a LoRA file from any supported format to any other, checked if asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hv_tune.arguments import same_file
from hv_tune.errors import HvTuneError
from hv_tune.export.formats import Layout, to_layout, unknown_keys_message, unknown_keys_policy
from hv_tune.export.lora_io import comfyui_skipped_kohya_layers, read_lora, undeliverable_diffs, write_lora
from hv_tune.export.lora_math import LoraModule
from hv_tune.models.base import ModelSpec

PROBES = 8
CHECK_RTOL = 1e-5


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
        if not err <= CHECK_RTOL:  # NaN compares false both ways: a NaN update fails the check
            raise HvTuneError(f"check failed: {lines[-1]}")
    return lines


def check_same_diffs(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> list[str]:
    """Compare ``.diff`` / ``.diff_b`` deltas exactly; one line per parameter.

    Raises:
        HvTuneError: if a delta is missing or differs.
    """
    lines = []
    for name in sorted(set(before) | set(after)):
        same = name in before and name in after and torch.equal(before[name].float(), after[name].float())
        lines.append(f"{name}: delta {'identical' if same else 'DIFFERS'}")
        if not same:
            raise HvTuneError(f"check failed: {lines[-1]}")
    return lines


def convert_lora(
    spec: ModelSpec,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str | Layout,
    shapes: Mapping[str, tuple[int, int]],
    check: bool = False,
    skip_unknown: bool = False,
) -> ConvertResult:
    """Read ``src`` (layout detected from its keys), write ``dst`` in layout ``to``.

    Args:
        shapes: the model's linear layer shapes (``spec.linear_shapes``).
        check: re-read ``dst`` and compare every layer's update with ``src``'s.
        skip_unknown: leave out keys that name no layer, and deltas the target layout cannot
            carry (both are listed in the notes) instead of refusing the file.
    """
    to = to_layout(to)
    if same_file(src, dst):  # also through a symlink or hard link: the input would be replaced
        raise HvTuneError(f"convert: input and output are the same file ({src})")
    lora = read_lora(spec, src, shapes)
    result = ConvertResult(Path(dst), str(lora.format), len(lora.modules), list(lora.notes))
    fix = "convert with --skip-unknown to leave them out"
    result.notes += unknown_keys_policy(str(src), lora.unknown, skip_unknown, fix)
    dropped = undeliverable_diffs(lora, to)
    result.notes += unknown_keys_policy(
        str(src), dropped, skip_unknown, f"{fix}, or convert --to comfyui (ComfyUI applies them); merge applies them too",
        what=f"are weight/bias deltas (.diff/.diff_b) the {to} format cannot carry",
    )
    diffs = {} if dropped else lora.diffs
    write_lora(spec, lora.modules, dst, to, shapes, diffs, family=lora.family)  # a compatible family stays as read
    if to == Layout.KOHYA:
        result.notes += kohya_comfyui_notes(spec, lora.modules)
    if check:
        again = read_lora(spec, dst, shapes)
        result.check = check_same_updates(lora.modules, again.modules, shapes) + check_same_diffs(diffs, again.diffs)
    return result


def kohya_comfyui_notes(spec: ModelSpec, modules: Mapping[str, LoraModule], comfy_file: str = "") -> list[str]:
    """A warning when a kohya file holds layers ComfyUI skips, pointing at the ComfyUI layout."""
    skipped = comfyui_skipped_kohya_layers(spec, modules)
    if not skipped:
        return []
    where = comfy_file or "a file written with `convert --to comfyui`"
    return [unknown_keys_message("warning: in ComfyUI this kohya file", skipped, limit=5,
                                 what="are not loaded (ComfyUI reads kohya names as its own module names: "
                                      "fused img_attn_qkv, img_mlp_0/_2, img_mod_lin)")
            + f"\nuse {where} in ComfyUI instead; musubi-tuner loads the kohya file completely"]


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
