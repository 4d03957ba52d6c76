""""Will it fit?": predicted peak GPU memory of a training config, per memory preset.

Nothing is loaded: the transformer is built on the meta device from its config
(``ModelSpec.plan_model``) and one training step runs there (``hv_tune.memory.estimate``).
A prediction adds up, for one batch of the largest bucket:

- base weights on the GPU by storage dtype (fp8 layers as ``fp8_layer_names`` picks them);
  with block swap, the swapped blocks' frozen weights are in CPU memory except two blocks
  in flight (the one running and the one being prefetched);
- the LoRA: float32 parameters, gradients and the two AdamW states (16 bytes a parameter),
  plus autocast's cached low-precision copy of each weight;
- the step's peak of activations (``profile_step``: saved tensors or checkpointed block
  inputs, the recomputed block, gradients in flight, temporaries), with activation offload
  applied; with fp8 storage, the compute-dtype copies of one block's weights that the
  checkpoint recompute keeps until that block's backward;
- a margin for what PyTorch's tensors do not show: ``WORKSPACE_BYTES`` (CUDA context,
  cuBLAS / cuDNN workspaces) plus ``FRAGMENTATION`` of the rest (the caching allocator
  reserves more than it hands out). Both are estimates (docs/memory.md).

The step runs with two blocks of each block list, then one more, and is extrapolated to all blocks
(``profile_step_extrapolated``: exact for identical blocks, ~10x faster for the released models).

The "allocated" figure is the prediction of ``torch.cuda.max_memory_allocated``; "total"
adds the margin and is what must fit the card.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hv_tune.config import Config
from hv_tune.data.buckets import resolution_buckets
from hv_tune.data.cache import INDEX_FILE, read_index
from hv_tune.data.disk import cache_disk, item_bytes
from hv_tune.data.sources import scan_sources
from hv_tune.errors import ConfigError, HubUnreachable, HvTuneError
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.memory.estimate import StepProfile, profile_step_extrapolated
from hv_tune.memory.fp8 import FP8, fp8_layer_names
from hv_tune.memory.known import KnownValues
from hv_tune.memory.swap import swap_indices
from hv_tune.models.base import ModelSpec, condition_fields, resolve_dtype

GiB = 1024**3
#: CUDA context, cuBLAS and cuDNN workspaces: memory the card loses outside PyTorch's tensors
WORKSPACE_BYTES = int(1.0 * GiB)
#: caching-allocator slack: reserved beyond allocated, as a fraction of the allocated peak
FRAGMENTATION = 0.10
#: bytes per trainable parameter: float32 value + gradient + AdamW exp_avg + exp_avg_sq
LORA_BYTES_PER_PARAM = 16


@dataclass
class Prediction:
    """Predicted GPU memory of one training config (bytes)."""

    label: str
    base_dtype: str
    blocks_to_swap: int
    checkpointing: str  # "none", "full" or "offload"
    weights: dict[str, int]  # storage dtype -> bytes on the GPU (frozen base weights)
    weights_cpu: int  # frozen weights of swapped blocks, in pinned CPU memory
    lora: int  # LoRA parameters + gradients + optimizer states (+ autocast copies)
    activations: int  # the step's peak beyond the weights (inputs, activations, checkpoints)
    offloaded: int  # bytes activation offload moves to CPU memory per step
    fp8_copies: int  # compute-dtype copies of one block's fp8 weights during its backward

    @property
    def allocated(self) -> int:
        """Predicted ``torch.cuda.max_memory_allocated``."""
        return sum(self.weights.values()) + self.lora + self.activations + self.fp8_copies

    @property
    def margin(self) -> int:
        return WORKSPACE_BYTES + int(FRAGMENTATION * self.allocated)

    @property
    def total(self) -> int:
        """What the card must hold: allocated + margin."""
        return self.allocated + self.margin


@dataclass
class MemoryPlan:
    """Predictions for one bucket: the config as given and each memory preset."""

    bucket: tuple[int, int, int]  # frames, height, width
    bucket_source: str
    rows: list[Prediction]
    card: int | None = None  # card memory in bytes, None = unknown (no GPU)
    recommended: str | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, label: str) -> Prediction:
        return next(r for r in self.rows if r.label == label)


# ----------------------------------------------------------------------------- buckets


def largest_bucket(cfg: Config, spec: ModelSpec) -> tuple[tuple[int, int, int], str]:
    """(frames, height, width) of the bucket with the most tokens, and where it came from.

    The cache's index when ``data.cache_dir`` holds one (what training will really see), else
    over every source (``hv_tune.data.sources.bucket_settings``: its own resolution and frame
    buckets, the ``data`` keys where it sets none) every frame count with every aspect bucket.
    """
    from hv_tune.data.sources import bucket_settings

    index = Path(cfg.data.cache_dir) / INDEX_FILE
    if index.is_file():
        entries = read_index(cfg.data.cache_dir)
        if entries:
            top = max(entries, key=lambda e: _tokens(spec, e.bucket))
            return top.bucket, f"cache {index}" + (f", source {top.source}" if top.source else "")
    multiple = spec.video.pixel_multiple
    buckets = [(f, h, w) for res, frames in bucket_settings(cfg.data)
               for f in frames for h, w in resolution_buckets(res, multiple)]
    where = f" of every source ({', '.join(s.path for s in cfg.data.sources)})" if cfg.data.sources else " (data.*)"
    return max(buckets, key=lambda b: _tokens(spec, b)), f"frame_buckets x resolution{where}"


def _tokens(spec: ModelSpec, bucket: tuple[int, int, int]) -> int:
    f, h, w = bucket
    return ((f - 1) // spec.video.frame_step + 1) * h * w


# ----------------------------------------------------------------------------- prediction


def activation_dtype(cfg: Config, device: str) -> torch.dtype:
    """The dtype activations are computed in: the autocast dtype, else the model dtype."""
    mp = cfg.training.mixed_precision
    if mp == "auto":
        mp = "bf16" if device == "cuda" else "no"
    if mp in ("bf16", "fp16"):
        return torch.bfloat16 if mp == "bf16" else torch.float16
    return resolve_dtype(cfg.model.base_dtype, device)


class Planner:
    """Builds the meta model once per (model, bucket) and predicts configs that share them.

    Args:
        spec: the model family.
        cfg: any of the configs to predict (model path, LoRA, batch size, bucket come from it).
        bucket: (frames, height, width) in pixels.
        device: ``cuda`` (the prediction for a GPU) or ``cpu`` (float32, no autocast: tests).
    """

    def __init__(self, spec: ModelSpec, cfg: Config, bucket: tuple[int, int, int], device: str = "cuda") -> None:
        self.spec, self.bucket, self.device = spec, bucket, device
        self.dtype = activation_dtype(cfg, device)
        # the inputs' constants (masks, image embeddings) stay known where the forward reads them
        self.known = KnownValues()
        try:
            with self.known, _item_fields(spec) as self.item_fields:
                model, self.inputs = spec.plan_model(cfg.model.path, *bucket, cfg.training.batch_size, self.dtype)
        except HubUnreachable as e:
            raise PlanUnavailable(str(e)) from e
        except (OSError, ValueError) as e:
            raise PlanUnavailable(f"config key 'model.path': cannot read the transformer config: {e}") from e
        names = [n for n, _ in model.named_modules()]
        add_lora(model, peft_config(cfg.lora, resolve_targets(spec, model, cfg.lora.targets), names))
        self.model = model.train()
        self._profiles: dict[str, StepProfile] = {}
        # CUDA autocast to the activation dtype (mixed precision); none in float32 or on the CPU
        self.autocast = self.dtype if device == "cuda" and self.dtype != torch.float32 else None

    def profile(self, checkpointing: str) -> StepProfile:
        """The step's bytes with checkpointing ``none`` / ``full`` / ``offload`` (cached)."""
        if checkpointing not in self._profiles:
            if checkpointing == "none":
                self.model.disable_gradient_checkpointing()
            else:
                self.model.enable_gradient_checkpointing()
            with self.known:
                self._profiles[checkpointing] = profile_step_extrapolated(
                    self.model, self.spec.transformer_blocks(self.model), self.inputs,
                    offload=checkpointing == "offload", autocast=self.autocast)
        return self._profiles[checkpointing]

    def predict(self, label: str, cfg: Config) -> Prediction:
        """Predicted GPU memory of ``cfg`` (its memory settings, base dtype, checkpointing)."""
        mode = cfg.memory.checkpointing if cfg.training.gradient_checkpointing else "none"
        step = self.profile(mode)
        blocks = self.spec.transformer_blocks(self.model)
        swap = min(cfg.memory.blocks_to_swap, len(blocks))
        fp8 = cfg.model.base_dtype == "fp8"
        storage, base = self._storage_dtypes(fp8), self._base_dtype(cfg)
        swapped = [[p for p in blocks[i].parameters() if not p.requires_grad] for i in swap_indices(len(blocks), swap)]
        off = {id(p) for params in swapped for p in params}
        resident = [p for p in self.model.parameters() if not p.requires_grad and id(p) not in off]
        weights = _bytes_by_dtype(resident, storage, base)
        # two swapped blocks are on the GPU at a time: the running one and the prefetched one
        for params in sorted(swapped, key=lambda ps: sum(_bytes_by_dtype(ps, storage, base).values()))[-2:]:
            for k, v in _bytes_by_dtype(params, storage, base).items():
                weights[k] = weights.get(k, 0) + v
        weights_cpu = sum(sum(_bytes_by_dtype(ps, storage, base).values()) for ps in swapped)
        lora = sum(p.numel() for p in lora_parameters(self.model))
        per_param = LORA_BYTES_PER_PARAM + (self.autocast.itemsize if self.autocast else 0)  # + autocast's cached copy
        copies = max(self._fp8_bytes(b, storage) for b in blocks) // _itemsize(FP8) * self.dtype.itemsize if fp8 else 0
        return Prediction(
            label=label, base_dtype=cfg.model.base_dtype, blocks_to_swap=swap, checkpointing=mode, weights=weights,
            weights_cpu=weights_cpu, lora=lora * per_param,
            activations=step.inputs + step.peak, offloaded=step.saved if mode == "offload" else 0, fp8_copies=copies,
        )

    def _base_dtype(self, cfg: Config) -> torch.dtype:
        return resolve_dtype(cfg.model.base_dtype, self.device)

    def _storage_dtypes(self, fp8: bool) -> dict[int, torch.dtype]:
        """id(parameter) -> fp8 for the parameters of layers fp8 storage casts."""
        if not fp8:
            return {}
        layers = dict(self.model.named_modules())
        names = fp8_layer_names(self.model, self.spec.fp8_keep_patterns("transformer", self.model))
        return {id(p): FP8 for n in names for p in layers[n].parameters()}

    def _fp8_bytes(self, block: torch.nn.Module, storage: Mapping[int, torch.dtype]) -> int:
        return sum(p.numel() * _itemsize(FP8) for p in block.parameters() if id(p) in storage)


