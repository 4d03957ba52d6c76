"""Previews through the model family's diffusers pipeline (asked of the spec), as mp4 or png.

The same code renders ``finetune.py sample`` and the validation previews during training;
the latter call the pipeline with precomputed prompt embeddings and no text encoders.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hv_tune.errors import HvTuneError
from hv_tune.io import atomic_write
from hv_tune.media.writer import frame_times, write_h264
from hv_tune.models.base import LoadOptions, ModelSpec

OFFLOAD_MODES = ("none", "text-encoders", "model")


@dataclass
class SampleRequest:
    prompt: str
    frames: int = 33
    height: int = 320
    width: int = 512
    steps: int = 30
    shift: float = 7.0
    guidance: float = 6.0
    seed: int = 0
    #: frame rate of the mp4; None = the model's (``spec.video.fps``)
    fps: float | None = None
    #: the first frame (PIL image) when the spec's ``sample_input`` is ``image``; the pipeline then picks
    #: the output size from it
    image: Any = None
    #: negative prompt (a prompt line's ``--n``): the unconditional side of classifier-free guidance
    negative_prompt: str | None = None
    #: classifier-free guidance scale (a prompt line's ``--l``); what it means is the family's
    #: (``PipelineAdapter.call_arguments``); None = not given
    cfg_scale: float | None = None


def read_first_frame(path: str | Path, what: str, fix: str = "") -> Any:
    """The image at ``path`` as an upright RGB PIL image (read through ``hv_tune.media``, as the cache does).
    ``fix`` (what the user can do) ends the error message.

    Raises:
        HvTuneError: naming ``what`` (the option or key) and the file when it is missing or unreadable.
    """
    from PIL import Image

    from hv_tune.media import MediaError, read_image

    if not Path(path).is_file():
        raise HvTuneError(f"{what}: image {path} does not exist{fix}")
    try:
        return Image.fromarray(read_image(path))
    except MediaError as e:
        raise HvTuneError(f"{what}: {path} cannot be used as the first frame: {e}{fix}") from e


def load_pipeline(
    spec: ModelSpec,
    model: str,
    loras: list[tuple[str, float]],
    device: str,
    dtype: torch.dtype,
    vae_tiling: bool = False,
    offload: str = "none",
    opts: LoadOptions | None = None,
) -> Any:
    """The pipeline of a model folder with LoRAs (path, scale) loaded through diffusers.

    ``.diff`` / ``.diff_b`` deltas of a LoRA are added to the transformer's weights. Adapters of
    the other types in PEFT's layout (``hv_tune.lora.read_peft_adapter``): LoKr and LoHa are folded
    into the weights through PEFT (``fold_peft_adapter``) before any LoRA is loaded; DoRA loads through
    diffusers like a LoRA.

    Args:
        vae_tiling: decode in tiles (much less memory for long or large videos).
        offload: ``none`` (everything on ``device``), ``text-encoders`` (text encoders stay
            on the CPU and visit ``device`` only to encode: see ``prompt_embeds``), or
            ``model`` (diffusers' model CPU offload: each component visits the GPU in turn).
        opts: load options with single-file components (``LoadOptions.transformer_path``, ``vae_path``).
    """
    if offload not in OFFLOAD_MODES:
        raise HvTuneError(f"--offload {offload}: use one of {', '.join(OFFLOAD_MODES)}")
    from hv_tune.lora import fold_peft_adapter, read_peft_adapter

    pipe = spec.pipeline.load(opts if opts is not None else LoadOptions(model, dtype))
    names, scales = [], []
    peft_files = [read_peft_adapter(spec, path) for path, _ in loras]  # DoRA / LoKr / LoHa in PEFT's layout
    for (path, scale), adapter in zip(loras, peft_files):  # folded first: LoRA wrappers must come after
        if adapter is not None and adapter.type in ("lokr", "loha"):
            fold_peft_adapter(pipe.transformer, adapter, scale, path)
    with tempfile.TemporaryDirectory(prefix="hv-tune-lora-") as tmp:
        for i, ((path, scale), adapter) in enumerate(zip(loras, peft_files)):
            if adapter is not None and adapter.type in ("lokr", "loha"):
                continue
            if adapter is not None:  # DoRA: the family's diffusers file, read by diffusers' loader
                file, diffs = str(spec.save_lora(Path(tmp) / str(i), adapter.state, adapter.config)), {}
            else:
                file, diffs, others = as_diffusers_lora(spec, path, model, Path(tmp) / f"{i}.safetensors")
                diffs = {**diffs, **other_type_deltas(pipe.transformer, others)}
            apply_deltas(pipe.transformer, diffs, scale)
            if file is not None:
                spec.pipeline.load_lora(pipe, file, f"lora{i}")
                names.append(f"lora{i}")
                scales.append(scale)
    if names:
        spec.pipeline.set_lora_scales(pipe, names, scales)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if offload == "model":
        if device == "cpu":
            raise HvTuneError("--offload model needs a GPU (there is nothing to offload to on the CPU)")
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "text-encoders":
        pipe.transformer.to(device)
        pipe.vae.to(device)
    else:
        pipe.to(device)
    return pipe


def as_diffusers_lora(
    spec: ModelSpec, path: str, model: str, scratch: Path
) -> tuple[str | None, dict[str, torch.Tensor], dict[str, Any]]:
    """``path`` read by our reader and written to ``scratch`` as the family's diffusers file.

    Every file goes through the one reader (``read_lora``: any layout, NaN/inf and other model
    families refused, alpha resolved from the file, its metadata or the files beside it) and the
    family's own writer (``spec.save_lora``: alpha in the metadata for the pipeline loader, or
    folded into ``lora_B`` for the model-level loader). So a checkpoint's ``adapter.safetensors``
    (PEFT names without ``transformer.``), a file whose alpha the loader would not see, and kohya or
    ComfyUI files all load at the strength they were trained with; diffusers also reads a
    final-layer LoRA of the original format wrongly (docs/lora-formats.md).

    Returns:
        The file to load (None when the file has no plain LoRA layers), its ``.diff`` / ``.diff_b``
        deltas by diffusers parameter name (a LoRA file cannot carry them: ``apply_deltas``), and its
        DoRA / LoKr / LoHa layers by module name (ComfyUI or musubi-tuner layouts; ``other_type_deltas``).
    """
    from hv_tune.export.adapters import type_name
    from hv_tune.export.formats import Layout, unknown_keys_policy
    from hv_tune.export.lora_io import read_lora, write_lora

    shapes = spec.linear_shapes(model)
    lora = read_lora(spec, path, shapes)
    unknown_keys_policy(path, lora.unknown, False, "convert it with --skip-unknown first")
    plain = {k: m for k, m in lora.modules.items() if type_name(m) == "lora"}
    others = {k: m for k, m in lora.modules.items() if type_name(m) != "lora"}
    if not plain:
        return None, lora.diffs, others
    file = write_lora(spec, plain, scratch, Layout.DIFFUSERS, shapes, family=lora.family)
    return str(file), lora.diffs, others


def other_type_deltas(transformer: torch.nn.Module, modules: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weight updates ``W' - W`` (float32, by parameter name) of DoRA / LoKr / LoHa layers, computed
    by the same functions as ``merge`` (``hv_tune.export.adapters.adapter_delta``; DoRA reads the base)."""
    from hv_tune.export.adapters import adapter_delta

    return {f"{name}.weight": adapter_delta(m, transformer.get_submodule(name).weight) for name, m in modules.items()}


