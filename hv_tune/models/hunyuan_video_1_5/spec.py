"""HunyuanVideo 1.5 text-to-video (diffusers layout) as a ``ModelSpec``.

Facts the code relies on are in docs/hunyuan_video_1_5.md: text encoding in
``hunyuan_video_1_5.text``, model inputs as ``HunyuanVideo15Pipeline`` builds them (65 input
channels = 32 noisy latent + 32 conditioning latent + 1 mask, zeros for text-to-video; image
embeddings zeros; ``timestep = sigma * 1000``; no guidance embedding). diffusers imports are
local so that importing the registry stays cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hv_tune.diffusion import timesteps_from_sigmas
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
from hv_tune.models.hunyuan_video_1_5 import keys as hv15_keys
from hv_tune.models.hunyuan_video_1_5 import presets as hv15_presets
from hv_tune.models.hunyuan_video_1_5 import text as hv15_text
from hv_tune.models.hunyuan_video_1_5.pipeline import HunyuanVideo15Pipelines
from hv_tune.models.hunyuan_video_1_5.plan import PUBLISHED
from hv_tune.models.published import transformer_config

_ATTN = r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_MLP = r"transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)"
# adaLN modulation of the blocks: musubi-tuner's 1.5 network trains it (every linear of its
# ``MMDoubleStreamBlock``); the output head (norm_out, proj_out) is in no preset, as in musubi
_MOD = r"transformer_blocks\.\d+\.(norm1|norm1_context)\.linear"
#: SigLIP tokens and width of the image condition (zeros for text-to-video), as the pipeline sets them
VISION_TOKENS = 729
IMAGE_EMBED_DIM = 1152


def _pattern_value(module: str, patterns: Mapping[str, Any], default: Any) -> Any:
    """PEFT's per-module override (``rank_pattern`` / ``alpha_pattern``) for ``module``."""
    for key, value in patterns.items():
        regex = key[1:] if key.startswith("^") else rf"(.*\.)?{key}"
        if re.fullmatch(regex, module):
            return value
    return default


