"""HunyuanVideo 1.5 image-to-video (diffusers layout) as a ``ModelSpec``: the text-to-video spec plus
the first-frame condition (docs/hunyuan_video_1_5.md, "Image-to-video").

``HunyuanVideo15ImageToVideoPipeline`` (diffusers 0.42.1) builds, from the first frame:

- ``cond_latents`` [B, 32, F', H', W']: the frame, as a 1-frame video in [-1, 1], through the VAE
  (posterior *mode*, no sampling) times ``scaling_factor``, in latent frame 0; zeros in frames 1..;
- ``cond_mask`` [B, 1, F', H', W']: 1 in latent frame 0, 0 elsewhere;
- ``image_embeds`` [B, T, D]: SigLIP ``last_hidden_state`` of the frame after ``SiglipImageProcessor``
  (resized to its square input, rescaled, normalised with mean = std = 0.5).

The transformer input is ``concat(noisy, cond_latents, cond_mask)`` on channels. Under
classifier-free guidance both branches get the same image condition (only the text changes),
so there is no image-condition dropout to train. The cache computes these tensors through the
pipeline's own methods (``prepare_cond_latents_and_mask``, ``encode_image``), not a copy of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hv_tune.models.base import EncodeSetup, ItemEncoder, LoadOptions, PipelineAdapter
from hv_tune.models.hunyuan_video_1_5.pipeline import HunyuanVideo15Pipelines
from hv_tune.models.hunyuan_video_1_5.spec import HunyuanVideo15Spec

#: per-item conditioning the cache stores and a batch feeds ``transformer_inputs`` (no batch dim in the cache)
CONDITION_FIELDS = ("cond_latents", "cond_mask", "image_embeds")


class HunyuanVideo15I2VPipelines(HunyuanVideo15Pipelines):
    """``HunyuanVideo15ImageToVideoPipeline``: the T2V adapter's LoRA loading and prompt embeddings, the
    first frame in the call."""

    #: a sampling request gives the first frame; the pipeline takes the size from it and its target_size
    sample_input = "image"

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float,
                       cfg_scale: float | None = None) -> dict[str, Any]:
        """The first frame (the I2V pipeline picks the output size from it); guidance through the guider
        (``cfg_scale`` over ``guidance``, as text-to-video)."""
        super().call_arguments(pipe, height, width, image, guidance, cfg_scale)
        return {"image": image}

    def load(self, opts: LoadOptions) -> Any:
        """``HunyuanVideo15ImageToVideoPipeline`` of the folder, every component."""
        from diffusers import HunyuanVideo15ImageToVideoPipeline

        if opts.transformer_path or opts.vae_path:
            from hv_tune.errors import HvTuneError

            raise HvTuneError(f"single-file transformer/VAE paths are not supported for {self.spec.name}")
        return HunyuanVideo15ImageToVideoPipeline.from_pretrained(opts.path, dtype=opts.dtype, revision=opts.revision)

    def from_parts(self, opts: LoadOptions, transformer: nn.Module, vae: nn.Module) -> Any:
        """The I2V pipeline around loaded parts, without text encoders (pass embeddings); the SigLIP
        encoder is loaded from ``opts.path`` onto ``vae.device``."""
        from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler

        kw = {"revision": opts.revision}
        return i2v_pipeline(
            opts, vae, transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(opts.path, subfolder="scheduler", **kw),
            guider=ClassifierFreeGuidance.from_pretrained(opts.path, subfolder="guider", **kw),
        )


def i2v_pipeline(opts: LoadOptions, vae: nn.Module, **parts: Any) -> Any:
    """``HunyuanVideo15ImageToVideoPipeline`` of ``vae``, ``parts`` and the folder's SigLIP encoder
    (placed on ``vae.device``); components not given are None."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import SiglipImageProcessor, SiglipVisionModel

    kw = {"revision": opts.revision}
    encoder = SiglipVisionModel.from_pretrained(opts.path, subfolder="image_encoder", dtype=opts.dtype, **kw)
    none = dict.fromkeys(("text_encoder", "tokenizer", "transformer", "scheduler", "text_encoder_2",
                          "tokenizer_2", "guider"))
    return HunyuanVideo15ImageToVideoPipeline(
        **(none | parts), vae=vae, image_encoder=encoder.to(vae.device),
        feature_extractor=SiglipImageProcessor.from_pretrained(opts.path, subfolder="feature_extractor", **kw),
    )


