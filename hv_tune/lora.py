"""PEFT LoRA on the transformer: target resolution, injection, state dicts.

Targets are resolved to an explicit list of module names before PEFT sees them, so a
preset never catches look-alike modules elsewhere (the token refiner also has
``attn.to_q``) and a user pattern that matches nothing is an error, not a silent no-op.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import torch
from torch import nn

from hv_tune.config import LoraConfig
from hv_tune.errors import ConfigError
from hv_tune.models.base import ModelSpec


def match_modules(names: list[str], patterns: list[str]) -> list[str]:
    """Names that fully match any of the regular expressions."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in names if any(c.fullmatch(n) for c in compiled)]


def resolve_targets(spec: ModelSpec, model: nn.Module, targets: str | list[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules the LoRA goes on.

    Args:
        targets: a preset name of ``spec.lora_presets`` or a list of fnmatch globs over
            module names (``transformer_blocks.*.attn.to_q``).

    Raises:
        ConfigError: for an unknown preset, or a glob that matches no linear layer.
    """
    return resolve_target_names(spec, [n for n, m in model.named_modules() if isinstance(m, nn.Linear)], targets)


def resolve_target_names(spec: ModelSpec, linear: list[str], targets: str | list[str]) -> list[str]:
    """``resolve_targets`` over the names of the model's linear layers (``spec.linear_shapes`` works
    without weights), in model order. Raises ``ConfigError`` as ``resolve_targets`` does."""
    if isinstance(targets, str):
        if targets not in spec.lora_presets:
            raise ConfigError(f"config key 'lora.targets': unknown preset {targets!r} for {spec.name}")
        return match_modules(linear, list(spec.lora_presets[targets]))
    chosen: list[str] = []
    for pattern in targets:
        hits = fnmatch.filter(linear, pattern)
        if not hits:
            raise ConfigError(
                f"config key 'lora.targets': pattern {pattern!r} matches no linear layer "
                f"(e.g. {linear[0]!r}); use fnmatch globs over module names"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=linear.index)


def suffix_lookalikes(target_modules: list[str], module_names: list[str]) -> list[str]:
    """Modules PEFT would also adapt: PEFT matches a listed name as a suffix (``norm_out.linear``
    also hits ``...refiner_blocks.0.norm_out.linear``), so these must be excluded by name."""
    chosen = set(target_modules)
    return [n for n in module_names if n not in chosen and any(n.endswith("." + t) for t in target_modules)]


def peft_config(cfg: LoraConfig, target_modules: list[str], module_names: list[str] | None = None) -> Any:
    """The ``peft.LoraConfig`` saved as adapter metadata next to the weights.

    Args:
        module_names: the model's module names; look-alikes of a target (``suffix_lookalikes``)
            go into ``exclude_modules`` so that exactly ``target_modules`` are adapted.
    """
    from peft import LoraConfig as PeftLoraConfig

    exclude = suffix_lookalikes(target_modules, module_names or [])
    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        exclude_modules=exclude or None,
        init_lora_weights=True,
    )


def add_lora(model: nn.Module, config: Any) -> None:
    """Freeze the base, inject the adapter and keep the adapter weights in float32."""
    model.requires_grad_(False)
    model.add_adapter(config)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights with PEFT's names (``<module>.lora_A.weight``), float32, on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights saved by ``lora_state_dict`` back (strict: every key must exist)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"adapter checkpoint has keys this model does not: {unexpected[:5]}")
