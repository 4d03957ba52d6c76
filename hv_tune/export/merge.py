"""Merge LoRAs into a model's transformer, streaming: never two copies of it in memory.

``W' = W + sum_i scale_i * (alpha_i / r_i) * B_i @ A_i``, computed in float32 one tensor at
a time and stored in the base tensor's dtype (or ``dtype``). Tensors are read one by one
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hv_tune.errors import HvTuneError
from hv_tune.export.formats import unknown_keys_message
from hv_tune.export.lora_io import LoraFile, read_lora
from hv_tune.export.lora_math import LoraModule
from hv_tune.export.safetensors_stream import INDEX_SUFFIX, StreamWriter, TensorInfo, index_file, read_tensor
from hv_tune.io import atomic_directory, atomic_write
from hv_tune.models.base import ModelSpec

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
MERGE_FORMATS = ("diffusers", "original")
BLOCK_ELEMENTS = 2**24  # float32 values merged at a time (64 MiB)


@dataclass(frozen=True)
class Source:
    """Rows ``chunk`` of ``chunks`` of one base tensor (the whole tensor when chunks == 1)."""

    name: str
    chunk: int = 0
    chunks: int = 1


@dataclass
class OutTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sources: list[Source]

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


def linear_shapes_of(infos: dict[str, TensorInfo]) -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every 2-D ``*.weight`` of a checkpoint, by module name."""
    return {n.removesuffix(".weight"): i.shape for n, i in infos.items() if n.endswith(".weight") and len(i.shape) == 2}


def load_updates(
    spec: ModelSpec, loras: Sequence[tuple[str, float]], shapes: dict[str, tuple[int, int]], skip_unknown: bool
) -> tuple[dict[str, list[tuple[LoraModule, float]]], list[str]]:
    """Every LoRA, as (update, user scale) per diffusers module, plus notes for the user."""
    updates: dict[str, list[tuple[LoraModule, float]]] = defaultdict(list)
    notes = []
    for path, scale in loras:
        lora: LoraFile = read_lora(spec, path, shapes)
        if lora.unknown:
            message = unknown_keys_message(str(path), lora.unknown)
            if not skip_unknown:
                raise HvTuneError(message + "\nmerge with --skip-unknown to leave them out")
            notes.append(message + "\n(left out: --skip-unknown)")
        notes += [f"{path}: {n}" for n in lora.notes]
        notes.append(f"{path}: {lora.format} format, {len(lora.modules)} layers, scale {scale}")
        for module, m in lora.modules.items():
            updates[module].append((m, scale))
    return updates, notes


# ----------------------------------------------------------------------------- planning


