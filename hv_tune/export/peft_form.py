"""Any supported adapter file in PEFT's form: the state dict and config ``sample`` loads with PEFT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hv_tune.errors import HvTuneError
from hv_tune.export.adapter_write import peft_config_of, peft_state
from hv_tune.export.adapters import type_name
from hv_tune.export.lora_io import read_lora
from hv_tune.models.base import ModelSpec


@dataclass
class PeftAdapter:
    """Any supported adapter file in PEFT's form: what ``set_peft_model_state_dict`` loads."""

    #: ``get_peft_model_state_dict`` names on diffusers modules (no prefix)
    state: dict[str, torch.Tensor]
    #: the PEFT config (``LoraConfig``, ``LoraConfig(use_dora=True)``, ``LoKrConfig``, ``LoHaConfig``); None
    #: for a file of deltas only
    config: Any
    adapter_type: str  # lora | dora | lokr | loha | delta
    #: deltas of diffusers parameters (``<module>.weight`` / ``.bias``) the file holds as ``.diff`` (fused
    #: layers a LoKr or DoRA cannot be split into): add ``scale * delta`` to the base
    diffs: dict[str, torch.Tensor]
    notes: list[str]
    family: str | None


def load_peft_adapter(spec: ModelSpec, path: str | Path, shapes) -> PeftAdapter:
    """Any supported adapter file or folder (PEFT / diffusion-pipe folder, ComfyUI, musubi-tuner/kohya,
    hv-tune's own, any of LoRA, DoRA, LoKr, LoHa) as a PEFT state dict and config at its trained strength.

    Raises:
        HvTuneError: for an unsupported adapter type (naming it and its keys), a file of several types,
            or anything ``lora_io.read_lora`` refuses.
    """
    lora = read_lora(spec, path, shapes)
    kinds = {type_name(m) for m in lora.modules.values()}
    if len(kinds) > 1:
        raise HvTuneError(f"{path}: layers of several adapter types ({', '.join(sorted(kinds))}); one PEFT adapter "
                          "holds one type: `merge` it, or `convert --svd-rank K` it to plain LoRA")
    if not kinds:
        return PeftAdapter({}, None, "delta", lora.diffs, lora.notes, lora.family)
    return PeftAdapter(peft_state(lora.modules), peft_config_of(lora.modules), kinds.pop(), lora.diffs, lora.notes,
                       lora.family)
