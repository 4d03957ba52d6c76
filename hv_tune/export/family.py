"""Which registered model family a LoRA file is for: recorded in its metadata, else told by its keys.

Every file hv-tune writes (each layout, checkpoints included) records the family it was trained
for under ``FAMILY_KEY`` (the spec's name). The one reader (``lora_io.read_lora``) refuses a file
recorded for another registered family unless the spec lists it in ``lora_compatible`` (same layers
and sizes, e.g. text-to-video and image-to-video variants of one model); a family hv-tune does not
know is only noted. Files without the record (other tools, older hv-tune files) are refused when
their keys or their layer shapes clearly belong to another registered family:

- keys: another family names every key this one names, and more (a v1 LoRA's single-stream
  blocks on a model without them; musubi-tuner's separate ``img_attn_q`` names on a model whose
  layers are fused);
- shapes: the file does not fit this model but fits another family's full-size model exactly.

docs/lora-formats.md ("Model families") has the rules and their limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from hv_tune.errors import HvTuneError
from hv_tune.export.formats import classify_keys
from hv_tune.models.base import ModelSpec

#: safetensors metadata key: the name of the registered family the LoRA was trained for
FAMILY_KEY = "hv_tune.family"


def compatible(spec: ModelSpec) -> set[str]:
    """Family names whose LoRAs fit ``spec``'s model as they are: its own and ``spec.lora_compatible``."""
    return {spec.name, *spec.lora_compatible}


def other_families(spec: ModelSpec) -> list[ModelSpec]:
    """Registered specs whose LoRAs do not fit ``spec``'s model, in registry order."""
    from hv_tune.models import MODEL_SPECS

    ok = compatible(spec)
    return [s for s in MODEL_SPECS.values() if s.name not in ok]


def _refusal(path: Path, spec: ModelSpec, theirs: list[str], why: str) -> HvTuneError:
    names = " or ".join(theirs)
    return HvTuneError(f"{path}: this is a {names} LoRA, not a {spec.name} one ({why}); "
                       f"use it with a {theirs[0]} model, or train one for {spec.name}")


def recorded_family(spec: ModelSpec, path: Path, meta: Mapping[str, str], notes: list[str]) -> str | None:
    """The family a file records (``FAMILY_KEY``), checked against ``spec``.

    Raises:
        HvTuneError: naming both families, when the record names another registered family
            that ``spec`` does not list as compatible.
    """
    family = meta.get(FAMILY_KEY)
    if not family or family == spec.name:
        return family or None
    if family in compatible(spec):
        notes.append(f"trained for {family}, used with {spec.name} (compatible: same layers and sizes)")
    elif family in {s.name for s in other_families(spec)}:
        raise _refusal(path, spec, [family], f"its metadata {FAMILY_KEY} says {family}")
    else:
        notes.append(f"its metadata says it is for {family!r}, a family hv-tune does not know; read by its keys")
    return family


def refuse_by_keys(spec: ModelSpec, path: Path, keys: list[str], ours: set[str]) -> None:
    """Refuse a file whose keys another family reads more of (``ours``: the keys ``spec`` reads).

    Raises:
        HvTuneError: naming both families and a key only the other one has.
    """
    fits, example = [], ""
    for other in other_families(spec):
        try:
            theirs = set(classify_keys(other, keys, str(path)).parsed)
        except HvTuneError:
            continue
        if ours < theirs:
            fits.append(other.name)
            example = example or sorted(theirs - ours)[0]
    if fits:
        raise _refusal(path, spec, fits, f"key {example!r} names a {fits[0]} layer that {spec.name} does not have")


def refuse_by_shapes(spec: ModelSpec, path: Path, keys: list[str], read: Callable[[ModelSpec, dict], object],
                     error: HvTuneError) -> None:
    """After ``error`` (the file does not fit ``spec``'s model), refuse it by name when it fits another
    family's full-size model exactly (``read(other, shapes)`` succeeds, every key read).

    Raises:
        HvTuneError: naming both families and ``error``.
    """
    fits = []
    for other in other_families(spec):
        try:
            if not classify_keys(other, keys, str(path)).unknown:
                read(other, other.linear_shapes(None))
                fits.append(other.name)
        except (HvTuneError, OSError, ValueError):
            continue
    if fits:
        here = str(error).removeprefix(f"{path}: ")
        raise _refusal(path, spec, fits, f"its layers have the full-size {fits[0]} shapes; here: {here}") from error
