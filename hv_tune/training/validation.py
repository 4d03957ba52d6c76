"""Validation during training: preview videos and an eval loss at fixed sigmas.

Every ``validation.every`` steps the main process

- renders ``validation.prompts`` with the family's pipeline built around the *training*
  transformer (adapter active; no second transformer is loaded) into
  ``OUTPUT_DIR/samples/step_NNNNNNNN/`` and logs a frame strip per prompt to TensorBoard;
- measures the flow-matching loss (unweighted MSE) of up to ``eval_items`` cached items at
  the sigmas of fixed quantiles of the training sigma distribution, with latents and noise
  from ``eval_seed``: a deterministic number that compares across steps and runs.

Training must not notice: the model runs in eval mode (no LoRA dropout), every draw uses
an explicit generator, and the global RNG state is restored afterwards (``fork_rng``), so
a run with validation ends with the same LoRA as one without, and resume stays exact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from hv_tune.config import Config
from hv_tune.data.cache import CachedDataset, collate
from hv_tune.diffusion import add_noise, flow_matching_loss, flow_target, sigma_quantiles
from hv_tune.io import atomic_save_safetensors
from hv_tune.media import replace_placeholder
from hv_tune.models.base import LoadOptions, ModelSpec
from hv_tune.prompts import PromptLine, apply_line, read_prompt_file
from hv_tune.sampling import SampleRequest, generate, read_first_frame, write_video

SAMPLES_DIR = "samples"
PROMPT_CACHE = "prompt_embeds.safetensors"
STRIP_FRAMES = 4
#: validation's own progress bars: below the training bar (tqdm gives them the next free line) and
#: cleared when done, so the training bar stays one line; none of them draws random numbers
BAR = {"leave": False, "dynamic_ncols": True}


def eval_generator(seed: int, item: int) -> torch.Generator:
    """CPU generator for eval item ``item``: the same latent sample and noise at every validation."""
    digest = hashlib.sha256(f"eval:{seed}:{item}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def frame_strip(frames: np.ndarray, count: int = STRIP_FRAMES) -> np.ndarray:
    """Up to ``count`` evenly spaced frames side by side: [F, H, W, 3] -> [H, count * W, 3]."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    return np.concatenate(list(frames[idx]), axis=1)


def preview_images(spec: ModelSpec, cfg: Config) -> list[Any]:
    """The first frames of the previews (image-to-video specs), read now so that a bad one stops the
    run before any model is loaded; [] for text-to-video specs or when previews are off.

    Raises:
        ConfigError: images missing for an image-to-video spec, or given for a text-to-video one.
        HvTuneError: an image that does not exist or cannot be read (named).
    """
    from hv_tune.errors import ConfigError

    v = cfg.validation
    if not v.every or not v.prompts:
        return []
    if isinstance(v.prompts, str):  # a prompt file: the first frames are its lines' --i images
        return _file_images(spec, preview_lines(cfg))
    if spec.pipeline.sample_input != "image":
        if v.images:
            raise ConfigError(f"config key 'validation.images': {spec.name} is a text-to-video model; "
                              "remove the images or use an image-to-video model")
        return []
    if len(v.images) != len(v.prompts):
        raise ConfigError(f"config key 'validation.images': {spec.name} previews start from an image: give one "
                          f"image per prompt ({len(v.images)} images, {len(v.prompts)} prompts)")
    fix = ("; set validation.images to one readable first-frame image per validation.prompts entry, "
           "or turn previews off with validation.every=0")
    return [read_first_frame(p, f"validation.images[{i}]", fix) for i, p in enumerate(v.images)]


def _file_images(spec: ModelSpec, lines: list[PromptLine]) -> list[Any]:
    from hv_tune.errors import ConfigError

    images = []
    for line in lines:
        if spec.pipeline.sample_input != "image" and line.image:
            raise ConfigError(f"{line.where}: --i: {spec.name} is a text-to-video model; remove the image")
        if spec.pipeline.sample_input == "image":
            if not line.image:
                raise ConfigError(f"{line.where}: {spec.name} previews start from an image: add --i IMAGE")
            images.append(read_first_frame(line.image, f"{line.where}: --i"))
    return images


