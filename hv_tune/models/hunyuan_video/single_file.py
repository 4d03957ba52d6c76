"""Loading HunyuanVideo components from one original-layout safetensors file (Tencent's or ComfyUI's
names): the model folder's config, the weights renamed through the key table (``keys.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hv_tune.models.base import LoadOptions
from hv_tune.models.hunyuan_video import keys as hv_keys

#: key prefixes single-file checkpoints carry (ComfyUI's saved models, Tencent's VAE in a checkpoint)
SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.")


def load_single_file(cls: Any, opts: LoadOptions, subfolder: str, path: str, rename: Any) -> nn.Module:
    """A component built from the model folder's config, with the weights of one safetensors file.

    diffusers' ``HunyuanVideoTransformer3DModel.from_single_file`` splits a single block's
    ``linear1`` at the full model's width (3072, hard-coded) and the VAE has no single-file
    loader, so the file is read here: ``rename(state, expected_shapes)`` maps its names to
    diffusers' (the spec's key table), then ``load_state_dict(strict=True)`` checks every tensor.

    Raises:
        HvTuneError: naming the file for a missing file, or keys/shapes that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hv_tune.errors import HvTuneError

    if not Path(path).is_file():
        raise HvTuneError(f"model.{subfolder}_path: {path} does not exist")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError) as e:
        raise HvTuneError(f"model.{subfolder}_path: {path} is not a readable safetensors file ({e})") from e
    state = {}
    for key, tensor in raw.items():
        prefix = next((p for p in SINGLE_FILE_PREFIXES if key.startswith(p)), "")
        state[key[len(prefix):]] = tensor.to(opts.dtype) if tensor.is_floating_point() else tensor
    config = cls.load_config(opts.path, subfolder=subfolder, revision=opts.revision)
    with torch.device("meta"):
        model = cls.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(rename(state, shapes), strict=True, assign=True)
    except RuntimeError as e:
        raise HvTuneError(f"model.{subfolder}_path: {path} does not fit the {subfolder} config of "
                          f"{opts.path}:\n{str(e)[:2000]}") from e
    return model.to(opts.dtype).eval()


def original_to_diffusers(state: dict[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """An original-layout transformer state dict in diffusers' names (the key table, split by rows)."""
    out: dict[str, torch.Tensor] = {}
    chunks: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, tensor in state.items():
        module, _, suffix = key.rpartition(".")
        parts = hv_keys.original_parts(module)
        if parts is None:
            out[key] = tensor  # reported by load_state_dict as unexpected
            continue
        rows = [shapes.get(f"{p.module}.{suffix}", (0,))[0] // p.chunks for p in parts]
        if sum(rows) != tensor.shape[0]:
            out[key] = tensor  # a size mismatch: load_state_dict names it
            continue
        for p, piece in zip(parts, tensor.split(rows)):  # [sum(rows), ...] -> [rows_i, ...]
            chunks.setdefault(f"{p.module}.{suffix}", []).append((p.chunk, piece))
    for name, pieces in chunks.items():
        out[name] = torch.cat([t for _, t in sorted(pieces, key=lambda x: x[0])])
    return out
