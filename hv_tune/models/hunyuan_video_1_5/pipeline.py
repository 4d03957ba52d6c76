"""HunyuanVideo 1.5's pipeline adapter (facet ``ModelSpec.pipeline``): ``HunyuanVideo15Pipeline`` from a
folder or around loaded parts, LoRA loading through the transformer (the 1.5 pipelines have no LoRA
loader), guidance through the pipeline's guider."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hv_tune.models.base import LoadOptions, TextEncoders

#: ``HunyuanVideo15Pipeline.__call__``'s prompt-embedding arguments, in ``encode_prompt``'s return order
#: (the unconditional side's are the same names after ``negative_``)
EMBED_NAMES = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")


class HunyuanVideo15Pipelines:
    """How sampling, previews and the demo drive ``HunyuanVideo15Pipeline`` for ``spec``."""

    #: what a sampling request gives besides the prompt: the output ``size`` (text-to-video)
    sample_input = "size"

    def __init__(self, spec: Any):
        self.spec = spec

    def load(self, opts: LoadOptions) -> Any:
        """``HunyuanVideo15Pipeline`` of the folder, every component."""
        from diffusers import HunyuanVideo15Pipeline

        if opts.transformer_path or opts.vae_path:
            from hv_tune.errors import HvTuneError

            raise HvTuneError("single-file transformer/VAE paths are not supported for hunyuan-video-1.5")
        return HunyuanVideo15Pipeline.from_pretrained(opts.path, dtype=opts.dtype, revision=opts.revision)

    def from_parts(self, opts: LoadOptions, transformer: nn.Module, vae: nn.Module) -> Any:
        """``HunyuanVideo15Pipeline`` around loaded parts, without text encoders (pass embeddings)."""
        from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline

        kw = {"revision": opts.revision}
        return HunyuanVideo15Pipeline(
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
            transformer=transformer, vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(opts.path, subfolder="scheduler", **kw),
            guider=ClassifierFreeGuidance.from_pretrained(opts.path, subfolder="guider", **kw),
        )

    def preview_embeds(self, enc: TextEncoders, prompt: str, num_frames: int,
                       negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """The prompt's and the unconditional side's embeddings (the negative prompt's, else the empty
        prompt's, as the pipeline encodes ``negative_prompt=None``) under ``HunyuanVideo15Pipeline.__call__``'s
        names."""
        cond = self.spec.text.encode(enc, [prompt], num_frames)
        uncond = self.spec.text.encode(enc, ["" if negative_prompt is None else negative_prompt], num_frames)
        out = {n: cond[k] for n, k in zip(EMBED_NAMES, self.spec.text.fields)}
        return out | {f"negative_{n}": uncond[k] for n, k in zip(EMBED_NAMES, self.spec.text.fields)}

    def prompt_embeds(self, pipe: Any, prompt: str, device: torch.device | str,
                      negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """The pipeline's own encoding of ``prompt`` and of the unconditional side (``negative_prompt``, else
        the empty prompt). Both always: ``call_arguments`` sets the guider's scale afterwards, so whether the
        pipeline runs CFG is not known here, and with the encoders offloaded the pipeline cannot encode the
        unconditional side itself (a guider that runs no CFG ignores it)."""
        cond = pipe.encode_prompt(prompt=prompt, device=device)
        uncond = pipe.encode_prompt(prompt=negative_prompt, device=device)
        return dict(zip(EMBED_NAMES, cond)) | {f"negative_{k}": v for k, v in zip(EMBED_NAMES, uncond)}

    def check_guidance(self, where: str, negative_prompt: str | None, cfg_scale: float | None) -> None:
        """Nothing to refuse: 1.5 runs classifier-free guidance at ``--l`` (musubi-tuner's scale for 1.5) or else
        ``--g``, with ``--n`` (else the empty prompt) as its unconditional side; at scale 1 there is no
        unconditional side and ``--n`` has no effect, as in musubi-tuner (README, ``sample``)."""

    def load_lora(self, pipe: Any, file: str, name: str) -> None:
        """A diffusers-format LoRA into ``pipe``: 1.5's pipelines have no LoRA loader, so the transformer's
        ``load_lora_adapter`` (our files for 1.5 carry alpha folded into ``lora_B``)."""
        pipe.transformer.load_lora_adapter(file, adapter_name=name)

    def set_lora_scales(self, pipe: Any, names: list[str], scales: list[float]) -> None:
        """Activate the named adapters with these strengths (the transformer's own PEFT API)."""
        pipe.transformer.set_adapters(names, scales)

    def call_arguments(self, pipe: Any, height: int, width: int, image: Any, guidance: float,
                       cfg_scale: float | None = None) -> dict[str, Any]:
        """The pipeline call's size arguments; classifier-free guidance is the pipeline's guider, given
        ``cfg_scale`` (a line's ``--l``, musubi-tuner's CFG scale for 1.5) or else ``guidance``."""
        pipe.guider = pipe.guider.new(guidance_scale=guidance if cfg_scale is None else cfg_scale)
        return {"height": height, "width": width}