def preview_lines(cfg: Config) -> list[PromptLine]:
    """``validation.prompts`` (a list, or a prompt file in musubi-tuner's syntax: ``hv_tune.prompts``) as
    prompt lines, ai-toolkit's ``[trigger]`` replaced by ``data.trigger_word`` (the captions' rule,
    ``hv_tune.media.replace_placeholder``: without a trigger word the placeholder is removed).

    Raises:
        ConfigError: a prompt file that cannot be read or has a bad line (named ``FILE:LINE``).
    """
    v = cfg.validation
    lines = read_prompt_file(v.prompts) if isinstance(v.prompts, str) else [PromptLine(p) for p in v.prompts]
    for line in lines:
        line.prompt = replace_placeholder(line.prompt, cfg.data.trigger_word)[0]
        if line.negative_prompt is not None:
            line.negative_prompt = replace_placeholder(line.negative_prompt, cfg.data.trigger_word)[0]
    return lines


def preview_prompts(cfg: Config) -> list[str]:
    """The preview prompts' texts (``preview_lines``)."""
    return [line.prompt for line in preview_lines(cfg)]


def preview_requests(cfg: Config) -> list[SampleRequest]:
    """One ``SampleRequest`` per preview: the ``validation`` keys, overridden by a prompt file line's settings."""
    v = cfg.validation
    defaults = SampleRequest("", v.frames, v.height, v.width, v.steps, v.shift, v.guidance, v.seed)
    return [apply_line(defaults, line) for line in preview_lines(cfg)]


