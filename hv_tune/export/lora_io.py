"""Read any supported LoRA file into one canonical form, and write that form in any format.

The canonical form maps diffusers module names to ``LoraModule`` (down, up, alpha), in the
dtype of the file. Reading resolves fused original layers into their diffusers parts;
writing fuses them back (``lora_math``). Key names come from the model spec.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.adapter_io import has_adapter_keys, read_adapter_file, refuse_unsupported
from hv_tune.export.alpha import DIFFUSERS_METADATA_KEY, resolve_alphas
from hv_tune.export.family import FAMILY_KEY, recorded_family, refuse_by_keys, refuse_by_shapes
from hv_tune.export.formats import FORMATS, Format, KeyReport, Layout, ParsedKey, classify_keys, to_layout
from hv_tune.export.lora_math import LoraModule, fold_scale
from hv_tune.export.lora_parts import LoraFile, Shapes, check_finite, peft_metadata
from hv_tune.export.lora_parts import fuse_diffs as _fuse_diffs
from hv_tune.export.lora_parts import fuse_original as _fuse_original
from hv_tune.export.lora_parts import module_name as _module_name
from hv_tune.export.lora_parts import most_common as _most_common
from hv_tune.export.lora_parts import resolve_original as _resolve_original
from hv_tune.export.lora_parts import split_delta as _split_delta
from hv_tune.io import atomic_save_safetensors, move_into_place, sort_safetensors_metadata
from hv_tune.models.base import ModelSpec

#: safetensors metadata key: per fused original module, the rank of each part (block-diagonal layout)
FUSED_RANKS_KEY = "hv_tune.fused_ranks"


# ----------------------------------------------------------------------------- reading


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a LoRA file: safetensors, or ``torch.load(weights_only=True)``.

    Raises:
        HvTuneError: naming the file when it is missing, unreadable or not a flat tensor dict.
    """
    path = adapter_file(path)
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


#: the adapter file of a folder: PEFT's and diffusion-pipe's, diffusers', an hv-tune checkpoint's
FOLDER_FILES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter.safetensors")


