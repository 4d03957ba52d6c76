"""HunyuanVideo (diffusers layout) as a ``ModelSpec``.

Text encoding (``hunyuan_video.text``) mirrors ``HunyuanVideoPipeline.encode_prompt``
(docs/hunyuan_video.md); module names of the original checkpoint are in ``hunyuan_video.keys``,
LoRA and memory presets in ``hunyuan_video.presets``. diffusers imports are local so that
importing the registry stays cheap (config checks run before any of this).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hv_tune.diffusion import guidance_tensor, timesteps_from_sigmas
from hv_tune.io import sort_safetensors_metadata
from hv_tune.models.base import (
    LORA_FILE,
    ItemEncoder,
    KeyLayout,
    LoadOptions,
    TextEncoder,
    TextEncoders,
    VideoRules,
    scaled_posterior_sample,
    vae_posterior,
)
from hv_tune.models.hunyuan_video import keys as hv_keys
from hv_tune.models.hunyuan_video import presets
from hv_tune.models.hunyuan_video import text as hv_text
from hv_tune.models.hunyuan_video.plan import PUBLISHED
from hv_tune.models.published import transformer_config

#: key prefixes single-file checkpoints carry (ComfyUI's saved models, Tencent's VAE in a checkpoint)
SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.")


def load_single_file(cls: Any, opts: LoadOptions, subfolder: str, path: str, rename: Any) -> nn.Module:
    """A component built from the model folder's config, with the weights of one safetensors file.

    diffusers' ``HunyuanVideoTransformer3DModel.from_single_file`` splits a single block's
    ``linear1`` at the full model's width (3072, hard-coded) and the VAE has no single-file
    loader, so the file is read here: ``rename(state, expected_shapes)`` maps its names to
    diffusers' (the spec's key table), then ``load_state_dict(strict=True)`` checks every tensor.

    Raises:
        HvTuneError: naming the file for a missing file, or keys/shapes that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hv_tune.errors import HvTuneError

    if not Path(path).is_file():
        raise HvTuneError(f"model.{subfolder}_path: {path} does not exist")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError) as e:
        raise HvTuneError(f"model.{subfolder}_path: {path} is not a readable safetensors file ({e})") from e
    state = {}
    for key, tensor in raw.items():
        prefix = next((p for p in SINGLE_FILE_PREFIXES if key.startswith(p)), "")
        state[key[len(prefix):]] = tensor.to(opts.dtype) if tensor.is_floating_point() else tensor
    config = cls.load_config(opts.path, subfolder=subfolder, revision=opts.revision)
    with torch.device("meta"):
        model = cls.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(rename(state, shapes), strict=True, assign=True)
    except RuntimeError as e:
        raise HvTuneError(f"model.{subfolder}_path: {path} does not fit the {subfolder} config of "
                          f"{opts.path}:\n{str(e)[:2000]}") from e
    return model.to(opts.dtype).eval()


