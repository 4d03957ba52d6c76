"""``convert``: a LoRA file from any supported format to any other, checked if asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hv_tune.arguments import same_file
from hv_tune.errors import HvTuneError
from hv_tune.export.adapter_write import BaseWeights, stored_dtype
from hv_tune.export.adapters import Adapter, DoraModule, adapter_delta, svd_lora
from hv_tune.export.formats import FORMATS, Layout, to_layout, unknown_keys_message, unknown_keys_policy
from hv_tune.export.lora_io import comfyui_skipped_kohya_layers, read_lora, write_lora
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
    svd_rank: int | None = None,
    base: BaseWeights | None = None,
) -> ConvertResult:
    """Read ``src`` (layout and adapter type detected from its keys), write ``dst`` in layout ``to``.

    Args:
        shapes: the model's linear layer shapes (``spec.linear_shapes``).
        check: re-read ``dst`` and compare every layer's update with ``src``'s.
        skip_unknown: leave out keys that name no layer, and deltas the target layout cannot
            carry (both are listed in the notes) instead of refusing the file.
        svd_rank: write plain LoRA: every DoRA, LoKr and LoHa layer and every weight delta becomes its
            best rank-``svd_rank`` LoRA (``adapters.svd_lora``, an approximation whose error is noted).
        base: the base weights (``merge.base_weights_of``): DoRA written outside the diffusers
            layout, turned into LoRA, or checked needs them.
    """
    to = to_layout(to)
    if same_file(src, dst):  # also through a symlink or hard link: the input would be replaced
        raise HvTuneError(f"convert: input and output are the same file ({src})")
    lora = read_lora(spec, src, shapes)
    result = ConvertResult(Path(dst), str(lora.format), len(lora.modules), list(lora.notes))
    fix = "convert with --skip-unknown to leave them out"
    result.notes += unknown_keys_policy(str(src), lora.unknown, skip_unknown, fix)
    modules, diffs = dict(lora.modules), dict(lora.diffs)
    if svd_rank is not None:
        modules, diffs, lines = to_plain_lora(modules, diffs, svd_rank, base)
        result.notes += lines
        result.layers = len(modules)
    dropped = [] if FORMATS[to].diffs else sorted(diffs)
    result.notes += unknown_keys_policy(
        str(src), dropped, skip_unknown, f"{fix}, or convert --to comfyui (ComfyUI applies them); merge applies them too",
        what=f"are weight/bias deltas (.diff/.diff_b) the {to} format cannot carry",
    )
    diffs = {} if dropped else diffs
    notes: list[str] = []
    write_lora(spec, modules, dst, to, shapes, diffs, family=lora.family, base=base, notes=notes)
    result.notes += notes
    if to == Layout.KOHYA:
        result.notes += kohya_comfyui_notes(spec, modules)
    if check:
        again = read_lora(spec, dst, shapes)
        if all(isinstance(m, LoraModule) for m in [*modules.values(), *again.modules.values()]):
            result.check = check_same_updates(modules, again.modules, shapes) + check_same_diffs(diffs, again.diffs)
        else:
            result.check = check_same_effect((modules, diffs), (again.modules, again.diffs), shapes, base)
    return result


def to_plain_lora(modules: Mapping[str, Adapter], diffs: Mapping[str, torch.Tensor], rank: int,
                  base: BaseWeights | None) -> tuple[dict[str, LoraModule], dict[str, torch.Tensor], list[str]]:
    """Every non-LoRA layer and weight delta as its best rank-``rank`` LoRA (truncated SVD of its delta).

    Plain LoRA layers without a delta are kept as they are (exact); bias deltas stay deltas.

    Returns:
        The modules, the remaining (bias) deltas, and a line stating the approximation and its
        measured error ``||dW - dW_k||_F / ||dW||_F`` (largest, and over all approximated layers).
    """
    weight_diffs = {n.removesuffix(".weight"): d for n, d in diffs.items() if n.endswith(".weight") and d.dim() == 2}
    out: dict[str, LoraModule] = {}
    errors: list[tuple[float, float, str]] = []
    for module in sorted(set(modules) | set(weight_diffs)):
        m = modules.get(module)
        if isinstance(m, LoraModule) and module not in weight_diffs:
            out[module] = m
            continue
        delta = 0
        if m is not None:
            delta = adapter_delta(m, _base_for(m, module, base))
        if module in weight_diffs:
            delta = delta + weight_diffs[module].float()
        lora, err = svd_lora(delta, rank)
        dtype = stored_dtype(m) if m is not None else weight_diffs[module].dtype
        out[module] = LoraModule(lora.down.to(dtype), lora.up.to(dtype), lora.alpha)
        errors.append((err, float(delta.norm()), module))
    rest = {n: d for n, d in diffs.items() if n.removesuffix(".weight") not in weight_diffs}
    lines = []
    if errors:
        worst = max(errors)
        total = sum(n * n for _, n, _ in errors)
        overall = (sum((e * n) ** 2 for e, n, _ in errors) / total) ** 0.5 if total else 0.0
        lines.append(f"to plain LoRA at rank {rank} (truncated SVD: an approximation) for {len(errors)} layer(s): "
                     f"relative error ||dW - dW_{rank}|| / ||dW|| up to {worst[0]:.3e} ({worst[2]}), {overall:.3e} "
                     "over all of them")
    return out, rest, lines


def _base_for(m: Adapter, module: str, base: BaseWeights | None) -> torch.Tensor | None:
    if not isinstance(m, DoraModule):
        return None
    if base is None:
        raise HvTuneError(f"DoRA layer {module!r}: its update depends on the base weights; pass --model DIR "
                          "(the model folder it was trained on)")
    return base(module)


def _effect(m: Adapter | None, delta: torch.Tensor | None, x: torch.Tensor, out_f: int, module: str,
            base: BaseWeights | None) -> torch.Tensor:
    """``dW @ x`` of a layer's module plus its weight delta (float64)."""
    y = _apply(m, x, out_f) if m is None or isinstance(m, LoraModule) else None
    if y is None and isinstance(m, DoraModule) and base is None:  # compare its parameters instead
        y = torch.cat([_apply(m.lora, x, out_f), m.magnitude.double()[:, None].expand(-1, x.shape[1])])
    elif y is None:
        y = adapter_delta(m, _base_for(m, module, base)).double() @ x
    if delta is not None:
        y = y.clone()
        y[:out_f] += delta.double() @ x
    return y