def _out_dtype(info: TensorInfo, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and info.dtype.is_floating_point else info.dtype


def plan_diffusers(infos: dict[str, TensorInfo], dtype: torch.dtype | None) -> list[OutTensor]:
    return [OutTensor(n, _out_dtype(i, dtype), i.shape, [Source(n)]) for n, i in infos.items()]


def plan_original(spec: ModelSpec, infos: dict[str, TensorInfo], dtype: torch.dtype | None) -> list[OutTensor]:
    """Original-checkpoint tensors, each the row concatenation of base tensors (spec's layout).

    Raises:
        HvTuneError: listing base tensors the spec has no original name for.
    """
    plan: dict[str, OutTensor] = {}
    unknown = []
    for name, info in infos.items():
        module, _, suffix = name.rpartition(".")
        original = spec.original_module(module)
        if original is None:
            unknown.append(name)
            continue
        out_name = f"{original}.{suffix}"
        if out_name in plan:
            continue
        sources = [Source(f"{p.module}.{suffix}", p.chunk, p.chunks) for p in spec.original_parts(original)]
        missing = [s.name for s in sources if s.name not in infos]
        if missing:
            raise HvTuneError(f"base transformer has {name} but not {missing}, which {out_name} needs")
        rows = sum(infos[s.name].shape[0] // s.chunks for s in sources)
        plan[out_name] = OutTensor(out_name, _out_dtype(info, dtype), (rows, *info.shape[1:]), sources)
    if unknown:
        raise HvTuneError(f"no original name for {len(unknown)} base tensor(s): {unknown[:10]}")
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
    w: torch.Tensor, updates: Sequence[tuple[LoraModule, float]], dtype: torch.dtype, row_offset: int = 0
) -> torch.Tensor:
    """``W + sum scale * (alpha / r) * up @ down`` in float32, returned in ``dtype``.

    ``w`` may be a block of rows of the layer's weight, starting at row ``row_offset``.
    """
    if not updates:
        return w.to(dtype)
    acc = w.to(torch.float32, copy=True)
    rows = slice(row_offset, row_offset + w.shape[0])
    for m, scale in updates:
        acc.addmm_(m.up[rows].float(), m.down.float(), alpha=scale * m.scale)  # [n, r] @ [r, in]
    return acc.to(dtype)


def write_tensors(
    writer: StreamWriter, tensors: list[OutTensor], infos: dict[str, TensorInfo], updates, bar: tqdm
) -> None:
    """Merge and write each tensor of ``tensors``, part by part, in blocks of rows.

    Working memory is one base tensor plus ``BLOCK_ELEMENTS`` float32 values, whatever the
    size of the layer.
    """
    for t in tensors:
        for src in t.sources:
            module, _, suffix = src.name.rpartition(".")
            ups = updates.get(module, []) if suffix == "weight" else []
            w = read_tensor(infos[src.name])
            if w.dim() == 0:
                writer.write(t.name, w.to(t.dtype))
                continue
            offset = src.chunk * (w.shape[0] // src.chunks)  # first row of this part in the base tensor
            part = w[offset : offset + w.shape[0] // src.chunks]
            step = max(1, BLOCK_ELEMENTS // max(1, part[0].numel()))
            for r0 in range(0, part.shape[0], step):
                writer.write(t.name, merged_weight(part[r0 : r0 + step], ups, t.dtype, offset + r0))
            del w, part
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


def _fill_model_folder(out: Path, model_dir: Path, sub: str, plan, infos, updates, max_bytes, copy, bar) -> int:
    """Write the merged transformer into ``out/sub`` and link/copy the other components."""
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
        _write_file(out / sub / WEIGHTS_NAME, shards[0], infos, updates, bar, {"format": "pt"})
        return 1
    stem, ext = WEIGHTS_NAME.rsplit(".", 1)
    weight_map = {}
    for i, tensors in enumerate(shards):
        fname = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        _write_file(out / sub / fname, tensors, infos, updates, bar, {"format": "pt"})
        weight_map.update({t.name: fname for t in tensors})
    index = {"metadata": {"total_size": sum(t.nbytes for t in plan)}, "weight_map": weight_map}
    (out / sub / (WEIGHTS_NAME + INDEX_SUFFIX)).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return len(shards)


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
) -> MergeResult:
    """Merge ``loras`` (path, scale) into the transformer of ``model_dir`` and write ``out``.

    Args:
        fmt: ``diffusers`` (a model folder at ``out``) or ``original`` (one safetensors file).
        dtype: output dtype of floating tensors; None keeps each base tensor's dtype.
        copy: copy the other components instead of hard-linking them.

    Raises:
        HvTuneError: for a missing/invalid model folder, an existing ``out``, or LoRAs that do
            not fit the model (the message names the file and key).
    """
    model_dir, out = Path(model_dir), Path(out)
    if fmt not in MERGE_FORMATS:
        raise HvTuneError(f"--format {fmt}: use one of {', '.join(MERGE_FORMATS)}")
    if not (model_dir / "model_index.json").is_file():
        raise HvTuneError(f"--model {model_dir}: not a diffusers-format model folder (no model_index.json)")
    if out.exists():
        raise HvTuneError(f"--out {out} already exists; choose a new path (nothing is overwritten)")
    sub = spec.transformer_subfolder
    infos = index_checkpoint(model_dir / sub)
    updates, notes = load_updates(spec, loras, linear_shapes_of(infos), skip_unknown)
    plan = plan_diffusers(infos, dtype) if fmt == "diffusers" else plan_original(spec, infos, dtype)
    with tqdm(total=len(plan), desc="merge", unit="tensor") as bar:
        if fmt == "original":
            atomic_write(out, lambda tmp: _write_file(tmp, plan, infos, updates, bar, {"format": "pt"}))
            shards = 1
        else:
            count = {}

            def fill(tmp: Path) -> None:
                count["shards"] = _fill_model_folder(
                    tmp, model_dir, sub, plan, infos, updates, max_shard_bytes, copy, bar
                )

            atomic_directory(out, fill)
            shards = count["shards"]
    return MergeResult(out, len(plan), len(updates), shards, notes)
