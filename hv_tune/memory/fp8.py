"""fp8 weight storage: frozen linear weights in float8_e4m3fn, upcast per layer to compute.

Uses diffusers' layerwise casting hook (``diffusers.hooks.apply_layerwise_casting_hook``):
before a layer runs its weights are cast to the compute dtype, after it they go back to
fp8. We pick the layers ourselves instead of calling ``apply_layerwise_casting`` on the
whole model because that function also installs PEFT's "no input cast" hook on LoRA
layers, which makes a float32 LoRA see bf16 inputs and fail without autocast. Which
layers stay in the compute dtype (norms, embedders, modulation) is model-family
knowledge: the ``ModelSpec`` says (``fp8_keep_patterns``). LoRA layers are never cast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
# The layer types diffusers' layerwise casting supports; weight-holding leaves of our models.
CASTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def is_lora_module(name: str) -> bool:
    """True for PEFT's adapter modules (``...to_q.lora_A.default``), never stored in fp8."""
    return any(part.startswith("lora_") for part in name.split("."))


def fp8_layer_names(module: nn.Module, keep_patterns: Sequence[str]) -> list[str]:
    """Names of the layers that would be stored in fp8 (frozen, castable, not kept, not LoRA).

    Args:
        keep_patterns: regular expressions searched (``re.search``) in module names, as
            diffusers' ``_skip_layerwise_casting_patterns``; a match keeps the layer (and
            everything below it) in the compute dtype.
    """
    compiled = [re.compile(p) for p in keep_patterns]
    names = []
    for name, sub in module.named_modules():
        if not isinstance(sub, CASTABLE) or is_lora_module(name):
            continue
        if any(c.search(name) for c in compiled):
            continue
        if any(p.requires_grad for p in sub.parameters()):
            continue  # a trainable layer must keep full-precision weights
        names.append(name)
    return names


def apply_fp8_storage(module: nn.Module, keep_patterns: Sequence[str], compute_dtype: torch.dtype) -> list[str]:
    """Store the frozen castable layers of ``module`` in fp8, computing in ``compute_dtype``.

    Call it after the LoRA is added (so the adapter is created and initialised in full
    precision) and before the module is moved to its device. Returns the cast layer names.
    """
    from diffusers.hooks import apply_layerwise_casting_hook

    names = fp8_layer_names(module, keep_patterns)
    layers = dict(module.named_modules())
    for name in names:
        apply_layerwise_casting_hook(layers[name], FP8, compute_dtype, non_blocking=False)
    return names


def storage_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``module`` (as stored, fp8 counted as 1)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