class Validator:
    """Runs previews and the eval loss on the main process; a no-op when ``validation.every`` is 0."""

    def __init__(self, cfg: Config, spec: ModelSpec, accelerator: Any, opts: LoadOptions, vae_config: Any):
        self.cfg, self.v, self.spec, self.acc, self.opts = cfg, cfg.validation, spec, accelerator, opts
        self.vae_config = vae_config
        self.enabled = self.v.every > 0
        self.requests = preview_requests(cfg) if self.enabled else []
        self.prompts = [r.prompt for r in self.requests]
        self.out = Path(cfg.output_dir) / SAMPLES_DIR
        self.vae: Any = None
        self.embeds: list[dict[str, torch.Tensor]] = []
        self.sigmas = sigma_quantiles(
            self.v.eval_quantiles, cfg.objective.timestep_sampling, cfg.objective.logit_mean,
            cfg.objective.logit_std, cfg.objective.shift,
        )
        self.eval_set: CachedDataset | None = None
        self.images: list[Any] = []
        if self.enabled and accelerator.is_main_process:
            self.images = preview_images(spec, cfg)
            self.embeds = self._prompt_embeds()
            if self.v.eval_items > 0 and len(self.v.eval_quantiles) > 0:
                self.eval_set = CachedDataset(self.v.eval_cache_dir or cfg.data.cache_dir)
                if not self.v.eval_cache_dir:
                    print("validation: eval loss on training items (set validation.eval_cache_dir for held-out ones)")

    # ------------------------------------------------------------------ set-up

    def _prompt_embeds(self) -> list[dict[str, torch.Tensor]]:
        """Embeddings of the preview prompts, encoded once per run (cached under samples/)."""
        if not self.prompts:
            return []
        frames = [r.frames for r in self.requests]
        negatives = [r.negative_prompt for r in self.requests]
        key = json.dumps({"prompts": self.prompts, "negative": negatives, "frames": frames,
                          "model": self.cfg.model.path})
        cache = self.out / PROMPT_CACHE
        if cache.is_file():
            from safetensors import safe_open

            with safe_open(str(cache), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    flat = load_file(str(cache))
                    parts = [k.split(".", 1) for k in flat]
                    return [{k: flat[f"{i}.{k}"] for n, k in parts if n == str(i)} for i in range(len(self.prompts))]
        # on the CPU: next to a transformer on a 24 GB card there is no room for the text encoders
        enc = self.spec.text.load(LoadOptions(self.opts.path, self.opts.dtype, self.opts.revision))
        embeds = [self.spec.pipeline.preview_embeds(enc, r.prompt, r.frames, r.negative_prompt) for r in self.requests]
        del enc
        flat = {f"{i}.{k}": v for i, e in enumerate(embeds) for k, v in e.items()}
        atomic_save_safetensors(cache, flat, {"key": key})
        return embeds

    # ------------------------------------------------------------------ running

    def due(self, step: int) -> bool:
        """Whether ``maybe_run`` validates at ``step`` (a multiple of ``validation.every``)."""
        return self.enabled and step % self.v.every == 0

    def maybe_run(self, step: int, model: Any) -> None:
        """Validate if ``step`` is a multiple of ``validation.every``; every process waits."""
        if not self.due(step):
            return
        if self.acc.is_main_process:
            unwrapped = self.acc.unwrap_model(model)
            was_training = unwrapped.training
            devices = [self.acc.device] if self.acc.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.acc.autocast():
                unwrapped.eval()  # no LoRA dropout (it would also draw from the global RNG)
                try:
                    logs = self.eval_loss(unwrapped)
                    written = self.previews(unwrapped, step)
                finally:
                    unwrapped.train(was_training)
            if logs:
                self.acc.log(logs, step=step)
            shown = f"eval loss {logs['eval/loss']:.4f}" if logs else "no eval loss"
            tqdm.write(f"validation at step {step}: {shown}; {len(written)} preview(s) in {self.out / step_dir(step)}")
        self.acc.wait_for_everyone()

    def eval_loss(self, model: Any) -> dict[str, float]:
        """Mean MSE of v-prediction per sigma quantile over the eval items, and overall."""
        if self.eval_set is None:
            return {}
        n = min(self.v.eval_items, len(self.eval_set))
        dtype, device = self.opts.dtype, self.acc.device
        totals = torch.zeros(len(self.sigmas), dtype=torch.float64)
        for i in tqdm(range(n), desc="validation: eval loss", unit="item", **BAR):
            batch = {k: v.to(device) for k, v in collate([self.eval_set[(i, 0)]]).items()}
            gen = eval_generator(self.v.eval_seed, i)
            x0 = self.spec.sample_latents(self.vae_config, batch["latent_mean"], batch["latent_logvar"], gen)
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device)
            for j, sigma in enumerate(self.sigmas.tolist()):
                s = torch.tensor([sigma], device=device)
                inputs = self.spec.transformer_inputs(add_noise(x0, noise, s), s, batch, self.cfg.training.guidance_scale,
                                                      dtype)
                pred = model(**inputs)[0]
                totals[j] += flow_matching_loss(pred, flow_target(x0, noise), torch.ones(1, device=device)).item()
        per_q = totals / n
        logs = {"eval/loss": per_q.mean().item()}
        logs.update({f"eval/loss_q{q:g}": v for q, v in zip(self.v.eval_quantiles, per_q.tolist())})
        return logs

    def previews(self, model: Any, step: int) -> list[Path]:
        """Render every preview prompt; write mp4 (png for 1 frame) and log frame strips."""
        if not self.embeds:
            return []
        if self.vae is None:
            self.vae = self.spec.load_vae(self.opts)
            if self.v.vae_tiling:
                self.vae.enable_tiling()
        device = self.acc.device
        self.vae.to(device)
        try:
            pipe = self.spec.pipeline.from_parts(self.opts, model, self.vae)
            written = []
            for i, (req, emb) in enumerate(zip(self.requests, self.embeds)):
                # the pipeline's bar over the denoising steps, one per preview
                pipe.set_progress_bar_config(desc=f"validation: preview {i + 1}/{len(self.prompts)}", unit="step",
                                             disable=False, **BAR)
                req.image = self.images[i] if self.images else None
                frames = generate(self.spec, pipe, req, {k: t.to(device) for k, t in emb.items()})
                ext = "png" if req.frames == 1 else "mp4"
                written.append(write_video(frames, self.out / step_dir(step) / f"{i:02d}.{ext}", self.spec.video.fps))
                self._log_image(i, req.prompt, frames, step)
        finally:
            self.vae.to("cpu")
        return written

    def _log_image(self, index: int, prompt: str, frames: np.ndarray, step: int) -> None:
        try:
            writer = self.acc.get_tracker("tensorboard", unwrap=True)
        except ValueError:  # trackers, but no TensorBoard
            return
        if hasattr(writer, "add_image"):  # a blank tracker has none
            writer.add_image(f"preview/{index:02d}", frame_strip(frames), step, dataformats="HWC")
            writer.add_text(f"preview/{index:02d}/prompt", prompt, step)


def step_dir(step: int) -> str:
    """Folder of one validation's previews, named like the checkpoints (``step_00000250``)."""
    return f"step_{step:08d}"