def _bytes_by_dtype(params: Sequence[torch.Tensor], storage: Mapping[int, torch.dtype], base: torch.dtype) -> dict[str, int]:
    """Bytes of ``params`` per storage dtype name (fp8 where ``storage`` says, else ``base``)."""
    out: dict[str, int] = {}
    for p in params:
        dtype = storage.get(id(p), base)
        out[_dtype_name(dtype)] = out.get(_dtype_name(dtype), 0) + p.numel() * _itemsize(dtype)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", FP8: "fp8"}.get(dtype, str(dtype))


@contextlib.contextmanager
def _item_fields(spec: ModelSpec):
    """The latent and the text / condition fields ``spec.plan_model`` hands ``transformer_inputs``
    (what the cache stores per item, batch dim included), collected while the block runs."""
    fields: dict[str, torch.Tensor] = {}
    inner = spec.transformer_inputs

    def spy(noisy: torch.Tensor, sigma: torch.Tensor, batch: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any):
        fields.update(batch, latent=noisy)
        return inner(noisy, sigma, batch, *args, **kwargs)

    spec.transformer_inputs = spy  # this instance only, for this block
    try:
        yield fields
    finally:
        del spec.transformer_inputs


def caching_lines(spec: ModelSpec, cfg: Config, bucket: tuple[int, int, int], fields: Mapping[str, torch.Tensor],
                  device: str) -> list[str]:
    """The cache stage's side of the plan: the encoders' peak GPU memory and the cache's disk size."""
    lines = encoder_lines(spec, cfg, device)
    if "latent" not in fields:
        return lines
    cond_names = set(condition_fields(spec))
    per = {k: (tuple(v.shape[1:]), 4 if k in cond_names else v.element_size()) for k, v in fields.items() if k != "latent"}
    sizes = item_bytes(tuple(fields["latent"].shape[1:]), {k: v for k, v in per.items() if k not in cond_names},
                       {k: v for k, v in per.items() if k in cond_names})
    items = None
    if cfg.data.sources:
        try:
            items = len(scan_sources(cfg.data).items)
        except (OSError, HvTuneError) as e:
            lines.append(f"cache on disk: the sources cannot be counted ({e})")
    return lines + cache_disk(bucket, sizes, items, cfg.data.cache_dir).lines()


