"""HunyuanVideo's pipeline adapter (facet ``ModelSpec.pipeline``): ``HunyuanVideoPipeline`` loaded from a
folder (single-file parts through the spec), around loaded parts, LoRA loading and its call's arguments."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hv_tune.models.base import LoadOptions, TextEncoders


class HunyuanVideoPipelines:
    """How sampling, previews and the demo drive ``HunyuanVideoPipeline`` for ``spec``."""

    #: what a sampling request gives besides the prompt: the output ``size`` (text-to-video)
    sample_input = "size"

    def __init__(self, spec: Any):
        self.spec = spec

    def load(self, opts: LoadOptions) -> Any:
        """``HunyuanVideoPipeline`` of the folder, with the single-file components of ``opts`` and
        the Llama tokenizer loaded as the text stack loads it.

        The class the hub's ``model_index.json`` names would crop the template wrongly under
        transformers 5 (docs/decisions.md, tokenizers).
        """
        from diffusers import HunyuanVideoPipeline
        from transformers import AutoTokenizer

        parts = {"tokenizer": AutoTokenizer.from_pretrained(opts.path, subfolder="tokenizer", revision=opts.revision)}
        if opts.transformer_path:
            parts["transformer"] = self.spec.load_transformer(opts)
        if opts.vae_path:
            parts["vae"] = self.spec.load_vae(opts)
        return HunyuanVideoPipeline.from_pretrained(opts.path, dtype=opts.dtype, revision=opts.revision, **parts)

    def from_parts(self, opts: LoadOptions, transformer: nn.Module, vae: nn.Module) -> Any:
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
        return self.spec.text.encode(enc, [prompt], num_frames)

    def prompt_embeds(self, pipe: Any, prompt: str, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The pipeline's own prompt encoding, as keyword arguments of its ``__call__``."""
        embeds, pooled, mask = pipe.encode_prompt(prompt=prompt, device=device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}

    def load_lora(self, pipe: Any, file: str, name: str) -> None:
        """A diffusers-format LoRA file into ``pipe`` through its LoRA loader (alpha read from the metadata)."""
        pipe.load_lora_weights(file, adapter_name=name)

    def set_lora_scales(self, pipe: Any, names: list[str], scales: list[float]) -> None:
        """Activate the named adapters with these strengths."""
        pipe.set_adapters(names, scales)

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float) -> dict[str, Any]:
        """The pipeline call's size and guidance arguments (v1: embedded guidance as ``guidance_scale``)."""
        return {"height": height, "width": width, "guidance_scale": guidance}
