"""PEFT adapters (LoRA, DoRA, LoKr, LoHa) on the transformer: target resolution, injection, state dicts.

Targets are resolved to an explicit list of module names before PEFT sees them, so a
preset never catches look-alike modules elsewhere (the token refiner also has
``attn.to_q``) and a user pattern that matches nothing is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hv_tune.config import LoraConfig
from hv_tune.errors import ConfigError, HvTuneError
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


#: parameter-name markers of PEFT's adapter weights, per type (``lora_magnitude_vector`` is DoRA's)
ADAPTER_MARKERS = ("lora_", "lokr_", "hada_")


def peft_config(cfg: LoraConfig, target_modules: list[str], module_names: list[str] | None = None) -> Any:
    """The PEFT config of ``cfg.type`` (saved as adapter metadata next to the weights).

    ``lora``: ``peft.LoraConfig``; ``dora``: the same with ``use_dora=True`` (a per-output-row
    magnitude, Liu et al. 2024); ``lokr``: ``peft.LoKrConfig`` (``decompose_factor`` = ``lora.lokr.factor``,
    ``decompose_both``); ``loha``: ``peft.LoHaConfig``. ``rank``/``alpha`` give ``r`` and the
    alpha of each (scale alpha / r). PEFT's default initialisations leave the model unchanged at step 0.

    Args:
        module_names: the model's module names; look-alikes of a target (``suffix_lookalikes``)
            go into ``exclude_modules`` so that exactly ``target_modules`` are adapted.
    """
    import peft

    common = {"r": cfg.rank, "target_modules": target_modules,
              "exclude_modules": suffix_lookalikes(target_modules, module_names or []) or None}
    if cfg.type in ("lora", "dora"):
        return peft.LoraConfig(lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, init_lora_weights=True,
                               use_dora=cfg.type == "dora", **common)
    if cfg.type == "lokr":
        return peft.LoKrConfig(alpha=cfg.alpha, decompose_factor=cfg.lokr.factor,
                               decompose_both=cfg.lokr.decompose_both, init_weights=True, **common)
    if cfg.type == "loha":
        return peft.LoHaConfig(alpha=cfg.alpha, init_weights=True, **common)
    raise ConfigError(f"config key 'lora.type': unknown adapter type {cfg.type!r}; use lora, dora, lokr or loha")


def adapter_type(config: Any) -> str:
    """``lora`` / ``dora`` / ``lokr`` / ``loha`` of a PEFT config (``peft_config``'s inverse)."""
    kind = str(getattr(config, "peft_type", "LORA")).rsplit(".", 1)[-1].lower()
    return "dora" if kind == "lora" and getattr(config, "use_dora", False) else kind


def is_adapter_weight(name: str) -> bool:
    """Whether a parameter name is a PEFT adapter weight (of any type in ``ADAPTER_MARKERS``)."""
    return any(m in name for m in ADAPTER_MARKERS)


def add_lora(model: nn.Module, config: Any) -> None:
    """Freeze the base, inject the adapter (any type of ``peft_config``) and keep its weights in float32."""
    model.requires_grad_(False)
    model.add_adapter(config)
    for name, p in model.named_parameters():
        if is_adapter_weight(name):
            p.data = p.data.float()
            p.requires_grad_(True)


def extra_activation_bytes(lora_type: str, tokens: int, in_features: int, out_features: int,
                           compute_bytes: int = 2) -> int:
    """Bytes one adapted linear layer keeps for backward beyond what plain LoRA keeps (PEFT 0.17+).

    Measured with saved-tensor hooks on PEFT's layers (tests/test_adapter_types.py), for a layer
    whose input needs a gradient (every layer after the first adapted one):

    - ``lora``: 0.
    - ``dora``: PEFT's DoRA forward is ``(m/|W'| - 1) * base(x) + m/|W'| * s * B(A(x))``; the
      magnitude's gradient keeps both products, ``2 * tokens * out_features`` values, and the
      weight ``B A`` is built by running the LoRA branch on an ``in x in`` identity, which is kept
      too. The norm of ``W' = W + s B A`` is detached (the DoRA paper's section 4.3), so ``W'`` is transient.
    - ``lokr`` / ``loha``: PEFT builds the update ``dW`` (``out x in``) and runs ``F.linear(x, dW)``,
      which keeps ``dW`` for the input's gradient; it does not grow with ``tokens``.
      Rank-sized tensors (a few KB) are left out.

    Args:
        tokens: tokens through the layer per step (batch x sequence length).
        compute_bytes: bytes per value of the compute dtype (2 for bf16 autocast, 4 for float32).

    Returns:
        Bytes; the memory plan adds this per adapted layer (per checkpointed block when gradient
        checkpointing recomputes one block at a time).
    """
    if lora_type == "lora":
        return 0
    if lora_type == "dora":
        return (2 * tokens * out_features + in_features * in_features) * compute_bytes
    if lora_type in ("lokr", "loha"):
        return in_features * out_features * compute_bytes
    raise ConfigError(f"config key 'lora.type': unknown adapter type {lora_type!r}")


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights with PEFT's names, float32, on the CPU: ``<module>.lora_A.weight`` / ``lora_B``
    (LoRA; DoRA adds ``<module>.lora_magnitude_vector``), ``<module>.lokr_w1`` / ``lokr_w2`` or their
    ``_a``/``_b`` factors (LoKr), ``<module>.hada_w1_a`` ... ``hada_w2_b`` (LoHa)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights saved by ``lora_state_dict`` back (strict: every key must exist)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"adapter checkpoint has keys this model does not: {unexpected[:5]}")


