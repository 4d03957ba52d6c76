"""HunyuanVideo (diffusers layout) as a ``ModelSpec``.

Text encoding (``hunyuan_video.text``) mirrors ``HunyuanVideoPipeline.encode_prompt``
(docs/hunyuan_video.md); module names of the original checkpoint are in ``hunyuan_video.keys``,
LoRA and memory presets in ``hunyuan_video.presets``. diffusers imports are local so that
importing the registry stays cheap (config checks run before any of this).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
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
    PipelineAdapter,
    TextStack,
    VideoRules,
    latents_group,
    scaled_posterior_sample,
    text_group,
    vae_posterior,
)
from hv_tune.models.hunyuan_video import keys as hv_keys
from hv_tune.models.hunyuan_video import presets
from hv_tune.models.hunyuan_video import text as hv_text
from hv_tune.models.hunyuan_video.pipeline import HunyuanVideoPipelines
from hv_tune.models.hunyuan_video.plan import PUBLISHED
from hv_tune.models.hunyuan_video.single_file import load_single_file, original_to_diffusers
from hv_tune.models.published import transformer_config


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
    #: Llama + CLIP-L (``text.py``): what the text group stores, under the pipeline's argument names
    text: TextStack = hv_text.STACK
    pipeline_class = "HunyuanVideoPipeline"
    meta_step_unavailable: str | None = None
    #: key names: original / kohya / ComfyUI tables, fused parts, prefixes, look-alikes
    keys: KeyLayout = hv_keys.LAYOUT

    @cached_property
    def pipeline(self) -> PipelineAdapter:
        """``HunyuanVideoPipeline``: loading, LoRA loading, call arguments (``pipeline.py``)."""
        return HunyuanVideoPipelines(self)
    transformer_subfolder = "transformer"

    @property
    def item_encoders(self) -> tuple[ItemEncoder, ...]:
        """What the cache stores per item: the captions' text, the clip's latents (text-to-video: nothing else)."""
        return (text_group(self), latents_group(self))

    # ------------------------------------------------------------------ loading

    def load_transformer(self, opts: LoadOptions) -> nn.Module:
        """From the model folder, or from ``opts.transformer_path`` (one file, Tencent's names)."""
        from diffusers import HunyuanVideoTransformer3DModel

        if opts.transformer_path:
            return load_single_file(HunyuanVideoTransformer3DModel, opts, "transformer", opts.transformer_path,
                                    original_to_diffusers)
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

    def load_vae_config(self, opts: LoadOptions) -> Mapping[str, Any]:
        from diffusers import AutoencoderKLHunyuanVideo

        return dict(AutoencoderKLHunyuanVideo.load_config(opts.path, subfolder="vae", revision=opts.revision))

    # ------------------------------------------------------------------ encoding

    def encode_pixels(self, vae: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior of ``pixels`` [B, 3, F, H, W] in [-1, 1] (unscaled, as the VAE gives it)."""
        return vae_posterior(vae, pixels)

    def sample_latents(
        self, vae_config: Mapping[str, Any], mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """``(mean + exp(logvar / 2) * eps) * scaling_factor``, eps drawn on the CPU."""
        return scaled_posterior_sample(vae_config, mean, logvar, generator)

    def transformer_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, batch: Mapping[str, torch.Tensor],
                           guidance_scale: float = 1.0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Inputs as ``HunyuanVideoPipeline`` builds them, from a batch (the union of its cache groups):
        text and mask in ``dtype`` (the prompt embeddings' when None), embedded guidance ``guidance_scale``."""
        dtype = dtype or batch["prompt_embeds"].dtype
        b = noisy.shape[0]
        return {
            "hidden_states": noisy.to(dtype),
            "timestep": timesteps_from_sigmas(sigma).to(noisy.device, torch.float32),
            "encoder_hidden_states": batch["prompt_embeds"].to(dtype),
            "encoder_attention_mask": batch["prompt_attention_mask"].to(dtype),
            "pooled_projections": batch["pooled_prompt_embeds"].to(dtype),
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

    def build_full_width(self, out_dir: Path, component: str, max_shard_size: str = "10GB") -> nn.Module:
        """A random-weight ``transformer`` (released width, one block of each kind, bf16) or full-size ``vae``
        in ``out_dir/<component>`` (``tiny.build_full_width_hunyuan_video``)."""
        from hv_tune.models.hunyuan_video.tiny import build_full_width_hunyuan_video

        return build_full_width_hunyuan_video(Path(out_dir), component, max_shard_size)

    def reference_transformer(self, file: str, model_folder: str, dtype: torch.dtype) -> nn.Module | None:
        """An original-layout file through diffusers' own converter (``tiny.reference_transformer``)."""
        from hv_tune.models.hunyuan_video.tiny import reference_transformer

        return reference_transformer(file, model_folder, dtype)

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
