"""Writing DoRA, LoKr and LoHa modules in every layout (docs/lora-formats.md, "Adapter types").

- ``diffusers``: PEFT's state dict names under ``transformer.`` and the PEFT config
  (``LoKrConfig`` / ``LoHaConfig`` / ``LoraConfig(use_dora=True)``) as ``lora_adapter_metadata``;
- ``comfyui``, ``comfyui-internal``, ``kohya``: LyCORIS key names (what ComfyUI's
  ``comfy/weight_adapter`` and musubi-tuner's ``networks/lokr.py`` / ``loha.py`` read) under each
  layout's module names, with ``.alpha`` written so that LyCORIS's scale equals ours.

What a fused original layer (``img_attn_qkv``: q, k, v in one weight) cannot hold exactly is
written as its full weight delta (``.diff``): a Kronecker product does not split into row
blocks, and a DoRA layer is always written as ``.diff`` outside the diffusers layout (ComfyUI's
``weight_decompose`` does not compute PEFT's norm), which needs the base weights. LoHa fuses
exactly (``adapters.fuse_loha``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.adapter_io import rows_of
from hv_tune.export.adapters import (
    Adapter,
    DoraModule,
    LohaModule,
    LokrModule,
    adapter_delta,
    fuse_loha,
    type_name,
)
from hv_tune.export.alpha import DIFFUSERS_METADATA_KEY
from hv_tune.export.formats import FORMATS, Layout
from hv_tune.export.lora_math import LoraModule, fold_scale
from hv_tune.export.lora_parts import fuse_diffs, fuse_original, module_name, peft_metadata
from hv_tune.io import atomic_save_safetensors
from hv_tune.models.base import ModelSpec

#: the base weight of a diffusers module (``<module>``), for DoRA deltas (``merge.base_weights_of``)
BaseWeights = Callable[[str], torch.Tensor]


def _delta(m: Adapter, module: str, base: BaseWeights | None, layout: Layout) -> torch.Tensor:
    if isinstance(m, DoraModule):
        if base is None:
            raise HvTuneError(f"DoRA layer {module!r}: the {layout} layout gets DoRA as full weight deltas, which "
                              "need the base weights: pass --model DIR (the model folder the DoRA was trained on)")
        return adapter_delta(m, base(module))
    return adapter_delta(m)


def stored_dtype(m: Adapter) -> torch.dtype:
    """The dtype a module's tensors are stored in."""
    if isinstance(m, LoraModule | DoraModule):
        return (m.lora if isinstance(m, DoraModule) else m).down.dtype
    return next(iter(m.tensors().values())).dtype


def lycoris_keys(m: LokrModule | LohaModule, kohya: bool) -> dict[str, torch.Tensor]:
    """LyCORIS tensors of one module (suffix -> tensor) whose LyCORIS scale equals ``m.scale``.

    LoKr with both factors full (LyCORIS ignores alpha there) and musubi-tuner's LoKr (``kohya``:
    it reads a full ``lokr_w1`` only) get the scale folded into ``lokr_w1``.
    """
    if isinstance(m, LohaModule):
        return {**m.tensors(), "alpha": torch.tensor(m.scale * m.rank, dtype=torch.float32)}
    out = m.tensors()
    if kohya and m.w1 is None:
        out.pop("lokr_w1_a"), out.pop("lokr_w1_b")
        out["lokr_w1"] = m.factor(1).to(m.w1_a.dtype)
    if m.w2 is not None and "lokr_w1" in out:
        out["lokr_w1"] = (m.factor(1) * m.scale).to(out["lokr_w1"].dtype)  # both full: LyCORIS's scale is 1
    else:
        rank = m.w2_a.shape[1] if m.w2_a is not None else m.w1_a.shape[1]
        out["alpha"] = torch.tensor(m.scale * rank, dtype=torch.float32)
    return out


def _fused_delta(spec: ModelSpec, original: str, members: Mapping[str, Adapter], shapes, base, layout) -> torch.Tensor:
    idx = rows_of(spec, original, shapes)
    in_f = shapes[next(iter(idx))][1]
    dtype = stored_dtype(next(iter(members.values())))
    out = torch.zeros(sum(len(i) for i in idx.values()), in_f)
    for module, m in members.items():
        out[idx[module]] = _delta(m, module, base, layout)
    return out.to(dtype)