@torch.no_grad()
def apply_deltas(transformer: torch.nn.Module, diffs: Mapping[str, torch.Tensor], scale: float) -> None:
    """Add ``scale * delta`` to the transformer's parameters (in float32, stored in their dtype).

    Raises:
        HvTuneError: naming a delta that fits no parameter.
    """
    params = dict(transformer.named_parameters())
    for name, delta in diffs.items():
        target = params.get(name)
        if target is None or tuple(target.shape) != tuple(delta.shape):
            raise HvTuneError(f"LoRA delta {name} {tuple(delta.shape)} fits no parameter of the transformer")
        target.copy_((target.float() + scale * delta.to(target.device).float()).to(target.dtype))


def offloaded_prompt_embeds(
    spec: ModelSpec, pipe: Any, prompt: str, device: str, negative_prompt: str | None = None
) -> dict[str, torch.Tensor]:
    """Encode ``prompt`` (and ``negative_prompt``, where given) with the pipeline's own text encoders (however
    many: its ``text_encoder*`` components), moved to ``device`` only while they run."""
    encoders = [m for name, m in pipe.components.items() if name.startswith("text_encoder") and m is not None]
    for enc in encoders:
        enc.to(device)
    try:
        return spec.pipeline.prompt_embeds(pipe, prompt, device, negative_prompt)
    finally:
        for enc in encoders:
            enc.to("cpu")
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def generate(
    spec: ModelSpec, pipe: Any, req: SampleRequest, embeds: Mapping[str, torch.Tensor] | None = None
) -> np.ndarray:
    """Frames [F, H, W, 3] uint8 for one prompt, deterministic for a fixed seed.

    Args:
        spec: the family of ``pipe`` (its call arguments: size or first frame, guidance).
        embeds: precomputed prompt embeddings (keyword arguments of the pipeline call, the negative
            prompt's included); the prompt texts (``req.prompt``, ``req.negative_prompt``) are used when None.
    """
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=req.shift)
    prompt: dict[str, Any] = dict(embeds) if embeds is not None else {"prompt": req.prompt}
    if embeds is None and req.negative_prompt is not None:
        prompt["negative_prompt"] = req.negative_prompt
    guidance = spec.pipeline.call_arguments(pipe, req.height, req.width, req.image, req.guidance, req.cfg_scale)
    out = pipe(
        **prompt,
        **guidance,  # size or first frame, guidance
        num_frames=req.frames,
        num_inference_steps=req.steps,
        generator=torch.Generator("cpu").manual_seed(req.seed),
        output_type="np",
    )
    return (np.clip(out.frames[0], 0.0, 1.0) * 255).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """H.264 mp4 (yuv420p, x264's default quality) at ``fps`` frames per second for several frames,
    PNG for one; written atomically by ``hv_tune.media.write_h264`` (the project's one writer)."""
    path = Path(path)

    def write_mp4(tmp: Path) -> None:
        write_h264(tmp, [frames], frame_times(len(frames), fps), crf=None, preset=None)

    def write_png(tmp: Path) -> None:
        from PIL import Image

        Image.fromarray(frames[0]).save(tmp, format="PNG")

    return atomic_write(path, write_png if path.suffix.lower() == ".png" else write_mp4)