class HunyuanVideoSpec:
    """HunyuanVideo T2V: transformer, 3D causal VAE, Llama + CLIP-L text encoders."""

    name = "hunyuan-video"
    lora_presets: Mapping[str, tuple[str, ...]] = presets.LORA_PRESETS
    vae_scale_factor_temporal = 4
    vae_scale_factor_spatial = 8
    #: sides: 8x VAE x patch 2; frames 4k+1; trained at 24 fps (docs/hunyuan_video.md)
    video = VideoRules(pixel_multiple=vae_scale_factor_spatial * 2, frame_step=vae_scale_factor_temporal, fps=24.0)
    memory_presets: Mapping[str, Mapping[str, Any]] = presets.PRESETS
    lora_compatible: tuple[str, ...] = ()
    text_fields = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")
    pipeline_class = "HunyuanVideoPipeline"
    meta_step_unavailable: str | None = None
    #: per-item conditioning the cache stores besides latents and text: none (text-to-video)
    item_encoders: tuple[ItemEncoder, ...] = ()
    #: key names: original / kohya / ComfyUI tables, fused parts, prefixes, look-alikes
    keys: KeyLayout = hv_keys.LAYOUT
    transformer_subfolder = "transformer"

    # ------------------------------------------------------------------ loading

    def load_transformer(self, opts: LoadOptions) -> nn.Module:
        """From the model folder, or from ``opts.transformer_path`` (one file, Tencent's names)."""
        from diffusers import HunyuanVideoTransformer3DModel

        if opts.transformer_path:
            return load_single_file(HunyuanVideoTransformer3DModel, opts, "transformer", opts.transformer_path,
                                    self._original_to_diffusers)
        return HunyuanVideoTransformer3DModel.from_pretrained(
            opts.path, subfolder="transformer", dtype=opts.dtype, revision=opts.revision
        )

    def load_vae(self, opts: LoadOptions) -> nn.Module:
        """From the model folder, or from ``opts.vae_path`` (Tencent's VAE file: diffusers' names)."""
        from diffusers import AutoencoderKLHunyuanVideo

        if opts.vae_path:
            # diffusers' conversion script renames no VAE key: Tencent's file loads as it is
            return load_single_file(AutoencoderKLHunyuanVideo, opts, "vae", opts.vae_path, lambda s, _: s)
        return AutoencoderKLHunyuanVideo.from_pretrained(
            opts.path, subfolder="vae", dtype=opts.dtype, revision=opts.revision
        )

    def _original_to_diffusers(self, state: dict[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
                               ) -> dict[str, torch.Tensor]:
        """An original-layout transformer state dict in diffusers' names (the key table, split by rows)."""
        out: dict[str, torch.Tensor] = {}
        chunks: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for key, tensor in state.items():
            module, _, suffix = key.rpartition(".")
            parts = hv_keys.original_parts(module)
            if parts is None:
                out[key] = tensor  # reported by load_state_dict as unexpected
                continue
            rows = [shapes.get(f"{p.module}.{suffix}", (0,))[0] // p.chunks for p in parts]
            if sum(rows) != tensor.shape[0]:
                out[key] = tensor  # a size mismatch: load_state_dict names it
                continue
            for p, piece in zip(parts, tensor.split(rows)):  # [sum(rows), ...] -> [rows_i, ...]
                chunks.setdefault(f"{p.module}.{suffix}", []).append((p.chunk, piece))
        for name, pieces in chunks.items():
            out[name] = torch.cat([t for _, t in sorted(pieces, key=lambda x: x[0])])
        return out

    def load_vae_config(self, opts: LoadOptions) -> Mapping[str, Any]:
        from diffusers import AutoencoderKLHunyuanVideo

        return dict(AutoencoderKLHunyuanVideo.load_config(opts.path, subfolder="vae", revision=opts.revision))

    def load_text_encoders(self, opts: LoadOptions) -> TextEncoders:
        # AutoTokenizer keeps tokenizer.json's byte-level BPE (Llama 3, as Tencent's code loads it);
        # the hub's model_index.json says LlamaTokenizerFast, which transformers 5 rebuilds as a
        # Metaspace tokenizer (docs/decisions.md, tokenizers).
        from transformers import AutoTokenizer, CLIPTextModel, LlamaModel

        kw = {"revision": opts.revision}
        return TextEncoders(
            text_encoder=TextEncoder(
                AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer", **kw),
                LlamaModel.from_pretrained(opts.path, subfolder="text_encoder", dtype=opts.dtype, **kw), fp8=True),
            text_encoder_2=TextEncoder(
                AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer_2", **kw),
                CLIPTextModel.from_pretrained(opts.path, subfolder="text_encoder_2", dtype=opts.dtype, **kw)),
        )

    # ------------------------------------------------------------------ encoding

    def encode_text(self, enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
        """LLM hidden states + mask (video or image template) and CLIP pooled output (``text.encode_prompts``)."""
        return hv_text.encode_prompts(enc, prompts, num_frames)

    def dropped_text_tokens(self, enc: TextEncoders, prompts: list[str], num_frames: int) -> list[int]:
        """Caption tokens ``encode_text`` cuts off per prompt (``text.dropped_tokens``)."""
        return hv_text.dropped_tokens(enc, prompts, num_frames)

    def encode_pixels(self, vae: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior of ``pixels`` [B, 3, F, H, W] in [-1, 1] (unscaled, as the VAE gives it)."""
        return vae_posterior(vae, pixels)

    def sample_latents(
        self, vae_config: Mapping[str, Any], mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """``(mean + exp(logvar / 2) * eps) * scaling_factor``, eps drawn on the CPU."""
        return scaled_posterior_sample(vae_config, mean, logvar, generator)

    def transformer_inputs(
        self, noisy: torch.Tensor, sigma: torch.Tensor, text: Mapping[str, torch.Tensor], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        """Inputs as ``HunyuanVideoPipeline`` builds them (mask and guidance in the model dtype)."""
        dtype = text["prompt_embeds"].dtype
        b = noisy.shape[0]
        return {
            "hidden_states": noisy.to(dtype),
            "timestep": timesteps_from_sigmas(sigma).to(noisy.device, torch.float32),
            "encoder_hidden_states": text["prompt_embeds"],
            "encoder_attention_mask": text["prompt_attention_mask"].to(dtype),
            "pooled_projections": text["pooled_prompt_embeds"],
            "guidance": guidance_tensor(guidance_scale, b).to(noisy.device, dtype),
            "return_dict": False,
        }

    # ------------------------------------------------------------------ memory

    def transformer_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """20 double-stream then 40 single-stream blocks (13B), the order the forward runs them."""
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def fp8_keep_patterns(self, component: str, module: nn.Module) -> tuple[str, ...]:
        """What stays bf16 under fp8 storage.

        Transformer: diffusers' defaults (norms, patch/pos embeddings, the final
        ``proj_out``), the model's ``_skip_layerwise_casting_patterns`` (``x_embedder``,
        ``context_embedder`` = token refiner, ``norm``, which also keeps the adaLN
        modulation linears ``norm1.linear`` / ``norm.linear``) and the timestep, guidance
        and pooled-text embedders. Text encoder (Llama): the token embedding and norms.
        """
        if component == "text_encoder":
            return ("embed_tokens", "norm")
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        own = tuple(getattr(module, "_skip_layerwise_casting_patterns", None) or ())
        return (*DEFAULT_SKIP_MODULES_PATTERN, *own, "time_text_embed")

    # ------------------------------------------------------------------ LoRA

    def save_lora(self, out_dir: Path, state_dict: dict[str, torch.Tensor], lora_config: Any) -> Path:
        """``pytorch_lora_weights.safetensors`` via diffusers, with the adapter metadata."""
        from diffusers import HunyuanVideoPipeline

        # PEFT keeps target_modules as a set: sort it so the file is byte-identical across runs
        metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in lora_config.to_dict().items()}
        HunyuanVideoPipeline.save_lora_weights(
            save_directory=str(out_dir),
            transformer_lora_layers=state_dict,
            transformer_lora_adapter_metadata=metadata,
        )
        path = Path(out_dir) / LORA_FILE
        sort_safetensors_metadata(path)  # same training -> same bytes (exact resume is checked byte for byte)
        return path

    def build_tiny(self, out_dir: Path, seed: int = 0, small: bool = False) -> Path:
        from hv_tune.models.hunyuan_video.tiny import build_tiny_hunyuan_video

        return build_tiny_hunyuan_video(Path(out_dir), seed=seed, small=small)


    # ------------------------------------------------------------------ pipelines

    def load_pipeline(self, opts: LoadOptions) -> Any:
        """``HunyuanVideoPipeline`` of the folder, with the single-file components of ``opts`` and
        the Llama tokenizer loaded as ``load_text_encoders`` does.

        The class the hub's ``model_index.json`` names would crop the template wrongly under
        transformers 5 (docs/decisions.md, tokenizers).
        """
        from diffusers import HunyuanVideoPipeline
        from transformers import AutoTokenizer

        parts = {"tokenizer": AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer", revision=opts.revision)}
        if opts.transformer_path:
            parts["transformer"] = self.load_transformer(opts)
        if opts.vae_path:
            parts["vae"] = self.load_vae(opts)
        return HunyuanVideoPipeline.from_pretrained(opts.path, dtype=opts.dtype, revision=opts.revision, **parts)

    def pipeline_from(self, opts: LoadOptions, transformer: nn.Module, vae: nn.Module) -> Any:
        """``HunyuanVideoPipeline`` around loaded parts, without text encoders (pass embeddings)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            opts.path, subfolder="scheduler", revision=opts.revision
        )
        return HunyuanVideoPipeline(
            transformer=transformer,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            scheduler=scheduler,
        )

    def preview_embeds(self, enc: TextEncoders, prompt: str, num_frames: int) -> dict[str, torch.Tensor]:
        """``encode_text``'s fields are already ``HunyuanVideoPipeline.__call__``'s argument names."""
        return self.encode_text(enc, [prompt], num_frames)

    def pipeline_prompt_embeds(self, pipe: Any, prompt: str, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The pipeline's own prompt encoding, as keyword arguments of its ``__call__``."""
        embeds, pooled, mask = pipe.encode_prompt(prompt=prompt, device=device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}

    #: what a sampling request gives besides the prompt: the output ``size`` (text-to-video)
    sample_input = "size"

    def load_lora_adapter(self, pipe: Any, file: str, name: str) -> None:
        """A diffusers-format LoRA file into ``pipe`` through its LoRA loader (alpha read from the metadata)."""
        pipe.load_lora_weights(file, adapter_name=name)

    def set_lora_scales(self, pipe: Any, names: list[str], scales: list[float]) -> None:
        """Activate the named adapters with these strengths."""
        pipe.set_adapters(names, scales)

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float) -> dict[str, Any]:
        """The pipeline call's size and guidance arguments (v1: embedded guidance as ``guidance_scale``)."""
        return {"height": height, "width": width, "guidance_scale": guidance}

    # ------------------------------------------------------------------ shapes

    def linear_shapes(self, model_path: str | None) -> dict[str, tuple[int, int]]:
        """Linear layer shapes from the config alone (meta device: no weights, no memory).

        ``model_path=None`` gives the full 13B architecture (diffusers' default config).
        """
        from diffusers import HunyuanVideoTransformer3DModel

        config = transformer_config(HunyuanVideoTransformer3DModel, model_path, self.transformer_subfolder, PUBLISHED)
        with torch.device("meta"):
            model = HunyuanVideoTransformer3DModel.from_config(config)
        return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    # ------------------------------------------------------------------ memory planning

    def plan_model(
        self, model_path: str | None, frames: int, height: int, width: int, batch_size: int, dtype: torch.dtype
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """Meta transformer + inputs: latents [B, C, (F-1)/4+1, H/8, W/8], 256 text tokens (all valid)."""
        from diffusers import HunyuanVideoTransformer3DModel

        config = transformer_config(HunyuanVideoTransformer3DModel, model_path, self.transformer_subfolder, PUBLISHED)
        with torch.device("meta"):
            model = HunyuanVideoTransformer3DModel.from_config(config).to(dtype)
        c = model.config
        latent = (batch_size, c.in_channels, (frames - 1) // self.vae_scale_factor_temporal + 1,
                  height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        text = {"prompt_embeds": torch.empty(batch_size, hv_text.LLM_MAX_TOKENS, c.text_embed_dim, dtype=dtype, device="meta"),
                "prompt_attention_mask": torch.ones(batch_size, hv_text.LLM_MAX_TOKENS, dtype=torch.int64, device="meta"),
                "pooled_prompt_embeds": torch.empty(batch_size, c.pooled_projection_dim, dtype=dtype, device="meta")}
        noisy = torch.empty(latent, dtype=torch.float32, device="meta")
        return model, self.transformer_inputs(noisy, torch.full((batch_size,), 0.5, device="meta"), text, 1.0)