def lora_type_options(cfg: LoraConfig) -> dict[str, Any]:
    """The options of ``cfg.type`` by key (``lora.lokr`` for lokr; none for the other types)."""
    return dataclasses.asdict(cfg.lokr) if cfg.type == "lokr" else {}


# ----------------------------------------------------------------------------- PEFT-layout files of any type


@dataclass
class PeftAdapter:
    """A DoRA / LoKr / LoHa adapter read from a file in PEFT's layout (``read_peft_adapter``).

    Attributes:
        type: ``dora``, ``lokr`` or ``loha``.
        config: its PEFT config (``LoraConfig(use_dora=True)``, ``LoKrConfig``, ``LoHaConfig``).
        state: PEFT state dict with diffusers module names (``<module>.lokr_w1``), float32.
    """

    type: str
    config: Any
    state: dict[str, torch.Tensor]


#: the PEFT config class of each ``peft_type`` a file's metadata may name
_CONFIG_CLASSES = {"LORA": "LoraConfig", "LOKR": "LoKrConfig", "LOHA": "LoHaConfig"}


def _peft_config_dict(path: Path, meta: dict[str, str]) -> dict[str, Any] | None:
    """The PEFT config a file carries: diffusers' ``lora_adapter_metadata`` (keys with or without
    ``transformer.``), else an ``adapter_config.json`` beside it (PEFT's own folder layout)."""
    import json

    raw = meta.get("lora_adapter_metadata")
    if raw:
        data = json.loads(raw)
        return {k.removeprefix("transformer."): v for k, v in data.items()}
    beside = path.with_name("adapter_config.json")
    if beside.is_file():
        data = json.loads(beside.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


def _module_key(key: str) -> str:
    """A state-dict key without the prefix of diffusers' file (``transformer.``) or of PEFT's own
    ``save_pretrained`` (``base_model.model.``)."""
    return key.removeprefix("transformer.").removeprefix("base_model.model.")


def read_peft_adapter(spec: ModelSpec, path: str | Path) -> PeftAdapter | None:
    """The DoRA / LoKr / LoHa adapter of a PEFT-layout safetensors file, or None for anything else.

    PEFT's layout: PEFT state-dict names over diffusers module names, optionally prefixed with
    ``transformer.`` or ``base_model.model.`` (our ``pytorch_lora_weights.safetensors``, a checkpoint's
    ``adapter.safetensors``, PEFT's ``adapter_model.safetensors`` with ``adapter_config.json`` beside
    it), and the PEFT config in the metadata or that json. Plain LoRA files and other layouts
    (ComfyUI, kohya, musubi-tuner's LyCORIS names, diffusion-pipe's ``diffusion_model.`` keys) return
    None: ``hv_tune.export`` reads those.

    Raises:
        HvTuneError: a file recorded for another model family (``hv_tune.export.family``), or a
            config the file's type cannot be built from (naming the file).
    """
    import peft
    from safetensors import safe_open
    from safetensors.torch import load_file

    from hv_tune.export.family import recorded_family

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = dict(f.metadata() or {}), list(f.keys())
    except Exception:  # not readable as safetensors: the export reader names the problem
        return None
    if not any(m in k for k in keys for m in (".lokr_", ".hada_", ".lora_magnitude_vector")):
        return None
    if any(k.startswith(("diffusion_model.", "lora_unet", "lycoris_")) for k in keys):
        return None  # original module names (diffusion-pipe, ComfyUI, musubi-tuner): hv_tune.export reads those
    config = _peft_config_dict(path, meta)
    kind = str((config or {}).get("peft_type", "")).upper()
    if config is None or kind not in _CONFIG_CLASSES:
        return None
    recorded_family(spec, path, meta, [])
    cls = getattr(peft, _CONFIG_CLASSES[kind])
    known = {f.name for f in dataclasses.fields(cls)}
    try:  # a writer may add keys its reader ignores (our 1.5 file adds lora_alpha)
        built = cls(**{k: v for k, v in config.items() if k in known and k != "peft_type"})
    except (TypeError, ValueError) as e:
        raise HvTuneError(f"{path}: its {kind} adapter config cannot be read by PEFT ({e})") from e
    state = {_module_key(k): v.float() for k, v in load_file(str(path)).items()}
    return PeftAdapter(adapter_type(built), built, state)


def fold_peft_adapter(transformer: nn.Module, adapter: PeftAdapter, scale: float, path: str = "") -> None:
    """Add ``scale`` times a LoKr / LoHa adapter's update to ``transformer``'s weights, through PEFT.

    The adapter is injected under a temporary name (``inject_adapter_in_model``), loaded
    (``set_peft_model_state_dict``), merged by PEFT's own layer code at ``scale`` and unwrapped
    again, so the transformer is a plain model afterwards and LoRA adapters loaded later (through
    diffusers) sit on top of it. Merged in the weights' dtype (rounded once in bf16).

    Raises:
        HvTuneError: keys or shapes that do not fit the model (naming the file).
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    name = "hv_tune_fold"
    had_config = hasattr(transformer, "peft_config")
    try:
        inject_adapter_in_model(adapter.config, transformer, adapter_name=name)
        result = set_peft_model_state_dict(transformer, adapter.state, adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as e:
        raise HvTuneError(f"{path}: this {adapter.type} adapter does not fit the model ({e})") from e
    if getattr(result, "unexpected_keys", None):
        raise HvTuneError(f"{path}: keys that fit no layer of the model: {result.unexpected_keys[:5]}")
    for module_name, module in list(transformer.named_modules()):
        if isinstance(module, BaseTunerLayer) and name in getattr(module, "scaling", {}):
            module.set_scale(name, scale)
            module.merge(adapter_names=[name])
            parent_name, _, child = module_name.rpartition(".")
            setattr(transformer.get_submodule(parent_name) if parent_name else transformer, child,
                    module.get_base_layer())
    if not had_config and hasattr(transformer, "peft_config"):
        del transformer.peft_config
    elif isinstance(getattr(transformer, "peft_config", None), dict):
        transformer.peft_config.pop(name, None)
