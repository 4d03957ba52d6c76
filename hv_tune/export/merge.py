"""Merge LoRAs into a model's transformer, streaming: never two copies of it in memory.

``W' = W + sum_i scale_i * (alpha_i / r_i) * B_i @ A_i``, computed in float32 one tensor at
a time and stored in the base tensor's dtype (or ``dtype``); DoRA, LoKr and LoHa layers add their
full delta (``adapters.adapter_delta``, one extra float32 copy of the layer in memory). Tensors are read one by one
from the base's safetensors shards and written one by one to the output:

- ``diffusers``: a model folder whose ``transformer/`` holds sharded safetensors plus the
  index json diffusers expects; every other component is hard-linked (or copied) from the
  base, not re-saved. ``HunyuanVideoPipeline.from_pretrained(OUT)`` loads it.
- ``original``: one safetensors file with the original checkpoint's names and fused
  layouts (what ComfyUI loads as a diffusion model), names from the model spec.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hv_tune.arguments import inside, same_file
from hv_tune.errors import ConfigError, HvTuneError
from hv_tune.export.adapters import Adapter, adapter_delta
from hv_tune.export.formats import unknown_keys_policy
from hv_tune.export.lora_io import LoraFile, read_lora
from hv_tune.export.lora_math import LoraModule
from hv_tune.export.merge_record import (
    MergedLora,
    read_record,
    record_metadata,
    repeats,
    sketch,
    tensors_sha256,
)
from hv_tune.export.safetensors_stream import INDEX_SUFFIX, StreamWriter, TensorInfo, index_file, read_tensor
from hv_tune.io import atomic_directory, atomic_write
from hv_tune.models.base import ModelSpec, Part

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
MERGE_FORMATS = ("diffusers", "original")
BLOCK_ELEMENTS = 2**24  # float32 values merged at a time (64 MiB)


@dataclass
class OutTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sources: list[Part]  # base tensors (``Part.module`` is a tensor name), rows in order

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass
class MergeResult:
    out: Path
    tensors: int
    merged_layers: int
    shards: int
    notes: list[str]


# ----------------------------------------------------------------------------- inputs


def index_checkpoint(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of a diffusers component folder (one safetensors file, or shards + index).

    Raises:
        HvTuneError: naming the folder when it holds no safetensors weights.
    """
    index = folder / (WEIGHTS_NAME + INDEX_SUFFIX)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise HvTuneError(f"{folder}: no {WEIGHTS_NAME} (or its index) here (found: {found})")
    infos: dict[str, TensorInfo] = {}
    for name in files:
        if not (folder / name).is_file():
            raise HvTuneError(f"{index}: lists shard {name}, which is missing")
        infos.update(index_file(folder / name))
    return infos


