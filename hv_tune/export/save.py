"""The one save of a trained LoRA (or DoRA, LoKr, LoHa): diffusers format, plus the layouts of ``save.formats``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import ConfigError
from hv_tune.export.adapter_io import has_adapter_keys, peft_modules
from hv_tune.export.convert import adapter_modules, kohya_comfyui_notes
from hv_tune.export.formats import FORMATS, Layout, to_layout
from hv_tune.export.lora_io import save_diffusers, write_lora
from hv_tune.export.merge import base_weights_of
from hv_tune.models.base import ModelSpec


def unnamed_in_layout(spec: ModelSpec, modules: Sequence[str], layout: Layout) -> list[str]:
    """Diffusers modules that ``layout`` has no name for (the diffusers layout names every one)."""
    if layout == Layout.DIFFUSERS:
        return []
    name_of = spec.keys.kohya_module if layout == Layout.KOHYA else spec.keys.original_module
    return [m for m in modules if name_of(m) is None]


def check_save_formats(spec: ModelSpec, targets: Sequence[str], formats: Sequence[str]) -> None:
    """Refuse, before training, LoRA targets that a layout of ``save.formats`` cannot name.

    Raises:
        ConfigError: naming the layout, the layers (first 8) and the two ways out.
    """
    for layout in dict.fromkeys(to_layout(f) for f in formats):
        missing = unnamed_in_layout(spec, targets, layout)
        if missing:
            shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
            raise ConfigError(
                f"config keys 'lora.targets' / 'save.formats': the {layout} layout of {spec.name} has no name for "
                f"{len(missing)} targeted layer(s): {shown}. Narrow lora.targets (a preset, or globs such as "
                f"'transformer_blocks.*') or drop {layout} from save.formats (the diffusers file holds every layer; "
                f"`finetune.py convert` can write {layout} later for the layers it names).")


def save_trained_lora(
    spec: ModelSpec, out_dir: Path, adapter: dict[str, torch.Tensor], lora_config: Any, formats: Sequence[str],
    model_path: str,
) -> list[str]:
    """Write ``pytorch_lora_weights.safetensors`` (with its PEFT config) and each other layout.

    Every file is written atomically, named by ``FORMATS[layout].file_name``, and records the
    model family (``hv_tune.export.family``). The final LoRA and each checkpoint's LoRA files
    come from here, so a checkpoint's files are the final files of a run stopped at its step.

    Args:
        adapter: the PEFT state dict (``get_peft_model_state_dict`` names) of any type: LoRA, DoRA
            (``lora_magnitude_vector``), LoKr (``lokr_*``), LoHa (``hada_*``).
        lora_config: the PEFT config trained with (``LoraConfig``, ``LoKrConfig``, ``LoHaConfig``).
        formats: layout names (``diffusers`` is always written).
        model_path: the model folder (layer sizes for fusing).

    Returns:
        Lines for the user: the other files written and warnings (kohya layers ComfyUI skips).
    """
    out_dir = Path(out_dir)
    plain = not has_adapter_keys(list(adapter))  # DoRA, LoKr, LoHa: written by ``adapter_write``
    modules = None if plain else peft_modules(adapter, lora_config)
    if plain:
        save_diffusers(spec, out_dir / FORMATS[Layout.DIFFUSERS].file_name, adapter, lora_config)
    else:
        write_lora(spec, modules, out_dir / FORMATS[Layout.DIFFUSERS].file_name, Layout.DIFFUSERS, {})
    lines: list[str] = []
    extra = [to_layout(f) for f in formats if to_layout(f) != Layout.DIFFUSERS]
    if not extra:
        return lines
    modules = modules or adapter_modules(adapter, lora_config.r, lora_config.lora_alpha)
    shapes = spec.linear_shapes(model_path)
    base = None if plain else base_weights_of(spec, model_path)
    for layout in extra:
        notes: list[str] = []
        path = write_lora(spec, modules, out_dir / FORMATS[layout].file_name, layout, shapes, base=base, notes=notes)
        lines.append(f"LoRA ({layout}) written to {path}")
        lines += notes
        if layout == Layout.KOHYA:
            lines += kohya_comfyui_notes(spec, modules, str(out_dir / FORMATS[Layout.COMFYUI].file_name))
    return lines