def family_facts(spec: ModelSpec) -> Any:
    """The family's ``plan`` module (``models/<family>/plan.py``: published configs, encoder sizes), or None."""
    try:
        return importlib.import_module(type(spec).__module__.rsplit(".", 1)[0] + ".plan")
    except ImportError:
        return None


def encoder_lines(spec: ModelSpec, cfg: Config, device: str) -> list[str]:
    """Peak GPU memory of the cache stage's encoders (loaded one at a time), from the family's facts."""
    encoders = getattr(family_facts(spec), "CACHE_ENCODERS", {}).get(spec.name)
    if not encoders:
        return []
    fp8 = cfg.model.text_encoder_dtype == "fp8"
    itemsize = resolve_dtype(cfg.model.base_dtype, device).itemsize  # as the cache stage loads them
    sizes = {name: (params - embed) * (1 if fp8 and can_fp8 else itemsize) + embed * itemsize
             for name, params, embed, can_fp8 in encoders}
    top = max(sizes, key=sizes.__getitem__)
    listed = ", ".join(f"{n} {_gib(b)}" for n, b in sizes.items())
    return [f"caching: encoders load one at a time; peak {_gib(sizes[top] + WORKSPACE_BYTES)} GiB with {top} "
            f"(weights GiB: {listed}; + {_gib(WORKSPACE_BYTES)} workspace)"
            + ("; model.text_encoder_dtype: fp8 halves the largest" if not fp8 and any(e[3] for e in encoders) else "")]