def adapter_file(path: str | os.PathLike) -> Path:
    """``path``, or for a folder (a PEFT / diffusion-pipe ``adapter_config.json`` folder) its adapter file.

    Raises:
        HvTuneError: for a folder without one of ``FOLDER_FILES``.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = [path / n for n in FOLDER_FILES if (path / n).is_file()]
    if not found:
        raise HvTuneError(f"{path}: a folder without an adapter file (looked for {', '.join(FOLDER_FILES)})")
    return found[0]


def _group(tensors: Mapping[str, torch.Tensor], parsed: Mapping[str, ParsedKey], source: Path) -> dict[str, dict]:
    groups: dict[str, dict] = defaultdict(dict)
    for key, p in parsed.items():
        if p.kind in groups[p.module]:
            raise HvTuneError(f"{source}: two keys for {p.kind} of {p.module!r} (one is {key!r})")
        groups[p.module][p.kind] = tensors[key] if p.kind != "alpha" else float(tensors[key].float().item())
    for module, g in groups.items():
        if ("down" in g) != ("up" in g) or not ({"down", "diff", "diff_b"} & set(g)):
            missing = "up (lora_B / lora_up)" if "down" in g else "down (lora_A / lora_down)"
            raise HvTuneError(f"{source}: module {module!r} has no {missing} weight")
        if "down" in g and (g["down"].dim() != 2 or g["up"].dim() != 2 or g["down"].shape[0] != g["up"].shape[1]):
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


def read_lora(spec: ModelSpec, path: str | os.PathLike, shapes: Shapes) -> LoraFile:
    """Read a LoRA in any supported layout as diffusers modules, checked against ``shapes``.

    This is the one reader (``convert``, ``merge``, ``sample``): it refuses NaN/inf values and
    files for another registered model family (``hv_tune.export.family``: the file's record, else
    its keys and shapes), resolves alpha (``hv_tune.export.alpha``) and reads ``.diff`` / ``.diff_b`` deltas.

    Args:
        shapes: ``(out, in)`` of the model's linear layers (``spec.linear_shapes`` or a checkpoint's).

    Raises:
        HvTuneError: naming the file and key for anything that does not fit the model.
    """
    path = adapter_file(path)
    tensors, meta = load_tensors(path)
    notes: list[str] = []
    family = recorded_family(spec, path, meta, notes)
    keys = list(tensors)
    refuse_unsupported(keys, str(path))
    if has_adapter_keys(keys):  # DoRA, LoKr, LoHa
        lora = read_adapter_file(spec, path, tensors, meta, shapes)
        lora.family, lora.notes = family, notes + lora.notes
        return lora
    try:
        report = classify_keys(spec, keys, str(path))
    except HvTuneError:
        if family is None:
            refuse_by_keys(spec, path, keys, set())
        raise
    if family is None and report.unknown:
        refuse_by_keys(spec, path, keys, set(report.parsed))
    try:
        lora = _read(spec, path, tensors, meta, report, shapes)
    except HvTuneError as e:
        if family is None:
            refuse_by_shapes(spec, path, keys, lambda other, full: _read(
                other, path, tensors, meta, classify_keys(other, keys, str(path)), full), e)
        raise
    lora.family, lora.notes = family, notes + lora.notes
    return lora


def _read(spec: ModelSpec, path: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str], report: KeyReport,
          shapes: Shapes) -> LoraFile:
    """``read_lora`` once the keys are sorted: values, alpha, and the modules resolved against ``shapes``."""
    check_finite(path, tensors, report.parsed)
    groups = _group(tensors, report.parsed, path)
    lora = LoraFile(path, report.layout, {}, report.unknown)
    ranks = {module: g["down"].shape[0] for module, g in groups.items() if "down" in g}
    own = {module: g["alpha"] for module, g in groups.items() if "alpha" in g}
    alphas = resolve_alphas(path, meta, ranks, own, lora.notes)
    fused_ranks = json.loads(meta.get(FUSED_RANKS_KEY, "{}"))
    for module, g in groups.items():
        m = LoraModule(g["down"], g["up"], alphas[module]) if "down" in g else None
        if report.layout == Layout.DIFFUSERS:
            if m is not None:
                _check_shape(path, module, m, shapes, "layer")
                lora.modules[module] = m
            for kind, suffix in (("diff", "weight"), ("diff_b", "bias")):
                if kind in g:
                    lora.diffs[f"{module}.{suffix}"] = g[kind]
            continue
        if m is not None:
            lora.modules.update(_resolve_original(spec, path, module, m, shapes, fused_ranks.get(module)))
        for kind in ("diff", "diff_b"):
            if kind in g:
                lora.diffs.update(_split_delta(spec, path, module, g[kind], kind, shapes))
    return lora


# ----------------------------------------------------------------------------- writing


def adapter_metadata(spec: ModelSpec, lora_config: Any) -> dict[str, str]:
    """Metadata of a raw PEFT state dict file (a checkpoint's ``adapter.safetensors``): the family and the
    PEFT config, so that the reader finds alpha (``hv_tune.export.alpha``) and refuses other families."""
    return {"format": "pt", FAMILY_KEY: spec.name, DIFFUSERS_METADATA_KEY: peft_metadata(lora_config)}


def record_family(path: Path, family: str) -> Path:
    """Add ``FAMILY_KEY`` to a safetensors file's metadata (rewritten in place, metadata sorted)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    tmp = path.with_name(path.name + ".family")
    save_file(tensors, str(tmp), metadata={**meta, FAMILY_KEY: family})
    sort_safetensors_metadata(tmp)
    os.replace(tmp, path)
    return path


def save_diffusers(spec: ModelSpec, out: Path, state: Mapping[str, torch.Tensor], lora_config: Any,
                   family: str | None = None) -> Path:
    """``spec.save_lora`` (the family's diffusers file) to ``out`` atomically, with ``family`` recorded
    (``spec.name`` when None)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-lora-") as tmp:
        written = record_family(spec.save_lora(Path(tmp), dict(state), lora_config), family or spec.name)
        move_into_place(written, out)
    return out


def _write_diffusers(spec: ModelSpec, modules: Mapping[str, LoraModule], out: Path, family: str | None) -> Path:
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
    return save_diffusers(spec, out, state, config, family)


def _write_original(spec: ModelSpec, modules: Mapping[str, LoraModule], out: Path, fmt: Format, shapes: Shapes,
                    diffs: Mapping[str, torch.Tensor], family: str | None) -> Path:
    prefix = spec.keys.lora_prefixes[fmt.prefix]
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, list[int]] = {}
    written: list[LoraModule] = []
    for original, (m, part_ranks) in sorted(_fuse_original(spec, modules, shapes, fmt.layout == Layout.KOHYA).items()):
        if part_ranks is not None:
            ranks[original] = part_ranks
        name = prefix + _module_name(spec, original, fmt.names)
        if not fmt.alpha_key:  # no alpha in this layout: readers (diffusers, ComfyUI) use scale 1
            m = fold_scale(m)
        state[f"{name}.{fmt.down}"] = m.down
        state[f"{name}.{fmt.up}"] = m.up
        if fmt.alpha_key:
            state[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
        written.append(m)
    for (original, kind), delta in sorted(_fuse_diffs(spec, diffs, shapes).items()):
        state[f"{prefix}{_module_name(spec, original, fmt.names)}.{kind}"] = delta.contiguous()
    metadata = {"format": "pt", FUSED_RANKS_KEY: json.dumps(ranks, sort_keys=True), FAMILY_KEY: family or spec.name}
    if fmt.layout == Layout.KOHYA and written:
        # the ranks of the written (fused) layers: 3r / 4r for q,k,v (+mlp) fused from rank-r parts
        metadata["ss_network_module"] = "networks.lora"
        metadata["ss_network_dim"] = str(_most_common([m.rank for m in written]))
        metadata["ss_network_alpha"] = str(_most_common([m.alpha for m in written]))
        metadata["hv_tune.ranks"] = json.dumps(sorted({m.rank for m in written}))
    return atomic_save_safetensors(out, state, metadata)


def write_lora(spec: ModelSpec, modules: Mapping[str, LoraModule], out: str | os.PathLike, fmt: str | Layout,
               shapes: Shapes, diffs: Mapping[str, torch.Tensor] | None = None, family: str | None = None,
               base: Any = None, notes: list[str] | None = None) -> Path:
    """Write diffusers-named LoRA modules (and deltas) as one file in layout ``fmt`` (atomically).

    Every layout records the model family in its metadata (``FAMILY_KEY``).

    Args:
        shapes: the model's linear layer shapes; fusing needs the sizes of parts without a LoRA.
        diffs: ``.diff`` / ``.diff_b`` deltas by diffusers parameter name; only layouts whose
            ``Format.diffs`` is true can carry them (check ``undeliverable_diffs`` first).
        family: the family to record (``spec.name`` when None; a compatible one read from the source).
        base: the base weights by module (``merge.base_weights_of``): DoRA outside the
            diffusers layout is written as weight deltas, which need them.
        notes: where to say which layers were written as deltas (DoRA, LoKr, LoHa: ``adapter_write``).

    Raises:
        HvTuneError: for an unknown layout, nothing to write, or deltas the layout cannot carry.
    """
    spec_fmt = FORMATS[to_layout(fmt)]
    diffs = dict(diffs or {})
    if not modules and not diffs:
        raise HvTuneError("the LoRA has no layers to write")
    if diffs and not spec_fmt.diffs:
        raise HvTuneError(f"the {spec_fmt.layout} format cannot carry weight/bias deltas ({sorted(diffs)[:5]})")
    out = Path(out)
    if not all(isinstance(m, LoraModule) for m in modules.values()):  # DoRA, LoKr, LoHa
        from hv_tune.export.adapter_write import write_adapters

        return write_adapters(spec, modules, out, spec_fmt, shapes, diffs, family, base, notes)
    if spec_fmt.layout == Layout.DIFFUSERS:
        return _write_diffusers(spec, modules, out, family)
    return _write_original(spec, modules, out, spec_fmt, shapes, diffs, family)


def undeliverable_diffs(lora: LoraFile, fmt: str | Layout) -> list[str]:
    """Names of the deltas (``.diff`` / ``.diff_b``) a layout cannot carry."""
    return [] if FORMATS[to_layout(fmt)].diffs else sorted(lora.diffs)


def comfyui_skipped_kohya_layers(spec: ModelSpec, modules: Mapping[str, LoraModule]) -> list[str]:
    """kohya names of the layers ComfyUI does not load from a kohya file.

    ComfyUI maps ``lora_unet_`` + its *internal* module name with dots as underscores
    (``img_mlp_0``, ``img_mod_lin``, ``modulation_lin``, ``time_in_in_layer``); where the kohya
    name differs (``img_mlp_fc1``, 1.5's separate ``img_attn_q``), it warns "lora key not loaded"
    and skips the layer.
    """
    names = {spec.keys.kohya_module(m) for m in modules} - {None}
    flat = [n.replace(".", "_") for n in sorted(names)]
    return [spec.keys.lora_prefixes["kohya"] + f for f in flat if spec.keys.original_from_comfy(f, "flat") is None]
