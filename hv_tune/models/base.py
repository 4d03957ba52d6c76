"""The contract between a base model and the rest of hv-tune.

The trainer, cache, sampling, merge and convert code only talk to a ``ModelSpec``; they never
import a model family's diffusers classes or hard-code its key names, sizes, frame rules or
presets. Adding Wan or LTX-Video means one new folder under ``hv_tune/models/`` implementing
this protocol and one line in ``hv_tune.models.MODEL_SPECS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from hv_tune.dtypes import DTYPES, resolve_dtype  # noqa: F401  (re-exported: the models' dtype names)

#: file name of a LoRA in diffusers' format (what diffusers' loaders look for in a folder)
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class VideoRules:
    """Which clips a model takes: side lengths, frame counts and the frame rate it was trained at.

    Attributes:
        pixel_multiple: height and width are multiples of this (VAE spatial factor x patch size).
        frame_step: frame counts are ``frame_step * k + 1`` (the VAE's temporal factor: the causal
            VAE encodes the first frame alone, then ``frame_step`` frames per latent frame).
        fps: native frame rate; clips are resampled to it before frames are picked.
    """

    pixel_multiple: int
    frame_step: int
    fps: float

    def frames_ok(self, frames: int) -> bool:
        """``frames`` is a count the VAE takes (``frame_step * k + 1``, k >= 0)."""
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def side_ok(self, pixels: int) -> bool:
        """``pixels`` is a positive multiple of ``pixel_multiple``."""
        return pixels > 0 and pixels % self.pixel_multiple == 0

    @property
    def frame_rule(self) -> str:
        """The frame rule as users read it, e.g. ``4k+1``."""
        return f"{self.frame_step}k+1"


@dataclass
class TextEncoder:
    """One tokenizer and encoder of a family's text stack."""

    tokenizer: Any
    model: nn.Module
    #: stored in fp8 while caching when ``model.text_encoder_fp8`` is set (the large LLM; small
    #: encoders stay in the compute dtype)
    fp8: bool = False


class TextEncoders:
    """A family's text stack (facet of ``ModelSpec``): any number of encoders by name (the model folder's
    subfolder), loaded together and freed together. The cache stage places and stores them without
    knowing how many there are; only the family's ``encode_text`` knows what each one gives."""

    def __init__(self, **encoders: TextEncoder):
        self.encoders = dict(encoders)

    def __getitem__(self, name: str) -> TextEncoder:
        return self.encoders[name]

    def __iter__(self):
        return iter(self.encoders.values())

    def __len__(self) -> int:
        return len(self.encoders)


@dataclass(frozen=True)
class TextStack:
    """A family's text stack (facet ``ModelSpec.text``): how its encoders load and what they give.

    Attributes:
        fields: keys of ``encode``'s result: what the cache's text group stores and a batch hands
            ``transformer_inputs``.
        load: ``(LoadOptions) -> TextEncoders``: every tokenizer and encoder of the stack.
        encode: ``(enc, prompts, num_frames) -> {field: [B, ...]}``: prompt embeddings exactly as the
            reference pipeline computes them (``num_frames`` 1 picks an image template where there is one).
        dropped_tokens: ``(enc, prompts, num_frames) -> [int]``: caption tokens ``encode`` cuts off per
            prompt (0 when it fits), counted by the real tokenizer.
    """

    fields: tuple[str, ...]
    load: Callable[[LoadOptions], TextEncoders]
    encode: Callable[[TextEncoders, list[str], int], dict[str, torch.Tensor]]
    dropped_tokens: Callable[[TextEncoders, list[str], int], list[int]]