# ----------------------------------------------------------------------------- the plan


def build_plan(
    spec: ModelSpec, given: Config, presets: Mapping[str, Config], card: int | None, device: str = "cuda"
) -> MemoryPlan:
    """Predict ``given`` (unless its preset is ``auto``) and each preset's config; recommend one.

    Args:
        presets: preset name -> the same config loaded with ``memory.preset=<name>``,
            fastest last (the order of the spec's ``memory_presets``).
        card: the GPU's memory in bytes, or None when unknown.
    """
    bucket, source = largest_bucket(given, spec)
    planner = Planner(spec, given, bucket, device)
    rows = [] if given.memory.preset == "auto" else [planner.predict("as given", given)]
    rows += [planner.predict(name, cfg) for name, cfg in presets.items()]
    plan = MemoryPlan(bucket, source, rows, card)
    plan.recommended = choose_preset([r for r in rows if r.label in presets], card)
    plan.notes += caching_lines(spec, given, bucket, planner.item_fields, device)
    return plan


def choose_preset(rows: Sequence[Prediction], card: int | None) -> str | None:
    """The fastest preset whose total fits ``card`` (rows are ordered slowest first)."""
    if card is None:
        return None
    fitting = [r.label for r in rows if r.total <= card]
    return fitting[-1] if fitting else None


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a text table (GiB), with the bucket, card and recommendation."""
    f, h, w = plan.bucket
    lines = [f"memory plan for the largest bucket {f}x{h}x{w} (frames x height x width; from {plan.bucket_source}),",
             "predicted on the meta device (GiB; allocated = max_memory_allocated, total adds the margin):"]
    head = ("config", "base", "swap", "ckpt", "weights GPU", "LoRA+opt", "activations", "margin", "allocated", "total")
    rows = [head]
    for r in plan.rows:
        weights = " + ".join(f"{_gib(v)} {k}" for k, v in sorted(r.weights.items()) if v)
        rows.append((r.label, r.base_dtype, str(r.blocks_to_swap), r.checkpointing, weights or "0", _gib(r.lora),
                     _gib(r.activations + r.fp8_copies), _gib(r.margin), _gib(r.allocated), _gib(r.total)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(wd) for c, wd in zip(row, widths)) for row in rows]
    if plan.card is None:
        lines.append("card memory unknown (no CUDA device): pass --gpu-memory 24GB or set memory.gpu_memory")
    else:
        pick = plan.recommended or "none fits: lower data.resolution or data.frame_buckets"
        lines.append(f"card: {_gib(plan.card)} GiB; recommended memory.preset: {pick}")
    return "\n".join(lines + plan.notes)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def parse_memory(text: str | int | float, where: str = "card memory") -> int:
    """Card memory in bytes from ``16GB`` / ``16GiB`` / ``16`` (GB and GiB both mean 2**30:
    a "24 GB" card reports 23.99 GiB) or ``16000MB``."""
    t = str(text).strip().upper().replace(" ", "")
    for unit, factor in (("GIB", GiB), ("GB", GiB), ("MIB", 1024**2), ("MB", 1024**2), ("G", GiB)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], factor
            break
    else:
        scale = GiB
    try:
        value = float(t)
    except ValueError:
        raise ConfigError(f"{where} {text!r}: use a size like 16GB or 24GiB") from None
    if value <= 0:
        raise ConfigError(f"{where} {text!r} must be positive")
    return int(value * scale)


def detect_card() -> int | None:
    """Total memory of CUDA device 0, or None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