def write_lycoris(spec: ModelSpec, modules: Mapping[str, Adapter], layout: Layout, shapes,
                  base: BaseWeights | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``modules`` (any types but plain LoRA is written by ``lora_io``) in a LyCORIS layout,
    and notes (layers written as ``.diff``)."""
    fmt = FORMATS[layout]
    kohya = layout == Layout.KOHYA
    name_of = spec.keys.kohya_module if kohya else spec.keys.original_module
    groups: dict[str, dict[str, Adapter]] = {}
    for module, m in modules.items():
        original = name_of(module)
        if original is None:
            raise HvTuneError(f"layer {module!r} has no name in the {layout} layout")
        groups.setdefault(original, {})[module] = m
    state: dict[str, torch.Tensor] = {}
    as_diff: list[str] = []
    prefix = spec.keys.lora_prefixes[fmt.prefix]
    for original, members in sorted(groups.items()):
        name = prefix + module_name(spec, original, fmt.names)
        parts = spec.keys.original_parts(original)
        kinds = {type(m) for m in members.values()}
        whole = len(parts) == 1 and parts[0].chunks == 1
        if kinds == {LoraModule}:
            m, _ = fuse_original(spec, members, shapes, kohya)[original]
            m = m if fmt.alpha_key else fold_scale(m)
            state.update({f"{name}.{fmt.down}": m.down, f"{name}.{fmt.up}": m.up})
            if fmt.alpha_key:
                state[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
        elif whole and kinds <= {LokrModule, LohaModule}:
            state.update({f"{name}.{k}": v for k, v in lycoris_keys(next(iter(members.values())), kohya).items()})
        elif kinds == {LohaModule}:
            idx = rows_of(spec, original, shapes)
            rows = [len(idx[p.module]) // p.chunks for p in parts]
            pieces = [_loha_chunk(members.get(p.module), p.chunk, p.chunks) for p in parts]
            fused = fuse_loha(pieces, rows)
            state.update({f"{name}.{k}": v for k, v in lycoris_keys(fused, kohya).items()})
        else:
            state[f"{name}.diff"] = _fused_delta(spec, original, members, shapes, base, layout)
            as_diff.append(f"{original} ({', '.join(sorted({type_name(m) for m in members.values()}))})")
    notes = []
    if as_diff:
        notes.append(f"{len(as_diff)} layer(s) written as full weight deltas (.diff: exact, not compact), as the "
                     f"{layout} layout cannot hold them as factors (fused q/k/v, DoRA): {', '.join(as_diff[:6])}"
                     + (" ..." if len(as_diff) > 6 else ""))
    return state, notes


def _loha_chunk(m: LohaModule | None, chunk: int, chunks: int) -> LohaModule | None:
    if m is None or chunks == 1:
        return m
    n = m.w1_a.shape[0] // chunks
    rows = slice(chunk * n, (chunk + 1) * n)
    return LohaModule(m.w1_a[rows], m.w1_b, m.w2_a[rows], m.w2_b, m.scale)


def peft_config_of(modules: Mapping[str, Adapter]) -> Any:
    """The PEFT config that rebuilds ``modules`` (one type) with the same factor shapes and scales.

    Raises:
        HvTuneError: for modules of several types (one PEFT file holds one type).
    """
    from collections import Counter

    from peft import LoHaConfig, LoKrConfig, LoraConfig

    kinds = {type_name(m) for m in modules.values()}
    if len(kinds) != 1:
        raise HvTuneError(f"one PEFT file holds one adapter type; these layers have {sorted(kinds)}")
    names = sorted(modules)
    ranks = {n: _peft_rank(modules[n]) for n in names}
    alphas = {n: _peft_scale(modules[n]) * ranks[n] for n in names}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    common = dict(r=r, target_modules=names, rank_pattern={f"^{n}": ranks[n] for n in names if ranks[n] != r})
    patterns = {f"^{n}": alphas[n] for n in names if alphas[n] != alpha}
    kind = kinds.pop()
    if kind == "dora":
        return LoraConfig(lora_alpha=alpha, alpha_pattern=patterns, use_dora=True, **common)
    if kind == "loha":
        return LoHaConfig(alpha=alpha, alpha_pattern=patterns, **common)
    if kind == "lokr":
        return LoKrConfig(alpha=alpha, alpha_pattern=patterns, decompose_both=any(m.w1 is None for m in modules.values()),
                          decompose_factor=_lokr_factor(modules), **common)
    return LoraConfig(lora_alpha=alpha, alpha_pattern=patterns, **common)


def _peft_rank(m: Adapter) -> int:
    if isinstance(m, LokrModule):
        if m.rank is not None:
            return m.rank
        f2 = m.factor(2)
        return max(f2.shape)  # PEFT keeps w2 full when r >= max(w2's sides) / 2
    return m.rank


def _peft_scale(m: Adapter) -> float:
    return m.lora.scale if isinstance(m, DoraModule) else m.scale


def _lokr_factor(modules: Mapping[str, Adapter]) -> int:
    """PEFT's ``decompose_factor`` giving every module's ``w1``/``w2`` shapes (-1: PEFT's balanced default)."""
    from peft.tuners.lokr.layer import factorization

    shapes = [(m.factor(1).shape, m.shape) for m in modules.values()]
    candidates = [-1, *sorted({s for (w1, _) in shapes for s in w1})]
    for f in candidates:
        if all(factorization(o, f)[0] == w1[0] and factorization(i, f)[0] == w1[1] for w1, (o, i) in shapes):
            return f
    return -1


def peft_state(modules: Mapping[str, Adapter]) -> dict[str, torch.Tensor]:
    """PEFT's state dict names (``get_peft_model_state_dict``) of the modules: ``<module>.lokr_w1`` ..."""
    state = {}
    for n, m in sorted(modules.items()):
        if isinstance(m, LoraModule | DoraModule):
            lora = m.lora if isinstance(m, DoraModule) else m
            state[f"{n}.lora_A.weight"], state[f"{n}.lora_B.weight"] = lora.down, lora.up
            if isinstance(m, DoraModule):
                state[f"{n}.lora_magnitude_vector"] = m.magnitude
        else:
            state.update({f"{n}.{k}": v for k, v in m.tensors().items()})
    return {k: v.clone().contiguous() for k, v in state.items()}


def write_peft(spec: ModelSpec, modules: Mapping[str, Adapter], out: Path, family: str | None) -> Path:
    """The diffusers/PEFT layout of non-LoRA modules: ``transformer.`` + PEFT names, the config as
    ``lora_adapter_metadata``, the family recorded."""
    from hv_tune.export.family import FAMILY_KEY

    prefix = spec.keys.lora_prefixes["diffusers"]
    state = {prefix + k: v for k, v in peft_state(modules).items()}
    meta = {"format": "pt", DIFFUSERS_METADATA_KEY: peft_metadata(peft_config_of(modules)),
            FAMILY_KEY: family or spec.name}
    return atomic_save_safetensors(out, state, meta)

def write_adapters(spec: ModelSpec, modules: Mapping[str, Adapter], out: Path, fmt: Any, shapes,
                   diffs: Mapping[str, torch.Tensor], family: str | None, base: BaseWeights | None,
                   notes: list[str] | None) -> Path:
    """``lora_io.write_lora`` for modules of any type (some DoRA, LoKr or LoHa): one file in ``fmt``.

    Raises:
        HvTuneError: for several types in a PEFT file, or DoRA outside it without ``base``.
    """
    from hv_tune.export.family import FAMILY_KEY

    if fmt.layout == Layout.DIFFUSERS:
        return write_peft(spec, modules, out, family)
    state, extra = write_lycoris(spec, modules, fmt.layout, shapes, base)
    if notes is not None:
        notes += extra
    prefix = spec.keys.lora_prefixes[fmt.prefix]
    for (original, kind), delta in sorted(fuse_diffs(spec, diffs, shapes).items()):
        key = f"{prefix}{module_name(spec, original, fmt.names)}.{kind}"
        state[key] = (state[key].float() + delta.float()).to(delta.dtype) if key in state else delta.contiguous()
    kinds = sorted({type_name(m) for m in modules.values()})
    meta = {"format": "pt", FAMILY_KEY: family or spec.name, "hv_tune.adapter_types": ",".join(kinds)}
    return atomic_save_safetensors(out, {k: v.contiguous() for k, v in state.items()}, meta)