def fold_alpha(state: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """``lora_B`` scaled by ``alpha / r`` per module, so the file loads at strength 1 with alpha = r."""
    out = {}
    for key, tensor in state.items():
        module = key.removesuffix(".lora_B.weight")
        if module != key:
            r = _pattern_value(module, config.rank_pattern or {}, config.r)
            alpha = _pattern_value(module, config.alpha_pattern or {}, config.lora_alpha)
            tensor = tensor * (alpha / r)
        out[key] = tensor.contiguous()
    return out


def check_trainable(config: Mapping[str, Any]) -> None:
    """Refuse checkpoints this trainer would train wrongly.

    The step-distilled checkpoints (``use_meanflow``) are trained on mean-flow targets between two
    timesteps (``timestep_r``); a flow-matching LoRA on them would undo the distillation.

    Raises:
        ConfigError: for ``use_meanflow`` checkpoints, naming the reason and what to use instead.
    """
    from hv_tune.errors import ConfigError

    if config.get("use_meanflow"):
        raise ConfigError("model.path: this HunyuanVideo 1.5 checkpoint is step-distilled (use_meanflow: true in "
                          "transformer/config.json); hv-tune trains flow matching, not the mean-flow objective it "
                          "was distilled with, so a LoRA would undo the distillation. Train on the base "
                          "(or cfg-distilled) checkpoint and apply the LoRA there.")


class HunyuanVideo15Spec:
    """HunyuanVideo 1.5 T2V: dual-stream transformer, 32-channel 16x VAE, Qwen2.5-VL + byT5."""

    name = "hunyuan-video-1.5"
    lora_presets: Mapping[str, tuple[str, ...]] = {"attn": (_ATTN,), "all-linear": (_ATTN, _MLP, _MOD)}
    vae_scale_factor_temporal = 4
    vae_scale_factor_spatial = 16
    #: sides: 16x VAE x patch 1; frames 4k+1; 24 fps (docs/hunyuan_video_1_5.md)
    video = VideoRules(pixel_multiple=vae_scale_factor_spatial, frame_step=vae_scale_factor_temporal, fps=24.0)
    memory_presets: Mapping[str, Mapping[str, Any]] = hv15_presets.PRESETS
    #: the image-to-video model has the same layers and sizes: a LoRA of either variant applies to both
    #: (docs/lora-formats.md, "Model families")
    lora_compatible: tuple[str, ...] = ("hunyuan-video-1.5-i2v",)
    #: Qwen2.5-VL + byT5 (``text.py``): what the text group stores
    text: TextStack = hv15_text.STACK
    #: ``_class_name`` of a model folder's ``model_index.json`` (verbs find the family from it)
    pipeline_class = "HunyuanVideo15Pipeline"
    meta_step_unavailable: str | None = None  # the values its forward reads: hunyuan_video_1_5/plan.py
    #: key names: original / kohya / ComfyUI tables, fused parts, prefixes, look-alikes
    keys: KeyLayout = hv15_keys.LAYOUT

    @cached_property
    def pipeline(self) -> PipelineAdapter:
        """``HunyuanVideo15Pipeline``: loading, LoRA loading, call arguments (``pipeline.py``)."""
        return HunyuanVideo15Pipelines(self)
    transformer_subfolder = "transformer"

    @property
    def item_encoders(self) -> tuple[ItemEncoder, ...]:
        """What the cache stores per item: the captions' text, the clip's latents (text-to-video: nothing else)."""
        return (text_group(self), latents_group(self))

    # ------------------------------------------------------------------ loading

    def load_transformer(self, opts: LoadOptions) -> nn.Module:
        from diffusers import HunyuanVideo15Transformer3DModel

        if opts.transformer_path:
            from hv_tune.errors import HvTuneError

            raise HvTuneError("model.transformer_path: single-file loading is not supported for hunyuan-video-1.5; "
                              "use a diffusers-format folder in model.path")
        model = HunyuanVideo15Transformer3DModel.from_pretrained(
            opts.path, subfolder="transformer", dtype=opts.dtype, revision=opts.revision)
        check_trainable(model.config)
        return model

    def load_vae(self, opts: LoadOptions) -> nn.Module:
        from diffusers import AutoencoderKLHunyuanVideo15

        return AutoencoderKLHunyuanVideo15.from_pretrained(opts.path, subfolder="vae", dtype=opts.dtype,
                                                           revision=opts.revision)

    def load_vae_config(self, opts: LoadOptions) -> Mapping[str, Any]:
        from diffusers import AutoencoderKLHunyuanVideo15

        return dict(AutoencoderKLHunyuanVideo15.load_config(opts.path, subfolder="vae", revision=opts.revision))

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
        """Inputs as ``HunyuanVideo15Pipeline`` builds them for text-to-video, from a batch (the union of
        its cache groups), floating inputs in ``dtype`` (the prompt embeddings' when None).

        ``guidance_scale`` is unused: 1.5 has no guidance embedding (classifier-free guidance runs at
        sampling time). The image-condition width is read from nothing: the released and the tiny models
        both use SigLIP's 1152 (``image_embed_dim``).
        """
        dtype = dtype or batch["prompt_embeds"].dtype
        b, c, f, h, w = noisy.shape
        cond = torch.zeros(b, c + 1, f, h, w, dtype=dtype, device=noisy.device)  # 32 latent + 1 mask channels
        return {
            "hidden_states": torch.cat([noisy.to(dtype), cond], dim=1),  # [B, 32, F, H, W] -> [B, 65, F, H, W]
            "timestep": timesteps_from_sigmas(sigma).to(noisy.device, dtype),
            "encoder_hidden_states": batch["prompt_embeds"].to(dtype),
            "encoder_attention_mask": batch["prompt_attention_mask"].to(dtype),
            "encoder_hidden_states_2": batch["prompt_embeds_2"].to(dtype),
            "encoder_attention_mask_2": batch["prompt_attention_mask_2"].to(dtype),
            "image_embeds": torch.zeros(b, VISION_TOKENS, IMAGE_EMBED_DIM, dtype=dtype, device=noisy.device),
            "return_dict": False,
        }

    # ------------------------------------------------------------------ memory

    def transformer_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The 54 dual-stream blocks (released model), in execution order."""
        return list(transformer.transformer_blocks)

    def fp8_keep_patterns(self, component: str, module: nn.Module) -> tuple[str, ...]:
        """What stays in the compute dtype under fp8 storage: diffusers' defaults, the model's
        ``_skip_layerwise_casting_patterns`` (embedders, refiner, norms and adaLN linears) and the
        time, byT5 and image embedders; for Qwen2.5-VL the token embedding and norms."""
        if component == "text_encoder":
            return ("embed_tokens", "norm")
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        own = tuple(getattr(module, "_skip_layerwise_casting_patterns", None) or ())
        return (*DEFAULT_SKIP_MODULES_PATTERN, *own, "time_embed", "context_embedder_2", "image_embedder",
                "cond_type_embed")

    # ------------------------------------------------------------------ LoRA

    def save_lora(self, out_dir: Path, state_dict: dict[str, torch.Tensor], lora_config: Any) -> Path:
        """``pytorch_lora_weights.safetensors`` for ``transformer.load_lora_adapter(path)``.

        The 1.5 pipelines have no LoRA loader, and the model-level loader is the one users have:
        alpha / r is folded into ``lora_B`` and the metadata says ``lora_alpha = r`` (so any loader
        gives the trained strength). Keys ``transformer.<module>.lora_A/B.weight``.
        """
        from safetensors.torch import save_file

        folded = fold_alpha(state_dict, lora_config)
        cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in lora_config.to_dict().items()}
        cfg["lora_alpha"] = cfg["r"]
        cfg["alpha_pattern"] = dict(cfg.get("rank_pattern") or {})
        meta = {f"transformer.{k}": v for k, v in cfg.items()}
        path = Path(out_dir) / LORA_FILE
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({f"transformer.{k}": v for k, v in folded.items()}, str(path), metadata={
            "format": "pt", "lora_adapter_metadata": json.dumps(meta, indent=2, sort_keys=True, default=str)})
        sort_safetensors_metadata(path)
        return path

    def build_tiny(self, out_dir: Path, seed: int = 0, small: bool = False) -> Path:
        from hv_tune.models.hunyuan_video_1_5.tiny import build_tiny_hunyuan_video_1_5

        return build_tiny_hunyuan_video_1_5(Path(out_dir), seed=seed, small=small)

    def build_full_width(self, out_dir: Path, component: str, max_shard_size: str = "10GB") -> nn.Module:
        """A random-weight ``transformer`` (released width, one block of each kind, bf16) or full-size ``vae``
        in ``out_dir/<component>`` (``tiny.build_full_width_hunyuan_video_1_5``)."""
        from hv_tune.models.hunyuan_video_1_5.tiny import build_full_width_hunyuan_video_1_5

        return build_full_width_hunyuan_video_1_5(Path(out_dir), component, max_shard_size)

    def reference_transformer(self, file: str, model_folder: str, dtype: torch.dtype) -> nn.Module | None:
        """None: diffusers has no single-file converter of 1.5's original layout."""
        return None

    # ------------------------------------------------------------------ shapes

    def linear_shapes(self, model_path: str | None) -> dict[str, tuple[int, int]]:
        """Linear layer shapes from the config alone (meta device; full size when ``model_path`` is None)."""
        model = self._meta_model(model_path, torch.float32)
        return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    # ------------------------------------------------------------------ memory planning

    def _meta_model(self, model_path: str | None, dtype: torch.dtype) -> nn.Module:
        from diffusers import HunyuanVideo15Transformer3DModel

        config = transformer_config(HunyuanVideo15Transformer3DModel, model_path, self.transformer_subfolder, PUBLISHED)
        with torch.device("meta"):
            model = HunyuanVideo15Transformer3DModel.from_config(config)  # float32
        # diffusers' ``to(dtype)`` warns about fp32-kept modules (none here): cast only when needed
        return model if dtype == torch.float32 else model.to(dtype)

    def plan_model(
        self, model_path: str | None, frames: int, height: int, width: int, batch_size: int, dtype: torch.dtype
    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """Meta transformer + inputs: latents [B, 32, (F-1)/4+1, H/16, W/16], full-length text (all valid)."""
        model = self._meta_model(model_path, dtype)
        c = model.config
        latent = (batch_size, c.out_channels, (frames - 1) // self.vae_scale_factor_temporal + 1,
                  height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        meta = {"dtype": dtype, "device": "meta"}
        n, n2 = hv15_text.LLM_MAX_TOKENS, hv15_text.BYT5_MAX_TOKENS
        text = {"prompt_embeds": torch.empty(batch_size, n, c.text_embed_dim, **meta),
                "prompt_attention_mask": torch.ones(batch_size, n, dtype=torch.int64, device="meta"),
                "prompt_embeds_2": torch.empty(batch_size, n2, c.text_embed_2_dim, **meta),
                "prompt_attention_mask_2": torch.ones(batch_size, n2, dtype=torch.int64, device="meta")}
        noisy = torch.empty(latent, dtype=torch.float32, device="meta")
        text.update(self.plan_conditions(latent, c.image_embed_dim, dtype))
        return model, self.transformer_inputs(noisy, torch.full((batch_size,), 0.5, device="meta"), text, 1.0)

    def plan_conditions(self, latent: tuple[int, ...], image_embed_dim: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Per-item condition inputs of a planned batch on meta (none for text-to-video)."""
        return {}
