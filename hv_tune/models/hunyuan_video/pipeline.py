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

    def preview_embeds(self, enc: TextEncoders, prompt: str, num_frames: int,
                       negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """``encode_text``'s fields are already ``HunyuanVideoPipeline.__call__``'s argument names; a negative
        prompt's are the same names with ``negative_`` before them (its true-CFG inputs)."""
        out = self.spec.text.encode(enc, [prompt], num_frames)
        if negative_prompt is not None:
            out |= {f"negative_{k}": v for k, v in self.spec.text.encode(enc, [negative_prompt], num_frames).items()}
        return out

    def prompt_embeds(self, pipe: Any, prompt: str, device: torch.device | str,
                      negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """The pipeline's own prompt encoding (and the negative prompt's), as keyword arguments of its ``__call__``."""
        out = {}
        for prefix, text in (("", prompt), ("negative_", negative_prompt)):
            if text is not None:
                embeds, pooled, mask = pipe.encode_prompt(prompt=text, device=device)
                out |= {f"{prefix}prompt_embeds": embeds, f"{prefix}pooled_prompt_embeds": pooled,
                        f"{prefix}prompt_attention_mask": mask}
        return out

    def check_guidance(self, where: str, negative_prompt: str | None, cfg_scale: float | None) -> None:
        """v1 is guidance-distilled (``--g`` is the embedded guidance): a negative prompt needs the pipeline's
        true classifier-free guidance, which runs only at ``true_cfg_scale`` > 1 with a negative prompt
        (``HunyuanVideoPipeline.__call__``); musubi-tuner's default scale there is 1, i.e. the negative
        prompt silently unused, so both options must come together (docs/decisions.md)."""
        from hv_tune.errors import ConfigError

        if negative_prompt is not None and (cfg_scale is None or cfg_scale <= 1):
            scale = "" if cfg_scale is None else f" (--l {cfg_scale:g} turns it off)"
            raise ConfigError(f"{where}: --n on {self.spec.name} needs true classifier-free guidance{scale}: add "
                              "--l SCALE above 1 (e.g. --l 6; each step then runs the model twice) or remove --n")
        if cfg_scale is not None and negative_prompt is None:
            raise ConfigError(f"{where}: --l on {self.spec.name} is the true classifier-free guidance scale of a "
                              "negative prompt: add --n TEXT or remove --l (--g is the embedded guidance)")

    def load_lora(self, pipe: Any, file: str, name: str) -> None:
        """A diffusers-format LoRA file into ``pipe`` through its LoRA loader (alpha read from the metadata)."""
        pipe.load_lora_weights(file, adapter_name=name)

    def set_lora_scales(self, pipe: Any, names: list[str], scales: list[float]) -> None:
        """Activate the named adapters with these strengths."""
        pipe.set_adapters(names, scales)

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float,
                       cfg_scale: float | None = None) -> dict[str, Any]:
        """The pipeline call's size and guidance arguments (v1: embedded guidance as ``guidance_scale``; a
        line's ``--l`` as ``true_cfg_scale``, used with the negative prompt's embeddings or text)."""
        true_cfg = {} if cfg_scale is None else {"true_cfg_scale": cfg_scale}
        return {"height": height, "width": width, "guidance_scale": guidance, **true_cfg}