class HunyuanVideo15I2VSpec(HunyuanVideo15Spec):
    """HunyuanVideo 1.5 I2V: the T2V spec with a first-frame condition (VAE latent, mask, SigLIP)."""

    name = "hunyuan-video-1.5-i2v"
    pipeline_class = "HunyuanVideo15ImageToVideoPipeline"
    lora_compatible: tuple[str, ...] = ("hunyuan-video-1.5",)

    @cached_property
    def pipeline(self) -> PipelineAdapter:
        """``HunyuanVideo15ImageToVideoPipeline``: the first frame in the call (``HunyuanVideo15I2VPipelines``)."""
        return HunyuanVideo15I2VPipelines(self)

    @property
    def item_encoders(self) -> tuple[ItemEncoder, ...]:
        """Text and latents as text-to-video, then the first-frame condition: VAE latent + mask and SigLIP
        embedding through the I2V pipeline (it reads the item's first frame and its latents' shape)."""
        return (*super().item_encoders, ItemEncoder(
            "first_frame_condition", ("first_frame", "latents"), CONDITION_FIELDS, self.load_condition_encoders,
            lambda pipe, inputs: self.encode_condition(pipe, inputs["first_frame"],
                                                       tuple(inputs["latents"]["latent_mean"].shape))))

    # ------------------------------------------------------------------ the first-frame condition

    def load_condition_encoders(self, setup: EncodeSetup) -> Any:
        """The I2V pipeline around the VAE and the SigLIP encoder (no transformer, no text encoders), on
        ``setup.device``: what ``encode_condition`` calls the pipeline's own methods on."""
        return i2v_pipeline(setup.opts, self.load_vae(setup.opts).to(setup.device))

    @torch.no_grad()
    def encode_condition(self, encoders: Any, frame: np.ndarray, latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The pipeline's condition for first frame ``frame`` (uint8 [H, W, 3] at the item's size).

        Args:
            encoders: from ``load_condition_encoders``.
            latent_shape: the item's latent shape [C, F', H', W'].

        Returns:
            ``cond_latents`` [C, F', H', W'], ``cond_mask`` [1, F', H', W'], ``image_embeds`` [T, D]; float32.
        """
        from PIL import Image

        pipe, (h, w) = encoders, frame.shape[:2]
        device = pipe.vae.device
        # the call's own resize (a no-op at the item's size, kept so that any size goes the pipeline's way)
        image = pipe.video_processor.resize(Image.fromarray(frame), height=h, width=w, resize_mode="crop")
        latents = torch.zeros(1, *latent_shape, device=device)  # only its shape is read
        cond, mask = pipe.prepare_cond_latents_and_mask(latents=latents, image=image, batch_size=1, height=h,
                                                        width=w, dtype=torch.float32, device=device)
        embeds = pipe.encode_image(image=image, batch_size=1, device=device, dtype=torch.float32)
        return {"cond_latents": cond[0].cpu(), "cond_mask": mask[0].cpu(), "image_embeds": embeds[0].cpu()}

    def transformer_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, batch: Mapping[str, torch.Tensor],
                           guidance_scale: float = 1.0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """As ``HunyuanVideo15ImageToVideoPipeline`` builds them: ``hidden_states`` = concat(noisy [32],
        ``cond_latents`` [32], ``cond_mask`` [1]) on channels, ``image_embeds`` from SigLIP; the rest
        as text-to-video. ``batch`` holds the item's text and condition groups."""
        inputs = super().transformer_inputs(noisy, sigma, batch, guidance_scale, dtype)
        dtype = inputs["hidden_states"].dtype
        cond = [noisy.to(dtype), batch["cond_latents"].to(dtype), batch["cond_mask"].to(dtype)]
        inputs["hidden_states"] = torch.cat(cond, dim=1)  # [B, 32 + 32 + 1, F', H', W']
        inputs["image_embeds"] = batch["image_embeds"].to(dtype)
        return inputs

    def plan_conditions(self, latent: tuple[int, ...], image_embed_dim: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The condition fields on meta: ``cond_latents`` like ``latent`` [B, C, F', H', W'],
        ``cond_mask`` [B, 1, F', H', W'], ``image_embeds`` [B, 729, image_embed_dim]."""
        from hv_tune.models.hunyuan_video_1_5.plan import I2V_IMAGE_EMBEDS
        from hv_tune.models.hunyuan_video_1_5.spec import VISION_TOKENS

        b, _, *rest = latent
        meta = {"dtype": dtype, "device": "meta"}
        return {"cond_latents": torch.empty(latent, **meta), "cond_mask": torch.empty(b, 1, *rest, **meta),
                "image_embeds": torch.full((b, VISION_TOKENS, image_embed_dim), I2V_IMAGE_EMBEDS, **meta)}

    def build_tiny(self, out_dir: Path, seed: int = 0, small: bool = False) -> Path:
        from hv_tune.models.hunyuan_video_1_5.tiny import build_tiny_hunyuan_video_1_5_i2v

        return build_tiny_hunyuan_video_1_5_i2v(Path(out_dir), seed=seed, small=small)