def index_original_file(spec: ModelSpec, path: Path, shapes: dict[str, tuple[int, int]]) -> dict[str, TensorInfo]:
    """A single original-layout transformer file, seen as diffusers-named tensors (row views).

    Args:
        shapes: the model's linear layer shapes (``spec.linear_shapes`` of its config): the row
            split of fused tensors.

    Raises:
        HvTuneError: naming the file and a tensor that has no diffusers name or does not split.
    """
    if not path.is_file():
        raise HvTuneError(f"--transformer {path}: no such file")
    stored = index_file(path)
    views: dict[str, list[tuple[int, tuple[str, int, int]]]] = defaultdict(list)
    first: dict[str, TensorInfo] = {}
    for name, info in stored.items():
        module, _, suffix = name.rpartition(".")
        parts = spec.keys.original_parts(module)
        if parts is None:
            raise HvTuneError(f"{path}: tensor {name!r} has no name in the diffusers layout (not an original checkpoint?)")
        if len(parts) == 1:
            rows = [info.shape[0]]
        else:
            rows = [shapes[p.module][0] // p.chunks if p.module in shapes else -1 for p in parts]
        if sum(rows) != info.shape[0]:
            raise HvTuneError(f"{path}: {name} has {info.shape[0]} rows; the model config's layers need {rows}")
        row0 = 0
        for part, n in zip(parts, rows):
            target = f"{part.module}.{suffix}"
            views[target].append((part.chunk, (name, row0, n)))
            first.setdefault(target, info)
            row0 += n
    infos = {}
    for target, blocks in views.items():
        segments = tuple(seg for _, seg in sorted(blocks))
        info = first[target]
        shape = (sum(seg[2] for seg in segments), *info.shape[1:])
        infos[target] = TensorInfo(target, path, info.dtype, shape, segments)
    return infos


def base_weights_of(spec: ModelSpec, model_path: str | None) -> Callable[[str], torch.Tensor] | None:
    """A reader of the base transformer's weights by diffusers module name (None without a model)."""
    if model_path is None:
        return None
    infos: dict = {}

    def read(module: str) -> torch.Tensor:  # the folder is indexed on first use (only DoRA needs it)
        if not infos:
            infos.update(index_checkpoint(Path(model_path) / spec.transformer_subfolder))
        return read_tensor(infos[f"{module}.weight"])

    return read


def linear_shapes_of(infos: dict[str, TensorInfo]) -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every 2-D ``*.weight`` of a checkpoint, by module name."""
    return {n.removesuffix(".weight"): i.shape for n, i in infos.items() if n.endswith(".weight") and len(i.shape) == 2}


@dataclass
class Updates:
    """Everything the LoRAs add, with the user's scales: low-rank updates and full deltas."""

    #: diffusers module -> (update, user scale) of each LoRA touching it
    lora: dict[str, list[tuple[LoraModule, float]]]
    #: base tensor name (``<module>.weight`` / ``.bias``) -> (delta, user scale)
    diffs: dict[str, list[tuple[torch.Tensor, float]]]
    notes: list[str]
    #: one record entry per LoRA, in the order given (``merge_record``)
    merged: list[MergedLora] = field(default_factory=list)


def load_updates(
    spec: ModelSpec, loras: Sequence[tuple[str, float]], shapes: dict[str, tuple[int, int]], skip_unknown: bool,
    into: str = "",
) -> Updates:
    """Every LoRA, as (update, user scale) per diffusers module and deltas per tensor, plus notes
    and its merge record entry (``into``: the name of the merge output)."""
    updates = Updates(defaultdict(list), defaultdict(list), [])
    for path, scale in loras:
        lora: LoraFile = read_lora(spec, path, shapes)
        updates.notes += unknown_keys_policy(str(path), lora.unknown, skip_unknown,
                                             "merge with --skip-unknown to leave them out")
        updates.notes += [f"{path}: {n}" for n in lora.notes]
        extra = f" and {len(lora.diffs)} weight/bias deltas" if lora.diffs else ""
        updates.notes.append(f"{path}: {lora.format} format, {len(lora.modules)} layers{extra}, scale {scale}")
        for module, m in lora.modules.items():
            updates.lora[module].append((m, scale))
        for name, delta in lora.diffs.items():
            updates.diffs[name].append((delta, scale))
        updates.merged.append(MergedLora(Path(path).name, tensors_sha256(lora.path), sketch(lora.modules, lora.diffs),
                                         float(scale), into))
    return updates


# ----------------------------------------------------------------------------- planning


def _out_dtype(info: TensorInfo, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and info.dtype.is_floating_point else info.dtype


def plan_diffusers(infos: dict[str, TensorInfo], dtype: torch.dtype | None) -> list[OutTensor]:
    return [OutTensor(n, _out_dtype(i, dtype), i.shape, [Part(n)]) for n, i in infos.items()]


def plan_original(spec: ModelSpec, infos: dict[str, TensorInfo], dtype: torch.dtype | None) -> list[OutTensor]:
    """Original-checkpoint tensors, each the row concatenation of base tensors (spec's layout).

    Raises:
        HvTuneError: listing base tensors the spec has no original name for.
    """
    plan: dict[str, OutTensor] = {}
    unknown = []
    for name, info in infos.items():
        module, _, suffix = name.rpartition(".")
        original = spec.keys.original_module(module)
        if original is None:
            unknown.append(name)
            continue
        out_name = f"{original}.{suffix}"
        if out_name in plan:
            continue
        sources = [Part(f"{p.module}.{suffix}", p.chunk, p.chunks) for p in spec.keys.original_parts(original)]
        missing = [s.module for s in sources if s.module not in infos]
        if missing:
            raise HvTuneError(f"base transformer has {name} but not {missing}, which {out_name} needs")
        rows = sum(infos[s.module].shape[0] // s.chunks for s in sources)
        plan[out_name] = OutTensor(out_name, _out_dtype(info, dtype), (rows, *info.shape[1:]), sources)
    if unknown:
        raise HvTuneError(f"--format original: {spec.name} has no original-checkpoint name for {len(unknown)} base "
                          f"tensor(s) ({', '.join(unknown[:5])}, ...), so no single original file can be written; "
                          f"merge into a diffusers folder instead (--format diffusers, the default)")
    return list(plan.values())


def shard(plan: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most ``max_bytes`` (a bigger tensor gets a shard of its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in plan:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


# ----------------------------------------------------------------------------- merging


def merged_weight(
    w: torch.Tensor, updates: Sequence[tuple[LoraModule, float]], dtype: torch.dtype, row_offset: int = 0,
    diffs: Sequence[tuple[torch.Tensor, float]] = (),
) -> torch.Tensor:
    """``W + sum scale * (alpha / r) * up @ down + sum scale * diff`` in float32, returned in ``dtype``.

    ``w`` may be a block of rows of the tensor (a weight or a bias), starting at row ``row_offset``.
    """
    if not updates and not diffs:
        return w.to(dtype)
    acc = w.to(torch.float32, copy=True)
    rows = slice(row_offset, row_offset + w.shape[0])
    for m, scale in updates:
        acc.addmm_(m.up[rows].float(), m.down.float(), alpha=scale * m.scale)  # [n, r] @ [r, in]
    for delta, scale in diffs:
        acc.add_(delta[rows].float(), alpha=scale)
    return acc.to(dtype)


def full_deltas(ups: Sequence[tuple[Adapter, float]], diffs: Sequence[tuple[torch.Tensor, float]], w: torch.Tensor
                ) -> tuple[list[tuple[LoraModule, float]], list[tuple[torch.Tensor, float]]]:
    """Split a layer's updates into LoRAs (merged block by block) and full deltas ``[out, in]`` float32
    of the other types (``adapters.adapter_delta``: LoKr, LoHa; DoRA from the base weight ``w``).

    A user scale ``s`` on DoRA interpolates, ``W + s * (W_dora - W)``, as ComfyUI's ``weight_decompose``
    applies a strength; at 1 it is PEFT's adapted weight. Each DoRA is computed from the base weight,
    as PEFT does with several adapters active.
    """
    loras = [(m, s) for m, s in ups if isinstance(m, LoraModule)]
    others = [(adapter_delta(m, w), s) for m, s in ups if not isinstance(m, LoraModule)]
    return loras, [*diffs, *others]


def write_tensors(
    writer: StreamWriter, tensors: list[OutTensor], infos: dict[str, TensorInfo], updates: Updates, bar: tqdm
) -> None:
    """Merge and write each tensor of ``tensors``, part by part, in blocks of rows.

    Working memory is one base tensor plus ``BLOCK_ELEMENTS`` float32 values, whatever the
    size of the layer.
    """
    for t in tensors:
        for src in t.sources:
            module, _, suffix = src.module.rpartition(".")
            ups = updates.lora.get(module, []) if suffix == "weight" else []
            diffs = updates.diffs.get(src.module, [])
            w = read_tensor(infos[src.module])
            if w.dim() == 0:
                writer.write(t.name, w.to(t.dtype))
                continue
            ups, diffs = full_deltas(ups, diffs, w)
            rows = w.shape[0] // src.chunks
            offset = src.chunk * rows  # first row of this part in the base tensor
            step = max(1, BLOCK_ELEMENTS // max(1, w[0].numel()))
            # Blocks lie on one grid of base-tensor rows whatever the output layout, so every layout merges
            # each row with the same products (a BLAS product may round a row differently in a block of
            # another shape); a block that straddles a part boundary is merged whole and sliced.
            for g0 in range(offset - offset % step, offset + rows, step):
                block = merged_weight(w[g0 : g0 + step], ups, t.dtype, g0, diffs)
                writer.write(t.name, block[max(offset, g0) - g0 : min(offset + rows, g0 + step) - g0])
            del w
        bar.update(1)


def _write_file(path: Path, tensors: list[OutTensor], infos, updates, bar, metadata=None) -> None:
    with open(path, "wb") as fh:
        writer = StreamWriter(fh, [(t.name, t.dtype, t.shape) for t in tensors], metadata)
        write_tensors(writer, tensors, infos, updates, bar)
        writer.close()


def _link_or_copy(src: str, dst: str, copy: bool = False) -> str:
    if not copy:
        try:
            os.link(src, dst)
            return dst
        except OSError:  # another filesystem, or links not allowed: copy instead
            pass
    return shutil.copy2(src, dst)


def _fill_model_folder(out: Path, model_dir: Path, sub: str, plan, infos, updates, max_bytes, copy, bar, meta) -> int:
    """Write the merged transformer into ``out/sub`` (``meta``: metadata of every shard) and link/copy the
    other components."""
    for entry in sorted(model_dir.iterdir()):
        if entry.name == sub or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, out / entry.name, copy_function=lambda s, d: _link_or_copy(s, d, copy))
        else:
            _link_or_copy(str(entry), str(out / entry.name), copy)
    (out / sub).mkdir()
    for extra in sorted((model_dir / sub).iterdir()):  # config.json and anything that is not weights
        if extra.is_file() and not extra.name.startswith(WEIGHTS_NAME.split(".")[0]):
            shutil.copy2(extra, out / sub / extra.name)
    shards = shard(plan, max_bytes)
    if len(shards) == 1:
        _write_file(out / sub / WEIGHTS_NAME, shards[0], infos, updates, bar, meta)
        return 1
    stem, ext = WEIGHTS_NAME.rsplit(".", 1)
    weight_map = {}
    for i, tensors in enumerate(shards):
        fname = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        _write_file(out / sub / fname, tensors, infos, updates, bar, meta)
        weight_map.update({t.name: fname for t in tensors})
    index = {"metadata": {"total_size": sum(t.nbytes for t in plan)}, "weight_map": weight_map}
    (out / sub / (WEIGHTS_NAME + INDEX_SUFFIX)).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return len(shards)


def check_out(out: Path, model_dir: Path, loras: Sequence[tuple[str, float]], transformer_path=None) -> None:
    """``out`` is new and no input: not an existing path, not the model folder or inside it.

    Raises:
        ConfigError: naming ``--out`` and the input it would overwrite or change.
    """
    inputs = {"--transformer": transformer_path, **{f"--lora {p}": p for p, _ in loras}}
    for flag, path in inputs.items():
        if path is not None and same_file(out, path):
            raise ConfigError(f"--out {out} is the {flag} file; choose a new path (nothing is overwritten)")
    if inside(out, model_dir):
        raise ConfigError(f"--out {out} is inside the --model folder {model_dir}; writing there would change "
                          f"the base model: choose a path outside it")
    if out.exists():
        raise ConfigError(f"--out {out} already exists; choose a new path (nothing is overwritten)")


def merge_loras(
    spec: ModelSpec,
    model_dir: str | os.PathLike,
    loras: Sequence[tuple[str, float]],
    out: str | os.PathLike,
    fmt: str = "diffusers",
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 10**9,
    copy: bool = False,
    skip_unknown: bool = False,
    transformer_path: str | os.PathLike | None = None,
    allow_repeat: bool = False,
) -> MergeResult:
    """Merge ``loras`` (path, scale) into the transformer of ``model_dir`` and write ``out``.

    Args:
        fmt: ``diffusers`` (a model folder at ``out``) or ``original`` (one safetensors file).
        dtype: output dtype of floating tensors; None keeps each base tensor's dtype.
        copy: copy the other components instead of hard-linking them.
        transformer_path: base transformer weights from this single original-layout file
            (``--format original`` output, ComfyUI's file) instead of ``model_dir``'s folder.
        allow_repeat: merge a LoRA that the base already holds, or that is given twice (by
            content: ``merge_record``), instead of refusing it.

    Raises:
        HvTuneError: for a missing/invalid model folder, an existing ``out`` or one inside the
            model folder, a LoRA merged twice, or LoRAs that do not fit the model (the message
            names the file and key).
    """
    model_dir, out = Path(model_dir), Path(out)
    if fmt not in MERGE_FORMATS:
        raise HvTuneError(f"--format {fmt}: use one of {', '.join(MERGE_FORMATS)}")
    if not (model_dir / "model_index.json").is_file():
        raise HvTuneError(f"--model {model_dir}: not a diffusers-format model folder (no model_index.json)")
    check_out(out, model_dir, loras, transformer_path)
    sub = spec.transformer_subfolder
    if transformer_path:
        infos = index_original_file(spec, Path(transformer_path), spec.linear_shapes(str(model_dir)))
    else:
        infos = index_checkpoint(model_dir / sub)
    updates = load_updates(spec, loras, linear_shapes_of(infos), skip_unknown, out.name)
    base_files = sorted({i.file for i in infos.values()})
    base = read_record(base_files)
    repeated = repeats(base, updates.merged, [str(p) for p, _ in loras],
                       str(transformer_path or model_dir / sub))
    if repeated and not allow_repeat:
        raise ConfigError(f"{repeated[0]}; merging a LoRA again adds its update once more (twice the strength). "
                          f"Merge it once with the scale you want, or pass --allow-repeat")
    updates.notes += [f"warning: {line}; merged again (--allow-repeat)" for line in repeated]
    meta = {"format": "pt", **record_metadata([*base, *updates.merged])}
    bad = sorted(n for n, ds in updates.diffs.items()
                 if n not in infos or any(tuple(d.shape) != tuple(infos[n].shape) for d, _ in ds))
    if bad:
        raise HvTuneError(f"the LoRAs have deltas that fit no tensor of the base model: {bad[:10]}")
    plan = plan_diffusers(infos, dtype) if fmt == "diffusers" else plan_original(spec, infos, dtype)
    with tqdm(total=len(plan), desc="merge", unit="tensor") as bar:
        if fmt == "original":
            atomic_write(out, lambda tmp: _write_file(tmp, plan, infos, updates, bar, meta))
            shards = 1
        else:
            count = {}

            def fill(tmp: Path) -> None:
                count["shards"] = _fill_model_folder(
                    tmp, model_dir, sub, plan, infos, updates, max_shard_bytes, copy, bar, meta
                )

            atomic_directory(out, fill)
            shards = count["shards"]
    return MergeResult(out, len(plan), len(updates.lora), shards, updates.notes)
