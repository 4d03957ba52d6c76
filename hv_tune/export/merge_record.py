"""What a merged transformer holds: a record of the LoRAs merged into it, kept in its safetensors metadata.

Each merge writes, into the metadata of every file of the merged transformer (each shard of a
diffusers folder, or the ``--format original`` file), the base's record plus one entry per
LoRA it merged. A LoRA is recognised by content, not name:

- ``sha256``: SHA-256 of its tensors (sorted by name: name, dtype, shape, raw bytes): names a
  byte-identical copy under another name or with other metadata;
- ``sketch`` (decides): ``SKETCH_PROBES`` numbers ``sum_m u_k^T dW_m v_k`` over its layers ``m`` (and
  ``.diff`` deltas) with fixed random vectors seeded by the layer name, so the same update in another
  file format (kohya, ComfyUI: renamed, fused, alpha folded) matches within ``SKETCH_RTOL``.

The format is documented in docs/lora-formats.md ("What a merged model holds").
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hv_tune.errors import ConfigError
from hv_tune.export.adapters import DoraModule, adapter_delta
from hv_tune.export.lora_math import LoraModule
from hv_tune.export.safetensors_stream import tensor_bytes

RECORD_KEY = "hv_tune.merged_loras"
RECORD_VERSION = 1
SKETCH_PROBES = 8
SKETCH_RTOL = 1e-2  # re-layouts agree to ~1e-7, an fp16/bf16 copy to ~1e-3; two different LoRAs differ by O(1)
CHUNK = 2**24


@dataclass(frozen=True)
class MergedLora:
    """One LoRA merged into a model."""

    file: str  # the file's name when it was merged
    sha256: str
    sketch: tuple[float, ...]
    scale: float
    into: str  # the name of the merge output it was first merged into

    def same_lora(self, other: MergedLora) -> str | None:
        """How ``other`` is the same LoRA ("same tensors", "same update"), or None.

        The sketch decides: the same tensors with another alpha (kept in metadata) are another update.
        """
        a, b = torch.tensor(self.sketch, dtype=torch.float64), torch.tensor(other.sketch, dtype=torch.float64)
        if len(a) != len(b) or (a - b).norm() > SKETCH_RTOL * max(a.norm(), b.norm()):
            return None
        return "same tensors" if self.sha256 == other.sha256 else "same update"


def tensors_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a safetensors file's tensors (name, dtype, shape, data; metadata left out), or of
    the whole file for other formats."""
    h = hashlib.sha256()
    if Path(path).suffix != ".safetensors":
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
        return h.hexdigest()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            sl = f.get_slice(name)
            h.update(json.dumps([name, sl.get_dtype(), list(sl.get_shape())]).encode())
            h.update(tensor_bytes(f.get_tensor(name)))  # one LoRA tensor at a time
    return h.hexdigest()


def _probes(name: str, size: int) -> torch.Tensor:
    """``[SKETCH_PROBES, size]`` float64 standard normal rows, seeded by ``crc32(name)``."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(SKETCH_PROBES, size, generator=gen, dtype=torch.float64)


def sketch(modules: Mapping[str, LoraModule], diffs: Mapping[str, torch.Tensor]) -> tuple[float, ...]:
    """``SKETCH_PROBES`` random bilinear forms ``u_k^T dW v_k`` summed over the LoRA's layers: a fingerprint
    independent of the file format (layer names are diffusers names; alpha and fusing are resolved by
    the reader)."""
    out = torch.zeros(SKETCH_PROBES, dtype=torch.float64)
    for name, m in modules.items():
        if isinstance(m, DoraModule):  # the delta needs the base: its LoRA and its magnitudes instead
            out += _probes(f"{name}.magnitude", m.magnitude.numel()) @ m.magnitude.double()
            m = m.lora
        if not isinstance(m, LoraModule):  # LoKr, LoHa: their (full) delta
            d = adapter_delta(m).double()
            out += ((_probes(f"{name}.out", d.shape[0]) @ d) * _probes(f"{name}.in", d.shape[1])).sum(1)
            continue
        u, v = _probes(f"{name}.out", m.up.shape[0]), _probes(f"{name}.in", m.down.shape[1])
        out += ((u @ m.up.double()) * (v @ m.down.double().T)).sum(1) * m.scale  # [K, r] * [K, r]
    for name, d in diffs.items():
        d = d.double()
        u = _probes(f"{name}.out", d.shape[0])
        out += ((u @ d) * _probes(f"{name}.in", d.shape[1])).sum(1) if d.dim() == 2 else u @ d
    return tuple(out.tolist())


def read_record(files: Sequence[str | os.PathLike]) -> list[MergedLora]:
    """The merge record of a transformer (the first of its safetensors ``files`` that has one).

    Raises:
        ConfigError: naming the file when its record cannot be read.
    """
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            text = (fh.metadata() or {}).get(RECORD_KEY)
        if text is None:
            continue
        try:
            entries = json.loads(text)["loras"]
            return [MergedLora(e["file"], e["sha256"], tuple(e["sketch"]), float(e["scale"]), e["into"])
                    for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{f}: its merge record (metadata {RECORD_KEY!r}) is unreadable ({e!r}); "
                              f"remove that metadata key to merge into it") from e
    return []


def record_metadata(entries: Sequence[MergedLora]) -> dict[str, str]:
    """The safetensors metadata that carries ``entries``."""
    return {RECORD_KEY: json.dumps({"version": RECORD_VERSION, "loras": [asdict(e) for e in entries]})}


def repeats(base: Sequence[MergedLora], new: Sequence[MergedLora], paths: Sequence[str], base_name: str) -> list[str]:
    """One line per LoRA of ``new`` (given as ``paths``) that is already in ``base`` or earlier in ``new``."""
    lines = []
    for i, (lora, path) in enumerate(zip(new, paths)):
        for j, seen in enumerate([*base, *new[:i]]):
            how = seen.same_lora(lora)
            if how is None:
                continue
            if j < len(base):
                lines.append(f"--lora {path} ({how} as {seen.file}) is already merged into the base transformer "
                             f"{base_name} (scale {seen.scale:g}, by the merge that wrote {seen.into})")
            else:
                lines.append(f"--lora {path} ({how} as --lora {paths[j - len(base)]}) is given twice")
            break
    return lines
