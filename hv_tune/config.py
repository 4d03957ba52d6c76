"""Typed configuration: nested dataclasses, YAML loading, dot-path overrides, validation.

Every field is defined once here with its type, default and a one-line doc (the
``doc`` metadata). ``validate`` runs all cross-field checks and never loads a model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hv_tune.errors import ConfigError
from hv_tune.models import DEFAULT_MODEL, ModelSpec, get_spec, memory_preset, spec_for
from hv_tune.paths import check_folder, check_model_path, expand_path
from hv_tune.typed_config import apply_override, from_dict, read_yaml_mapping
from hv_tune.typed_config import doc_field as _f


@dataclass
class ModelConfig:
    name: str = _f(DEFAULT_MODEL, "Model spec (a key of hv_tune.models.MODEL_SPECS); unset = from path's model_index.json.")
    path: str = _f("", "Local diffusers-format model folder, or a hub id (needs network).")
    revision: str | None = _f(None, "Hub revision when `path` is a hub id.")
    transformer_path: str | None = _f(
        None, "Transformer from one .safetensors with Tencent's names (ComfyUI's file, `merge --format original`); "
        "configs still come from `path`."
    )
    vae_path: str | None = _f(None, "VAE from one .safetensors (Tencent's / ComfyUI's VAE file); config from `path`.")
    base_dtype: Literal["auto", "fp32", "bf16", "fp16", "fp8"] = _f(
        "auto", "Dtype of the frozen base weights; auto = bf16 on GPU, fp32 on CPU; fp8 = float8 storage, bf16 compute."
    )
    text_encoder_dtype: Literal["auto", "fp8"] = _f(
        "auto", "LLM text encoder while caching: auto = as the other parts; fp8 = float8 weights, computed upcast."
    )


@dataclass
class LokrOptions:
    """LoKr's own options (PEFT ``LoKrConfig``); defaults as LyCORIS and musubi-tuner's LoKr."""

    factor: int = _f(-1, "Kronecker factor of each dimension: -1 = the most square split (LyCORIS's default), "
                         "or a positive divisor (e.g. 8, 16; a factor that does not divide falls back to -1's rule).")
    decompose_both: bool = _f(False, "Also split the small Kronecker factor w1 into rank-r factors (w1_a, w1_b); "
                                     "the large one (w2) is split whenever lora.rank < half its larger side.")


@dataclass
class LoraConfig:
    type: Literal["lora", "dora", "lokr", "loha"] = _f(
        "lora", "Adapter type: lora, dora (LoRA + per-row magnitude), lokr (Kronecker product), "
        "loha (Hadamard product of two low-rank pairs); all PEFT classes."
    )
    rank: int = _f(32, "Rank r (LoRA/DoRA: of B A; LoKr: of the split factors; LoHa: of each of its two pairs).")
    alpha: float = _f(32.0, "Alpha; the update is scaled by alpha / rank (every type).")
    dropout: float = _f(0.0, "Dropout on the LoRA input during training (lora and dora only).")
    targets: Union[str, list[str]] = _f(  # noqa: UP007 (typing.get_type_hints needs Union here)
        "attn", "Preset `attn` | `all-linear`, or a list of module-name globs (fnmatch)."
    )
    lokr: LokrOptions = _f(LokrOptions(), "LoKr's options (only with type: lokr).")


@dataclass
class SourceConfig:
    """One dataset input; unset (null) settings fall back to the same key under `data`."""

    path: str = _f("", "Folder of media + .txt captions, curation manifest.jsonl, musubi .jsonl or dataset .toml, "
                       "or .csv.")
    type: Literal["auto", "folder", "manifest", "jsonl", "csv", "musubi_toml"] = _f(
        "auto", "Source kind; auto = by path (a .toml file is a musubi-tuner dataset config, docs/data.md)."
    )
    repeats: int = _f(1, "How many times each item of this source appears per epoch.")
    resolution: int | None = _f(None, "Override of data.resolution (e.g. 256 px video beside 1024 px stills).")
    frame_buckets: list[int] | None = _f(None, "Override of data.frame_buckets.")
    frame_bucket_choice: Literal["longest", "every"] | None = _f(None, "Override of data.frame_bucket_choice.")
    fps: float | None = _f(None, "Override of data.fps.")
    allow_upscale: bool | None = _f(None, "Override of data.allow_upscale.")
    frame_extraction: Literal["head", "uniform", "chunks"] | None = _f(None, "Override of data.frame_extraction.")
    frame_samples: int | None = _f(None, "Override of data.frame_samples.")
    trigger_word: str | None = _f(None, "Override of data.trigger_word.")
    caption_lines: Literal["join", "split"] | None = _f(None, "Override of data.caption_lines.")
    caption_dropout: float | None = _f(None, "Override of data.caption_dropout.")
    missing_caption: Literal["error", "empty", "filename"] | None = _f(None, "Override of data.missing_caption.")


@dataclass
class DataConfig:
    cache_dir: str = _f("", "Folder of cached latents and text embeddings (empty = OUTPUT_DIR/cache).")
    sources: list[SourceConfig] = _f([], "Dataset inputs (see SourceConfig); needed to (re)build the cache.")
    frame_buckets: list[int] = _f([1, 33], "Frame counts of the buckets; each must be 4k+1 (1 = images).")
    resolution: int = _f(512, "Target side length in pixels (area = resolution^2); multiple of 16 (the model's).")
    allow_upscale: bool = _f(False, "Upscale sources smaller than their bucket (else they get a smaller bucket).")
    frame_bucket_choice: Literal["longest", "every"] = _f(
        "longest", "Frame buckets a clip fills: longest (its windows of the longest one) or every (windows of "
        "each, 1 included, as musubi-tuner's target_frames)."
    )
    fps: float | None = _f(None, "Frame rate clips are resampled to before frames are picked; null = the model's (24).")
    frame_extraction: Literal["head", "uniform", "chunks"] = _f("head", "Windows per clip: head (first), "
                                                                "uniform (frame_samples spread out), chunks (consecutive).")
    frame_samples: int = _f(1, "Windows per clip for frame_extraction=uniform.")
    trigger_word: str = _f("", "Starts every caption once as `trigger, caption`; replaces `[trigger]` (empty = none).")
    caption_lines: Literal["join", "split"] = _f(
        "join", "A caption file or field with several lines: join (one caption, as musubi-tuner and "
        "diffusion-pipe read it) or split (one alternative caption per line, one drawn per epoch)."
    )
    caption_dropout: float = _f(0.0, "Probability of training an item on the empty prompt.")
    missing_caption: Literal["error", "empty", "filename"] = _f(
        "error", "Item without caption: error (skip and report), empty prompt, or the file name."
    )
    vae_tiling: bool = _f(False, "Encode with VAE tiling (large frames, less memory).")
    vae_slicing: bool = _f(False, "Encode batch items one at a time in the VAE.")
    num_workers: int = _f(0, "DataLoader workers reading the cache.")


@dataclass
class ObjectiveConfig:
    timestep_sampling: Literal["uniform", "logit_normal"] = _f("logit_normal", "How training sigmas are drawn.")
    logit_mean: float = _f(0.0, "Mean of the normal before the sigmoid (logit_normal).")
    logit_std: float = _f(1.0, "Std of the normal before the sigmoid (logit_normal).")
    shift: float = _f(1.0, "Sigma shift s: sigma' = s*sigma / (1 + (s-1)*sigma). 1.0 = none.")
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap", "logit_normal", "mode"] = _f(
        "none", "Per-sample loss weight as a function of sigma (SD3 schemes)."
    )
    mode_scale: float = _f(1.29, "Scale of the `mode` weighting (SD3 default).")


@dataclass
class TrainingConfig:
    max_steps: int = _f(1000, "Optimizer steps to train.")
    learning_rate: float = _f(1e-4, "Peak learning rate; left out (or null) with prodigy: 1.0 (a multiplier of its "
                                    "own estimate, as its README recommends).")
    seed: int = _f(42, "Seed for data order, noise, sigmas and LoRA init.")
    checkpoint_every: int = _f(250, "Save a resumable checkpoint every N steps (0 = never).")
    checkpoints_to_keep: int = _f(3, "Keep only the last N checkpoints.")
    guidance_scale: float = _f(1.0, "Embedded guidance; the transformer gets guidance_scale * 1000.")
    batch_size: int = _f(1, "Items per batch per process (one bucket per batch).")
    gradient_accumulation_steps: int = _f(1, "Batches accumulated per optimizer step.")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0 = no clipping).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _f(
        "auto", "Autocast precision; auto = bf16 on GPU, no on CPU."
    )
    gradient_checkpointing: bool = _f(True, "Recompute transformer block activations in backward.")
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor", "came", "adamw_schedulefree"] = _f(
        "adamw", "adamw (torch), adamw8bit (bitsandbytes, CUDA), prodigy (prodigyopt), adafactor (transformers), "
        "came (pytorch-optimizer), adamw_schedulefree (schedulefree); see README (Optimizers)."
    )
    optimizer_args: dict[str, Any] = _f(
        {}, "Extra keyword arguments of the optimizer, over its guide's defaults (prodigy: use_bias_correction and "
        "safeguard_warmup true; adafactor: relative_step, scale_parameter and warmup_init false)."
    )
    weight_decay: float = _f(1e-4, "Weight decay (decoupled, AdamW style, where the optimizer offers it).")
    adam_beta1: float = _f(0.9, "beta1 of adamw, adamw8bit, prodigy, came and adamw_schedulefree.")
    adam_beta2: float = _f(0.999, "beta2 of adamw, adamw8bit, prodigy, came and adamw_schedulefree.")
    adam_epsilon: float = _f(1e-8, "epsilon of adamw, adamw8bit, prodigy and adamw_schedulefree.")
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = _f("constant", "diffusers' get_scheduler schedule over max_steps (warmup from 0: see lr_warmup_steps).")
    lr_warmup_steps: int = _f(0, "Linear warmup steps from 0 to learning_rate (not with constant: use "
                                 "constant_with_warmup).")
    lr_num_cycles: int = _f(1, "Hard restarts of cosine_with_restarts.")
    lr_power: float = _f(1.0, "Power of the polynomial decay (1 = linear), to diffusers' lr_end 1e-7.")
    report_to: Literal["tensorboard", "wandb", "all"] = _f(
        "tensorboard", "Trackers (Accelerate's): tensorboard (OUTPUT_DIR/logs), wandb (offline unless WANDB_MODE "
        "is set; pip install wandb), or all."
    )
    log_every: int = _f(1, "Log loss, lr and grad norm to the trackers every N steps.")


@dataclass
class ValidationConfig:
    every: int = _f(0, "Render previews and measure the eval loss every N steps (0 = off).")
    prompts: Union[str, list[str]] = _f(  # noqa: UP007 (typing.get_type_hints needs Union here)
        [], "Preview prompts (videos in OUTPUT_DIR/samples/step_N/ and on TensorBoard), or a prompt file in "
        "musubi-tuner's syntax, one prompt per line with its own --w --h --f --d --s --g --fs --i (README)."
    )
    images: list[str] = _f(
        [], "Image-to-video models: the first frame of each preview, one image per prompt (the output size "
        "then comes from the image and the model's target_size; height/width are not used)."
    )
    frames: int = _f(33, "Frames of each preview (4k+1; 1 = an image).")
    height: int = _f(320, "Preview height in pixels (multiple of 16).")
    width: int = _f(512, "Preview width in pixels (multiple of 16).")
    steps: int = _f(30, "Sampling steps per preview.")
    shift: float = _f(7.0, "Flow shift of the preview sampler.")
    guidance: float = _f(6.0, "Embedded guidance scale of the previews.")
    seed: int = _f(0, "Noise seed of the previews (the same at every validation, so they compare).")
    vae_tiling: bool = _f(True, "Decode previews in tiles (less GPU memory).")
    eval_cache_dir: str = _f("", "Held-out cache for the eval loss; empty = training items (not held out).")
    eval_items: int = _f(8, "Items of that cache in the eval loss (0 = no eval loss).")
    eval_quantiles: list[float] = _f(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "Quantiles of the training sigma distribution at which the eval loss is measured.",
    )
    eval_seed: int = _f(0, "Seed of the eval noise and latent samples (fixed, so runs compare).")


@dataclass
class SaveConfig:
    formats: list[Literal["diffusers", "comfyui", "kohya", "comfyui-internal"]] = _f(
        ["diffusers", "comfyui"],
        "Final LoRA files: diffusers (always), comfyui (lora_comfyui.safetensors), kohya (lora_kohya.safetensors), "
        "comfyui-internal (lora_comfyui_internal.safetensors).",
    )


@dataclass
class MemoryConfig:
    """How the transformer fits the card (docs/memory.md); `preset` fills the keys left unset."""

    preset: Literal["none", "auto", "12gb", "16gb", "24gb", "48gb", "80gb"] = _f(
        "none", "Card-size preset: sets model.base_dtype and memory.* keys that the config leaves out; "
        "auto = the fastest preset predicted to fit the card (finetune.py plan)."
    )
    gpu_memory: str | None = _f(
        None, "Card memory for the fit check and preset auto, e.g. 24GB; null = detect (CUDA device 0)."
    )
    blocks_to_swap: int = _f(0, "Transformer blocks (the last N run) kept in pinned CPU memory, streamed to the GPU.")
    checkpointing: Literal["full", "offload"] = _f(
        "full", "Checkpointed block inputs: full = kept on the GPU; offload = moved to pinned CPU memory."
    )
    compile: bool = _f(False, "torch.compile each transformer block (not with fp8 or block swap).")


@dataclass
class Config:
    output_dir: str = _f("runs/hv-lora", "Where the LoRA, checkpoints, logs and the resolved config go.")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), need_weights: bool = True) -> Config:
    """Load a YAML config, apply ``a.b=value`` overrides, and validate.

    ``need_weights=False`` (``plan``, which reads only the transformer's config): a hub id in
    ``model.path`` need not be in the hub cache under ``HF_HUB_OFFLINE``.

    Raises:
        ConfigError: on unreadable YAML, unknown keys, wrong types or bad values.
    """
    raw: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    model = raw.get("model")
    if isinstance(model, dict) and not model.get("name") and isinstance(model.get("path"), str):
        model["name"] = spec_for(None, expand_path(model["path"], "model.path")).name  # model_index.json
    expand_memory_preset(raw)
    _default_learning_rate(raw)
    cfg = from_dict(Config, raw, prefix="")
    expand_paths(cfg)
    if not cfg.data.cache_dir:
        cfg.data.cache_dir = str(Path(cfg.output_dir) / "cache")
    if cfg.data.fps is None:
        cfg.data.fps = get_spec(cfg.model.name).video.fps
    validate(cfg, need_weights)
    return cfg


def expand_memory_preset(raw: dict[str, Any]) -> list[str]:
    """Fill the keys of ``raw['memory']['preset']`` (the model spec's settings) that ``raw`` leaves
    out, in place. Unknown preset names are left for the type check. Returns the keys filled in."""
    memory, model = raw.get("memory"), raw.get("model")
    if not isinstance(memory, dict) or not isinstance(memory.get("preset"), str):
        return []
    name = model.get("name", DEFAULT_MODEL) if isinstance(model, dict) else DEFAULT_MODEL
    filled = []
    for key, value in memory_preset(str(name), memory["preset"]).items():
        section, leaf = key.split(".")
        node = raw.setdefault(section, {})
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
            filled.append(key)
    return filled


def _default_learning_rate(raw: dict[str, Any]) -> None:
    """An unset (or null) ``training.learning_rate`` becomes the optimizer's default, in place."""
    from hv_tune.optimizers import default_learning_rate

    t = raw.get("training")
    if isinstance(t, dict) and t.get("learning_rate") is None and isinstance(t.get("optimizer", "adamw"), str):
        t["learning_rate"] = default_learning_rate(t.get("optimizer", "adamw"))


def expand_paths(cfg: Config) -> None:
    """Resolve ``~`` and environment variables in every path key, once, at load time."""
    cfg.output_dir = expand_path(cfg.output_dir, "output_dir")
    cfg.model.path = expand_path(cfg.model.path, "model.path")
    cfg.model.transformer_path = expand_path(cfg.model.transformer_path, "model.transformer_path")
    cfg.model.vae_path = expand_path(cfg.model.vae_path, "model.vae_path")
    cfg.data.cache_dir = expand_path(cfg.data.cache_dir, "data.cache_dir")
    cfg.validation.eval_cache_dir = expand_path(cfg.validation.eval_cache_dir, "validation.eval_cache_dir")
    cfg.validation.images = [expand_path(p, f"validation.images[{i}]") for i, p in enumerate(cfg.validation.images)]
    if isinstance(cfg.validation.prompts, str):
        cfg.validation.prompts = expand_path(cfg.validation.prompts, "validation.prompts")
    for i, src in enumerate(cfg.data.sources):
        src.path = expand_path(src.path, f"data.sources[{i}].path")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (what ``save_config`` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from hv_tune.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- validation


def validate(cfg: Config, need_weights: bool = True) -> None:
    """All value and cross-field checks. Runs before any model is loaded.

    Raises:
        ConfigError: naming the first bad key and what to do.
    """
    m, lo, d, o, t = cfg.model, cfg.lora, cfg.data, cfg.objective, cfg.training
    spec = get_spec(m.name)
    checks: list[tuple[bool, str, str]] = [
        (bool(m.path), "model.path", "is required: a diffusers-format model folder or a hub id"),
        (lo.rank >= 1, "lora.rank", f"must be >= 1 (got {lo.rank})"),
        (lo.alpha > 0, "lora.alpha", f"must be > 0 (got {lo.alpha})"),
        (0.0 <= lo.dropout < 1.0, "lora.dropout", f"must be in [0, 1) (got {lo.dropout})"),
        (not isinstance(lo.targets, list) or len(lo.targets) > 0, "lora.targets", "must not be an empty list"),
        (bool(d.frame_buckets), "data.frame_buckets", "must list at least one frame count"),
        (spec.video.side_ok(d.resolution), "data.resolution", f"must be a positive multiple of {spec.video.pixel_multiple} (got {d.resolution})"),
        (d.num_workers >= 0, "data.num_workers", f"must be >= 0 (got {d.num_workers})"),
        (d.fps is None or d.fps > 0, "data.fps", f"must be > 0 (got {d.fps})"),
        (d.frame_samples >= 1, "data.frame_samples", f"must be >= 1 (got {d.frame_samples})"),
        (0.0 <= d.caption_dropout < 1.0, "data.caption_dropout", f"must be in [0, 1) (got {d.caption_dropout})"),
        (o.logit_std > 0, "objective.logit_std", f"must be > 0 (got {o.logit_std})"),
        (o.shift > 0, "objective.shift", f"must be > 0 (got {o.shift})"),
        (t.max_steps >= 1, "training.max_steps", f"must be >= 1 (got {t.max_steps})"),
        (t.learning_rate > 0, "training.learning_rate", f"must be > 0 (got {t.learning_rate})"),
        (t.checkpoint_every >= 0, "training.checkpoint_every", f"must be >= 0 (got {t.checkpoint_every})"),
        (t.checkpoints_to_keep >= 1, "training.checkpoints_to_keep", f"must be >= 1 (got {t.checkpoints_to_keep})"),
        (t.guidance_scale >= 0, "training.guidance_scale", f"must be >= 0 (got {t.guidance_scale})"),
        (t.batch_size >= 1, "training.batch_size", f"must be >= 1 (got {t.batch_size})"),
        (t.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps", "must be >= 1"),
        (t.max_grad_norm >= 0, "training.max_grad_norm", f"must be >= 0 (got {t.max_grad_norm})"),
        (t.lr_warmup_steps >= 0, "training.lr_warmup_steps", f"must be >= 0 (got {t.lr_warmup_steps})"),
        (t.log_every >= 1, "training.log_every", f"must be >= 1 (got {t.log_every})"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")
    _check_frame_buckets("data.frame_buckets", d.frame_buckets, spec)
    _validate_lora(lo)
    _validate_sources(d.sources)
    _validate_source_settings(cfg, spec)
    _validate_memory(cfg)
    for key, value in (("model.transformer_path", m.transformer_path), ("model.vae_path", m.vae_path)):
        if value and not Path(value).is_file():
            raise ConfigError(f"config key {key!r}: file {value!r} does not exist; give a .safetensors file or leave it unset")
    check_model_path(m.path, "config key 'model.path'", m.revision, offline_cache=need_weights)
    spec_for(m.name, m.path)  # a folder of another family is refused here, not at the first step
    check_folder(cfg.output_dir, "output_dir")
    check_folder(d.cache_dir, "data.cache_dir")
    if isinstance(lo.targets, str) and lo.targets not in spec.lora_presets:
        raise ConfigError(f"config key 'lora.targets': unknown preset {lo.targets!r}; use one of "
                          f"{', '.join(spec.lora_presets)} or a list of module-name globs")
    _validate_optimizer(t)
    _validate_validation_and_save(cfg, spec)


def _validate_lora(lo: LoraConfig) -> None:
    """Type options that do not fit ``lora.type``."""
    k = lo.lokr
    checks: list[tuple[bool, str, str]] = [
        (k.factor == -1 or k.factor >= 1, "lora.lokr.factor", f"must be -1 (most square split) or >= 1 (got {k.factor})"),
        (lo.type == "lokr" or k == LokrOptions(), "lora.lokr",
         f"is set but lora.type is {lo.type!r}: set lora.type=lokr or remove the lora.lokr options"),
        (lo.type in ("lora", "dora") or lo.dropout == 0, "lora.dropout",
         f"must be 0 with lora.type={lo.type} (PEFT's LoKr/LoHa layers have no input dropout)"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")


def _validate_sources(sources: list[SourceConfig]) -> None:
    for i, src in enumerate(sources):
        key = f"data.sources[{i}]"
        if not src.path:
            raise ConfigError(f"config key '{key}.path' is required")
        if not Path(src.path).expanduser().exists():
            raise ConfigError(f"config key '{key}.path': {src.path!r} does not exist")
        if src.repeats < 1:
            raise ConfigError(f"config key '{key}.repeats' must be >= 1 (got {src.repeats})")
        if src.caption_dropout is not None and not 0.0 <= src.caption_dropout < 1.0:
            raise ConfigError(f"config key '{key}.caption_dropout' must be in [0, 1)")
        if src.frame_samples is not None and src.frame_samples < 1:
            raise ConfigError(f"config key '{key}.frame_samples' must be >= 1")


def _check_frame_buckets(key: str, buckets: list[int], spec: ModelSpec) -> None:
    for i, n in enumerate(buckets):
        if not spec.video.frames_ok(n):
            k = spec.video.frame_step
            raise ConfigError(f"config key '{key}[{i}]' must be a {spec.video.frame_rule} frame count "
                              f"(1, {k + 1}, ..., {8 * k + 1}, {16 * k + 1}); got {n}")


#: settings a musubi-tuner .toml gives for each of its datasets (its defaults included): not also in the YAML entry
TOML_OWNED = ("repeats", "resolution", "frame_buckets", "frame_bucket_choice", "allow_upscale", "frame_extraction",
              "frame_samples")


def _validate_source_settings(cfg: Config, spec: ModelSpec) -> None:
    """Per-source resolution, frame buckets and fps; a musubi .toml source's datasets are read and checked."""
    from hv_tune.musubi_toml import is_musubi_toml, read_musubi_toml

    for i, src in enumerate(cfg.data.sources):
        own = [(f"data.sources[{i}]", dataclasses.asdict(src))]
        if is_musubi_toml(src.path, src.type):
            both = [k for k in TOML_OWNED if getattr(src, k) != getattr(SourceConfig(), k)]
            if both:
                raise ConfigError(f"config key 'data.sources[{i}].{both[0]}': {src.path} is a musubi-tuner dataset "
                                  "config, which sets it for each of its datasets; set it in the .toml instead")
            own = [(f"{src.path} [[datasets]] #{d.index}", d.settings)
                   for d in read_musubi_toml(src.path, cfg.training.batch_size)]
        for key, s in own:
            res, frames, fps = s.get("resolution"), s.get("frame_buckets"), s.get("fps")
            if res is not None and not spec.video.side_ok(res):
                raise ConfigError(f"config key '{key}.resolution' must be a positive multiple of "
                                  f"{spec.video.pixel_multiple} (got {res})")
            if frames is not None:
                if not frames:
                    raise ConfigError(f"config key '{key}.frame_buckets' must list at least one frame count")
                _check_frame_buckets(f"{key}.frame_buckets", frames, spec)
            if fps is not None and fps <= 0:
                raise ConfigError(f"config key '{key}.fps' must be > 0 (got {fps})")


def _validate_validation_and_save(cfg: Config, spec: ModelSpec) -> None:
    v, formats, rules = cfg.validation, cfg.save.formats, spec.video
    px = f"must be a positive multiple of {rules.pixel_multiple}"
    checks: list[tuple[bool, str, str]] = [
        (v.every >= 0, "validation.every", f"must be >= 0 (got {v.every})"),
        (rules.frames_ok(v.frames), "validation.frames", f"must be {rules.frame_rule} (got {v.frames})"),
        (rules.side_ok(v.height), "validation.height", f"{px} (got {v.height})"),
        (rules.side_ok(v.width), "validation.width", f"{px} (got {v.width})"),
        (v.steps >= 1, "validation.steps", f"must be >= 1 (got {v.steps})"),
        (v.shift > 0, "validation.shift", f"must be > 0 (got {v.shift})"),
        (v.eval_items >= 0, "validation.eval_items", f"must be >= 0 (got {v.eval_items})"),
        (all(0 < q < 1 for q in v.eval_quantiles), "validation.eval_quantiles", "must lie strictly between 0 and 1"),
        (v.every == 0 or bool(v.prompts) or (v.eval_items > 0 and bool(v.eval_quantiles)), "validation.every",
         "is set but there is nothing to validate: give validation.prompts or validation.eval_items > 0"),
        (not v.eval_cache_dir or v.every == 0 or Path(v.eval_cache_dir).is_dir(), "validation.eval_cache_dir",
         f"folder {v.eval_cache_dir!r} does not exist (make it with the cache verb on held-out clips)"),
        (isinstance(v.prompts, str) or not v.images or len(v.images) == len(v.prompts), "validation.images",
         f"must give one image per prompt ({len(v.images)} images, {len(v.prompts)} prompts)"),
        ("diffusers" in formats, "save.formats", f"must include diffusers, the native format (got {formats})"),
        (len(set(formats)) == len(formats), "save.formats", f"lists a format twice ({formats})"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")
    if isinstance(v.prompts, str):
        _validate_prompt_file(v, spec)


def _validate_prompt_file(v: ValidationConfig, spec: ModelSpec) -> None:
    """``validation.prompts`` as a file: readable, every line good and of a size the model takes."""
    from hv_tune.prompts import check_line_shape, read_prompt_file

    if v.images:
        raise ConfigError("config key 'validation.images': with a prompt file as validation.prompts, give each "
                          "line's first frame with --i IMAGE instead")
    if not Path(v.prompts).is_file():
        raise ConfigError(f"config key 'validation.prompts': prompt file {v.prompts!r} does not exist")
    for line in read_prompt_file(v.prompts):
        def pick(mine: int | None, default: int) -> int:
            return default if mine is None else mine

        check_line_shape(spec, line, pick(line.frames, v.frames), pick(line.height, v.height), pick(line.width, v.width))


def _validate_memory(cfg: Config) -> None:
    """Combinations of memory settings we do not support (device checks run in hv_tune.memory)."""
    mem, ckpt = cfg.memory, cfg.training.gradient_checkpointing
    checks: list[tuple[bool, str, str]] = [
        (mem.blocks_to_swap >= 0, "memory.blocks_to_swap", f"must be >= 0 (got {mem.blocks_to_swap})"),
        (mem.blocks_to_swap == 0 or ckpt, "memory.blocks_to_swap",
         "needs training.gradient_checkpointing=true (a swapped block's weights leave the GPU after its forward)"),
        (mem.checkpointing == "full" or ckpt, "memory.checkpointing",
         "offload needs training.gradient_checkpointing=true (without it every activation would be copied)"),
        (not mem.compile or mem.blocks_to_swap == 0, "memory.compile",
         "does not work with memory.blocks_to_swap (the swap hooks use CUDA streams that compile cannot trace)"),
        (not mem.compile or cfg.model.base_dtype != "fp8", "memory.compile",
         "does not work with model.base_dtype=fp8 (per-layer weight casts break the compiled graphs)"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")


def _validate_optimizer(t: TrainingConfig) -> None:
    """Optimizer, schedule and tracker keys: values, combinations, installed packages."""
    from hv_tune.optimizers import FLAT_SCHEDULERS, check_optimizer_args

    checks: list[tuple[bool, str, str]] = [
        (t.lr_num_cycles >= 1, "training.lr_num_cycles", f"must be >= 1 (got {t.lr_num_cycles})"),
        (t.lr_power > 0, "training.lr_power", f"must be > 0 (got {t.lr_power})"),
        (t.lr_scheduler != "constant" or t.lr_warmup_steps == 0, "training.lr_warmup_steps",
         f"is {t.lr_warmup_steps}, but training.lr_scheduler 'constant' (diffusers') has no warmup: set "
         "training.lr_scheduler=constant_with_warmup (warmup from 0 to learning_rate) or lr_warmup_steps=0"),
        (t.lr_scheduler != "polynomial" or t.learning_rate > 1e-7, "training.learning_rate",
         "must be above 1e-7 for the polynomial schedule (it decays to diffusers' lr_end 1e-7)"),
        (t.optimizer != "adamw_schedulefree" or t.lr_scheduler in FLAT_SCHEDULERS, "training.lr_scheduler",
         f"is {t.lr_scheduler!r}, but adamw_schedulefree replaces the decay by its own averaging: use constant or "
         "constant_with_warmup (or optimizer_args.warmup_steps)"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")
    if t.optimizer == "adamw8bit":
        _check_bitsandbytes()
    else:
        check_optimizer_args(t)
    if t.report_to in ("wandb", "all"):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"config key 'training.report_to': {t.report_to} needs the wandb package, which is not "
                              "installed; install it with `pip install -e .[wandb]` (or `pip install wandb`), or set "
                              "training.report_to=tensorboard")


def _check_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("config key 'training.optimizer': adamw8bit needs bitsandbytes and a CUDA GPU; "
                          "install it with `pip install -e .[gpu]` or set training.optimizer=adamw")