# ----------------------------------------------------------------------------- entry points


class PlanUnavailable(ConfigError):
    """No plan: the transformer's config cannot be read (e.g. a hub id while offline), or the
    family's training step cannot run on the meta device (``ModelSpec.meta_step_unavailable``)."""


def plan_config(
    path: str | Path | None, overrides: Sequence[str] = (), gpu_memory: str | None = None, device: str = "cuda"
) -> tuple[MemoryPlan, Config]:
    """Load a config (and its variants with each memory preset) and predict them.

    Card memory: ``gpu_memory`` (the ``--gpu-memory`` option), else ``memory.gpu_memory``,
    else the memory of CUDA device 0, else unknown.
    """
    from hv_tune.config import load_config
    from hv_tune.models import get_spec

    given = load_config(path, list(overrides), need_weights=False)
    spec = get_spec(given.model.name)
    if spec.meta_step_unavailable:
        raise PlanUnavailable(f"{spec.meta_step_unavailable}; choose memory.preset "
                              f"({', '.join(spec.memory_presets)}) or set the memory keys")
    presets = {n: load_config(path, [*overrides, f"memory.preset={n}"], need_weights=False)
               for n in spec.memory_presets}
    if gpu_memory:
        card = parse_memory(gpu_memory, "--gpu-memory")
    elif given.memory.gpu_memory:
        card = parse_memory(given.memory.gpu_memory, "config key 'memory.gpu_memory'")
    else:
        card = detect_card()
    return build_plan(spec, given, presets, card, device), given