def check_same_effect(before: tuple[Mapping, Mapping], after: tuple[Mapping, Mapping],
                      shapes: Mapping[str, tuple[int, int]], base: BaseWeights | None) -> list[str]:
    """Compare every layer's total update (module plus ``.diff``, any types) on random probe vectors, and
    bias deltas; one line per layer.

    Raises:
        HvTuneError: if a layer differs by more than ``CHECK_RTOL`` (relative).
    """
    gen = torch.Generator().manual_seed(0)
    lines = []
    (mb, db), (ma, da) = before, after
    layers = set(mb) | set(ma) | {n.removesuffix(".weight") for n in [*db, *da] if n.endswith(".weight")}
    for module in sorted(layers):
        out_f, in_f = shapes[module]
        x = torch.randn(in_f, PROBES, generator=gen, dtype=torch.float64)
        a = _effect(mb.get(module), db.get(f"{module}.weight"), x, out_f, module, base)
        b = _effect(ma.get(module), da.get(f"{module}.weight"), x, out_f, module, base)
        err = ((a - b).norm() / a.norm().clamp_min(1e-30)).item() if a.shape == b.shape else float("nan")
        kinds = [type(m).__name__ if m is not None else "delta" for m in (mb.get(module), ma.get(module))]
        lines.append(f"{module}: {kinds[0]} -> {kinds[1]}, relative difference {err:.1e}")
        if not err <= CHECK_RTOL:
            raise HvTuneError(f"check failed: {lines[-1]}")
    for name in sorted(n for n in {*db, *da} if not n.endswith(".weight")):
        same = name in db and name in da and torch.allclose(db[name].float(), da[name].float(), rtol=CHECK_RTOL)
        lines.append(f"{name}: delta {'identical' if same else 'DIFFERS'}")
        if not same:
            raise HvTuneError(f"check failed: {lines[-1]}")
    return lines


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