class PipelineAdapter(Protocol):
    """How hv-tune drives a family's diffusers pipeline (facet ``ModelSpec.pipeline``): sampling, the
    validation previews and the demo ask only this, never the pipeline's class or attributes.

    Attributes:
        sample_input: what a sampling request gives besides the prompt: ``size`` (height and width) or
            ``image`` (the first frame; the pipeline takes the size from it).
    """

    sample_input: str

    def load(self, opts: LoadOptions) -> Any:
        """The pipeline with every component, from a model folder (single-file parts where the family has them)."""
        ...

    def from_parts(self, opts: LoadOptions, transformer: nn.Module, vae: nn.Module) -> Any:
        """A pipeline around already-loaded parts and no text encoders (pass prompt embeddings)."""
        ...

    def preview_embeds(self, enc: TextEncoders, prompt: str, num_frames: int,
                       negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """Prompt embeddings from ``enc`` as keyword arguments of the pipeline's call, unconditional side
        (``negative_prompt``'s where given) included where it needs one (previews run a pipeline without
        text encoders)."""
        ...

    def prompt_embeds(self, pipe: Any, prompt: str, device: torch.device | str,
                      negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """Embeddings exactly as ``pipe`` would compute them (``negative_prompt``'s too, where given), as
        keyword arguments of its call."""
        ...

    def check_guidance(self, where: str, negative_prompt: str | None, cfg_scale: float | None) -> None:
        """A prompt line's negative prompt (``--n``) and classifier-free guidance scale (``--l``) by the
        family's rule. Raises ``ConfigError`` naming ``where`` (``FILE:LINE``) and the fix."""
        ...

    def load_lora(self, pipe: Any, file: str, name: str) -> None:
        """Load a diffusers-format LoRA file (``ModelSpec.save_lora``'s) into ``pipe`` as adapter ``name``."""
        ...

    def set_lora_scales(self, pipe: Any, names: list[str], scales: list[float]) -> None:
        """Activate the adapters ``names`` of ``pipe`` with ``scales``."""
        ...

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float,
                       cfg_scale: float | None = None) -> dict[str, Any]:
        """Keyword arguments of ``pipe``'s call for the size (or first frame) and guidance (``cfg_scale``: a
        prompt line's ``--l``, None when not given); may set its guider."""
        ...


@dataclass(frozen=True)
class Part:
    """Rows of a fused tensor that come from one module (or one tensor) of another layout.

    An original module is the row-wise concatenation of its parts, in order. Most parts
    are a whole module (``chunks == 1``); a part can also be one of ``chunks`` equal row
    blocks of a module (HunyuanVideo's final layer stores shift/scale in the other order).
    The key table names diffusers modules here; merging names base tensors
    (``<module>.weight``) with the same record.
    """

    module: str
    chunk: int = 0
    chunks: int = 1


@dataclass(frozen=True)
class KeyLayout:
    """A family's key names: how its diffusers modules are named in the original checkpoint, in kohya
    files and in ComfyUI, and what tells its LoRAs apart from other families' (facet ``ModelSpec.keys``).

    The functions are the family's name table read in each direction; merge, convert and format
    detection ask only them, so a new family with other names is a new table, not new export code.

    Attributes:
        lora_prefixes: LoRA key prefix per file format: ``diffusers``, ``comfyui`` (original names), ``kohya``.
        own_module_markers: module-name fragments only this family has: a LoRA that reaches one is this
            family's (a file matching ``lookalike_blocks`` without any is another family's).
        lookalike_blocks: family -> (double, single) block counts of families whose module names match these.
        block_patterns: (double, single) regexes whose group 1 is a block index in the module names a parsed
            key holds (what ``lookalike_blocks`` counts).
        original_module: diffusers module -> name in the original checkpoint of the (possibly fused)
            module holding it; None if unknown.
        original_parts: original module -> the diffusers modules it is made of, in row order; None if unknown.
        kohya_module: diffusers module -> the module holding it in the kohya layout (musubi-tuner's network
            names, flattened on writing); where musubi fuses like the original, ``original_module``.
        original_from_flat: kohya form (dots replaced by underscores) -> original (or kohya) module name.
        original_from_comfy: ``(name, form)`` -> original module from a ComfyUI name: ``internal`` (ComfyUI's
            module names), ``flat`` (those with dots as underscores) or ``lora`` (what its LoRA key map reads).
        comfy_name: ``(original, form)`` -> ComfyUI's ``internal`` or ``lora`` name for an original module.
    """

    lora_prefixes: Mapping[str, str]
    own_module_markers: tuple[str, ...]
    lookalike_blocks: Mapping[str, tuple[int, int]]
    block_patterns: tuple[str, str]
    original_module: Callable[[str], str | None]
    original_parts: Callable[[str], tuple[Part, ...] | None]
    kohya_module: Callable[[str], str | None]
    original_from_flat: Callable[[str], str | None]
    original_from_comfy: Callable[..., str | None]
    comfy_name: Callable[..., str]


@dataclass
class LoadOptions:
    """Where a model comes from and in which dtype it is loaded."""

    path: str
    dtype: torch.dtype = torch.float32
    revision: str | None = None
    #: store the LLM text encoder's linear weights in fp8 (computed in ``dtype``) while caching
    text_encoder_fp8: bool = False
    #: the transformer from one original-layout safetensors file instead of ``path``'s folder
    transformer_path: str | None = None
    #: the VAE from one safetensors file instead of ``path``'s folder
    vae_path: str | None = None

    @classmethod
    def from_config(cls, model: Any, dtype: torch.dtype, **kw: Any) -> LoadOptions:
        """Options from the ``model`` config section (``path``, ``revision``, single-file paths)."""
        return cls(model.path, dtype, model.revision, transformer_path=getattr(model, "transformer_path", None) or None,
                   vae_path=getattr(model, "vae_path", None) or None, **kw)


@torch.no_grad()
def vae_posterior(vae: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior of ``pixels`` [B, 3, F, H, W] in [-1, 1] (unscaled, as the VAE gives it), float32."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return {"latent_mean": dist.mean.float(), "latent_logvar": dist.logvar.float()}


def scaled_posterior_sample(
    vae_config: Mapping[str, Any], mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``(mean + exp(logvar / 2) * eps) * scaling_factor``, eps drawn on the CPU (same draws on any device)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
    return (mean + torch.exp(0.5 * logvar) * eps) * float(vae_config["scaling_factor"])


#: the fields of a VAE posterior, what the training target's latents group holds ([C, F', H', W'] float32)
LATENT_FIELDS = ("latent_mean", "latent_logvar")
#: what an item encoder may read (``ItemEncoder.reads``), besides any earlier group's tensors by its name
ITEM_READS = ("caption", "clip", "first_frame")


@dataclass
class EncodeSetup:
    """What an item encoder's ``load`` gets: where models come from and where they run.

    Attributes:
        opts: model folder, dtype, single-file paths, ``text_encoder_fp8``.
        device: where the models run while the cache stage encodes.
        vae_tiling: ``data.vae_tiling`` (encode in tiles).
        vae_slicing: ``data.vae_slicing`` (encode the batch one clip at a time).
        store_fp8: ``(module, keep_patterns)`` stores a frozen module's weights in fp8 (the memory
            layer's, handed in so that models/ does not import it); None: no fp8 storage.
    """

    opts: LoadOptions
    device: str = "cpu"
    vae_tiling: bool = False
    vae_slicing: bool = False
    store_fp8: Callable[[nn.Module, tuple[str, ...]], None] | None = None


@dataclass(frozen=True)
class ItemEncoder:
    """One group of a cache item, as a spec declares it (``ModelSpec.item_encoders``): what it reads,
    which fields it writes, how its models load. The cache stores one file per item (per caption for
    ``role == "text"``) under the group's name, and a batch is the union of an item's groups.

    Attributes:
        name: the group's name: its folder in the cache and its name in progress bars.
        reads: what ``encode`` gets: ``caption`` (with ``frames``, 1 for a still), ``clip`` (pixels
            [3, F, H, W] in [-1, 1] at the bucket size), ``first_frame`` (uint8 [H, W, 3] at the
            bucket size), or an earlier group's name (that group's tensors of the item).
        fields: keys of ``encode``'s result (tensors without a batch dim).
        load: ``(EncodeSetup) -> models`` placed on ``setup.device``; freed after the group is done.
        encode: ``(models, inputs) -> {field: tensor}``; ``inputs`` maps each of ``reads`` to its value.
        role: ``latents`` (the training target: ``LATENT_FIELDS``), ``text`` (one file per caption plus
            the empty prompt's, which caption dropout picks) or ``condition`` (an extra per-item input;
            it stays under caption dropout).
        note: ``(models, inputs) -> str | None``: a line for the cache summary (e.g. a caption cut short).
    """

    name: str
    reads: tuple[str, ...]
    fields: tuple[str, ...]
    load: Callable[[EncodeSetup], Any]
    encode: Callable[[Any, Mapping[str, Any]], dict[str, torch.Tensor]]
    role: str = "condition"
    note: Callable[[Any, Mapping[str, Any]], str | None] | None = None


def condition_fields(spec: Any) -> tuple[str, ...]:
    """Keys of a spec's extra per-item conditioning: the fields of its ``condition`` item encoders (()
    for a text-to-video spec)."""
    return tuple(f for enc in spec.item_encoders if enc.role == "condition" for f in enc.fields)


def latents_group(spec: Any, name: str = "latents") -> ItemEncoder:
    """The training target's group: the item's clip through ``spec.load_vae`` / ``spec.encode_pixels``."""

    def load(setup: EncodeSetup) -> nn.Module:
        vae = spec.load_vae(setup.opts).to(setup.device)
        if setup.vae_tiling:
            vae.enable_tiling()
        if setup.vae_slicing:
            vae.enable_slicing()
        return vae

    def encode(vae: nn.Module, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        post = spec.encode_pixels(vae, inputs["clip"].unsqueeze(0))  # [3, F, H, W] -> [1, 3, F, H, W]
        return {k: post[k][0].cpu() for k in LATENT_FIELDS}

    return ItemEncoder(name, ("clip",), LATENT_FIELDS, load, encode, role="latents")


def text_group(spec: Any, name: str = "text") -> ItemEncoder:
    """The captions' group from the spec's text stack (``spec.text``): its encoders loaded together (the
    fp8-marked ones stored in fp8 when ``text_encoder_fp8`` is set), one file per caption."""
    text = spec.text

    def load(setup: EncodeSetup) -> TextEncoders:
        enc = text.load(setup.opts)
        for encoder in enc:  # however many the family's text stack has
            if setup.store_fp8 is not None and setup.opts.text_encoder_fp8 and encoder.fp8:
                keep = spec.fp8_keep_patterns("text_encoder", encoder.model)
                setup.store_fp8(encoder.model.requires_grad_(False), keep)
            encoder.model.to(setup.device)
        return enc

    def encode(enc: TextEncoders, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = text.encode(enc, [inputs["caption"]], inputs["frames"])
        return {k: v[0].cpu() for k, v in out.items()}

    def note(enc: TextEncoders, inputs: Mapping[str, Any]) -> str | None:
        dropped = text.dropped_tokens(enc, [inputs["caption"]], inputs["frames"])[0]
        return f"{dropped} caption tokens dropped: longer than the text encoder's limit" if dropped else None

    return ItemEncoder(name, ("caption",), tuple(text.fields), load, encode, role="text", note=note)


class ModelSpec(Protocol):
    """What hv-tune needs to know about one base model family, by facet (docs/architecture.md)."""

    # -- identity: how configs and model folders name the family

    name: str
    #: ``_class_name`` in a model folder's ``model_index.json`` (how verbs find the family)
    pipeline_class: str
    #: name of the transformer's folder in a diffusers model folder
    transformer_subfolder: str

    # -- data rules and presets (plain data: config checks and bucketing read them)

    #: side lengths, frame counts and native frame rate of the clips the model takes
    video: VideoRules
    #: LoRA preset name -> regular expressions matched (fullmatch) against module names
    lora_presets: Mapping[str, tuple[str, ...]]
    #: card-size memory preset (``16gb``, ``24gb``, ...) -> ``{"section.key": value}`` it fills in
    memory_presets: Mapping[str, Mapping[str, Any]]

    # -- loading

    def load_transformer(self, opts: LoadOptions) -> nn.Module: ...

    def load_vae(self, opts: LoadOptions) -> nn.Module: ...

    def load_vae_config(self, opts: LoadOptions) -> Mapping[str, Any]:
        """The VAE's config (its ``scaling_factor`` maps posteriors to training latents)."""
        ...

    # -- the cache's groups and training inputs

    #: the text stack: its encoders, what they give (``fields``), how captions are cut short
    text: TextStack
    #: what the cache stores per item, one group each (text, the clip's latents, any conditioning: an
    #: image-to-video spec adds its first-frame condition); a batch is the union of an item's groups
    item_encoders: tuple[ItemEncoder, ...]

    def encode_pixels(self, vae: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """VAE posterior (``latent_mean``, ``latent_logvar``) of pixels in [-1, 1]."""
        ...

    def sample_latents(
        self, vae_config: Mapping[str, Any], mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """A fresh posterior sample, scaled into the transformer's latent space."""
        ...

    def transformer_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, batch: Mapping[str, torch.Tensor],
                           guidance_scale: float = 1.0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments of the transformer's forward for one training batch: ``batch`` is the whole
        batch (every group's fields); floating inputs in ``dtype`` (the text embeddings' when None)."""
        ...

    # -- memory (fp8 storage, block swap, compile)

    def transformer_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The repeated blocks in execution order (what block swap and compile act on)."""
        ...

    def fp8_keep_patterns(self, component: str, module: nn.Module) -> tuple[str, ...]:
        """Module-name regexes (``re.search``) that stay in the compute dtype under fp8 storage.

        Args:
            component: ``"transformer"`` or ``"text_encoder"`` (the LLM).
            module: the loaded component (diffusers models carry their own skip patterns).
        """
        ...

    # -- files the family writes

    def save_lora(self, out_dir: Path, state_dict: dict[str, torch.Tensor], lora_config: Any) -> Path:
        """Write the adapter in diffusers format (with its PEFT config as metadata)."""
        ...

    def build_tiny(self, out_dir: Path, seed: int = 0, small: bool = False) -> Path:
        """Write a tiny random model folder in the real on-disk format (``small``: a larger transformer,
        what bench/train_step.py --size small times)."""
        ...

    def build_full_width(self, out_dir: Path, component: str, max_shard_size: str = "10GB") -> nn.Module:
        """A random-weight ``transformer`` (the released width, one block of each kind, bf16) or full-size
        ``vae`` saved in ``out_dir/<component>`` with a ``model_index.json`` (the benches' models); returns it."""
        ...

    def reference_transformer(self, file: str, model_folder: str, dtype: torch.dtype) -> nn.Module | None:
        """The transformer of an original-layout file through an independent converter (diffusers'), to check
        our key table against; None when the family has none."""
        ...

    # -- pipelines (sampling, validation previews, the demo)

    #: the family's pipeline adapter: loading, LoRA loading, call arguments, what a request gives
    pipeline: PipelineAdapter

    # -- key names (merge, convert): the original checkpoint's layout and LoRA file prefixes

    #: the family's key-name table (original / kohya / ComfyUI names, fused parts, prefixes, look-alikes)
    keys: KeyLayout
    #: other registered families whose LoRAs fit this model as they are (same layers and sizes, e.g.
    #: text-to-video and image-to-video variants); a LoRA recorded for any other family is refused
    lora_compatible: tuple[str, ...]

    def linear_shapes(self, model_path: str | None) -> dict[str, tuple[int, int]]:
        """``(out_features, in_features)`` of every linear layer of the transformer, built on
        the meta device from ``model_path``'s config (the full-size default when None)."""
        ...

    # -- memory planning (hv_tune.training.plan)

    #: why a training step cannot run on the meta device (a forward whose control flow reads tensor
    #: values), or None when it can: then ``plan`` and ``memory.preset: auto`` are unavailable
    meta_step_unavailable: str | None

    def plan_model(
        self, model_path: str | None, frames: int, height: int, width: int, batch_size: int, dtype: torch.dtype
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The transformer on the meta device (from ``model_path``'s config; full size when None)
        in ``dtype``, and its training inputs for a batch of ``frames x height x width`` pixels,
        also on meta (no weights read, no memory used): what the memory plan runs."""
        ...
