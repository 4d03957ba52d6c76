"""The made-up family's spec: HunyuanVideo's tiny transformer and VAE, but one text encoder (the
pooled vector comes from it) whose fields have this family's own names, its own key table, and a
reference image (the item's first frame through the VAE) added to the noisy latents as an extra
conditioning input, stored in the cache group ``cond``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hv_tune.models.base import (
    EncodeSetup,
    ItemEncoder,
    KeyLayout,
    LoadOptions,
    TextEncoder,
    TextEncoders,
    TextStack,
    VideoRules,
    latents_group,
    text_group,
    vae_posterior,
)
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from tests.made_up_family import keys

TEXT_TOKENS = 32
POOLED_DIM = 8  # the tiny transformer's pooled_projection_dim
#: this family's text fields (none of HunyuanVideo's names)
TEXT_FIELDS = ("made_up_tokens", "made_up_token_mask", "made_up_summary")


def load_text(opts: LoadOptions) -> TextEncoders:
    """One text encoder (the tiny Llama of HunyuanVideo's folder)."""
    from transformers import AutoTokenizer, LlamaModel

    return TextEncoders(text_encoder=TextEncoder(
        AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer"),
        LlamaModel.from_pretrained(opts.path, subfolder="text_encoder", dtype=opts.dtype), fp8=True))


def encode_text(enc: TextEncoders, prompts: list[str], num_frames: int) -> dict[str, torch.Tensor]:
    """Last hidden states [B, 32, D], their mask [B, 32] and a masked mean [B, 8] as the pooled vector."""
    llm = enc["text_encoder"]
    ids = llm.tokenizer(prompts, max_length=TEXT_TOKENS, padding="max_length", truncation=True, return_tensors="pt")
    hidden = llm.model(input_ids=ids.input_ids.to(llm.model.device),
                       attention_mask=ids.attention_mask.to(llm.model.device)).last_hidden_state
    mask = ids.attention_mask.to(hidden.device)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, L, D] -> [B, D]
    return dict(zip(TEXT_FIELDS, (hidden, mask, pooled[:, :POOLED_DIM])))


def dropped_tokens(enc: TextEncoders, prompts: list[str], num_frames: int) -> list[int]:
    return [max(0, len(x) - TEXT_TOKENS) for x in enc["text_encoder"].tokenizer(prompts).input_ids]


class MadeUpSpec(HunyuanVideoSpec):
    name = "test-made-up-video"
    pipeline_class = "TestMadeUpPipeline"
    video = VideoRules(pixel_multiple=16, frame_step=4, fps=24.0)
    keys: KeyLayout = keys.LAYOUT
    text = TextStack(TEXT_FIELDS, load_text, encode_text, dropped_tokens)
    lora_presets = {"attn": (r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)",)}
    memory_presets: Mapping[str, Mapping[str, Any]] = {}
    lora_compatible: tuple[str, ...] = ()

    @property
    def item_encoders(self) -> tuple[ItemEncoder, ...]:
        """Its captions (group ``words``), the clip's latents and the reference image (group ``cond``)."""
        reference = ItemEncoder("cond", ("first_frame",), ("reference_latents",), self.load_reference,
                                self.encode_reference)
        return (text_group(self, "words"), latents_group(self), reference)

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

    # the reference image: the item's first frame through the VAE
    def load_reference(self, setup: EncodeSetup) -> Any:
        return self.load_vae(setup.opts).to(setup.device)

    def encode_reference(self, vae: Any, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        frame = torch.from_numpy(inputs["first_frame"])
        pixels = frame.permute(2, 0, 1)[None, :, None].float() / 127.5 - 1  # [H, W, 3] -> [1, 3, 1, H, W]
        return {"reference_latents": vae_posterior(vae, pixels)["latent_mean"][0]}  # [C, 1, H', W']

    def transformer_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, batch: Mapping[str, torch.Tensor],
                           guidance_scale: float = 1.0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """HunyuanVideo's inputs from this family's fields, the reference latents added on every frame."""
        reference = batch["reference_latents"].to(noisy.device, noisy.dtype)  # [B, C, 1, H', W']
        text = dict(zip(("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"),
                        (batch[k] for k in TEXT_FIELDS)))
        return super().transformer_inputs(noisy + 0.1 * reference, sigma, text, guidance_scale, dtype)
