"""The made-up family's spec: HunyuanVideo's tiny transformer and VAE, but one text encoder (the
pooled vector comes from it), its own key table, and a reference image (the item's first frame
through the VAE) added to the noisy latents as an extra conditioning input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hv_tune.models.base import (
    ItemEncoder,
    KeyLayout,
    LoadOptions,
    TextEncoder,
    TextEncoders,
    VideoRules,
    vae_posterior,
)
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from tests.made_up_family import keys

TEXT_TOKENS = 32
POOLED_DIM = 8  # the tiny transformer's pooled_projection_dim


class MadeUpSpec(HunyuanVideoSpec):
    name = "test-made-up-video"
    pipeline_class = "TestMadeUpPipeline"
    video = VideoRules(pixel_multiple=16, frame_step=4, fps=24.0)
    keys: KeyLayout = keys.LAYOUT
    lora_presets = {"attn": (r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)",)}
    memory_presets: Mapping[str, Mapping[str, Any]] = {}
    lora_compatible: tuple[str, ...] = ()

    @property
    def item_encoders(self) -> tuple[ItemEncoder, ...]:
        return (ItemEncoder("reference images", "first_frame", ("reference_latents",), self.load_condition_encoders,
                            self.encode_condition),)

    def build_tiny(self, out_dir: Path, seed: int = 0, small: bool = False) -> Path:
        """HunyuanVideo's tiny folder without the second text encoder, named as this family's."""
        import shutil

        folder = super().build_tiny(out_dir, seed, small)
        for name in ("text_encoder_2", "tokenizer_2"):
            shutil.rmtree(folder / name)
        index = json.loads((folder / "model_index.json").read_text())
        index = {k: v for k, v in index.items() if k not in ("text_encoder_2", "tokenizer_2")}
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": self.pipeline_class}))
        return folder

    # one text encoder
    def load_text_encoders(self, opts: LoadOptions) -> TextEncoders:
        from transformers import AutoTokenizer, LlamaModel

        return TextEncoders(text_encoder=TextEncoder(
            AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer"),
            LlamaModel.from_pretrained(opts.path, subfolder="text_encoder", dtype=opts.dtype), fp8=True))

    def encode_text(self, enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
        llm = enc["text_encoder"]
        ids = llm.tokenizer(prompts, max_length=TEXT_TOKENS, padding="max_length", truncation=True,
                            return_tensors="pt")
        hidden = llm.model(input_ids=ids.input_ids.to(llm.model.device),
                           attention_mask=ids.attention_mask.to(llm.model.device)).last_hidden_state
        mask = ids.attention_mask.to(hidden.device)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, L, D] -> [B, D]
        return {"prompt_embeds": hidden, "prompt_attention_mask": mask, "pooled_prompt_embeds": pooled[:, :POOLED_DIM]}

    def dropped_text_tokens(self, enc: TextEncoders, prompts: list[str], num_frames: int) -> list[int]:
        return [max(0, len(x) - TEXT_TOKENS) for x in enc["text_encoder"].tokenizer(prompts).input_ids]

    # the reference image: the item's first frame through the VAE
    def load_condition_encoders(self, opts: LoadOptions, vae: Any) -> Any:
        return vae

    def encode_condition(self, vae: Any, frame: np.ndarray, latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(frame).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1  # [1, 3, 1, H, W]
        return {"reference_latents": vae_posterior(vae, pixels)["latent_mean"][0]}  # [C, 1, H', W']

    def transformer_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, text: Mapping[str, torch.Tensor],
                           guidance_scale: float) -> dict[str, torch.Tensor]:
        reference = text["reference_latents"].to(noisy.device, noisy.dtype)  # [B, C, 1, H', W'], on every frame
        return super().transformer_inputs(noisy + 0.1 * reference, sigma, text, guidance_scale)