def config_for_training(
    path: str | Path | None, overrides: Sequence[str] = (), gpu_memory: str | None = None, device: str | None = None
) -> tuple[Config, str]:
    """The config to train with and the plan's text, checked before any weight is loaded.

    ``memory.preset: auto`` becomes the recommended preset (settings as given when the card
    is unknown). Raises ``ConfigError`` with the plan when no preset fits, or when the
    config as given is predicted to allocate more than the card holds (a clear miss: the
    margin is not even counted).

    Without CUDA (``device`` ``cpu``; None = this machine) training runs on the CPU: ``auto``
    picks no GPU preset (``none``) and a GPU preset that is set is applied with a warning (fp8
    storage and pinned offload make a CPU step about 8x slower, docs/memory.md).
    """
    from hv_tune.config import load_config

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_config(path, list(overrides))  # every check training needs (weights reachable) before the plan
    try:
        plan, given = plan_config(path, overrides, gpu_memory)
    except PlanUnavailable as e:
        cfg = load_config(path, list(overrides))
        preset = cfg.memory.preset
        if preset == "auto":  # nothing to choose from: train with the keys as given
            cfg = load_config(path, [*overrides, "memory.preset=none"])
        tail = ("\nmemory.preset auto: no plan, so no preset; the memory keys are as given" if preset == "auto"
                else f"\nmemory.preset {preset}: applied as set (not checked against the card)" if preset != "none" else "")
        return cfg, f"memory plan skipped: {e}{tail}" + _cpu_warning(cfg, device)
    text = format_plan(plan)
    if given.memory.preset == "auto":
        if device == "cpu":
            return (load_config(path, [*overrides, "memory.preset=none"]),
                    text + "\nmemory.preset auto: no CUDA device, training runs on the CPU: no GPU preset (none)")
        if plan.card is None:
            return load_config(path, [*overrides, "memory.preset=none"]), text + "\nmemory.preset auto: card unknown, settings as given"
        if plan.recommended is None:
            raise ConfigError(f"{text}\nconfig key 'memory.preset': auto, but no preset is predicted to fit "
                              f"{_gib(plan.card)} GiB; lower data.resolution or data.frame_buckets")
        chosen = load_config(path, [*overrides, f"memory.preset={plan.recommended}"])
        return chosen, text + f"\nmemory.preset auto -> {plan.recommended}"
    row = plan.row("as given")
    if plan.card is not None and row.allocated > plan.card:
        fix = f"memory.preset={plan.recommended}" if plan.recommended else "a lower data.resolution or data.frame_buckets"
        raise ConfigError(f"{text}\nthis config is predicted to allocate {_gib(row.allocated)} GiB, more than the "
                          f"card's {_gib(plan.card)} GiB: training would run out of memory; use {fix}")
    return given, text + _cpu_warning(given, device)


def _cpu_warning(cfg: Config, device: str) -> str:
    """A warning line when a GPU memory preset is set but training runs on the CPU."""
    if device != "cpu" or cfg.memory.preset in ("none", "auto"):
        return ""
    return (f"\nwarning: config key 'memory.preset' is {cfg.memory.preset}, a GPU preset, but there is no CUDA device: "
            "on the CPU its fp8 storage and pinned offload make a step about 8x slower; set memory.preset=none")
