"""Command line: ``python finetune.py VERB ...``. Each verb parses, then calls one function."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from hv_tune.errors import ConfigError, HvTuneError, Interrupted
from hv_tune.library_logs import drop_unactionable_library_logs

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_tiny.yaml"


def _family_help(default: str | None) -> str:
    """``--model-name``'s help: the registry's names, and where the family comes from when it is not given."""
    from hv_tune.models import MODEL_SPECS

    names = ", ".join(MODEL_SPECS)
    if default:
        return f"model family (a model.name): one of {names}; default {default}"
    return f"model family (a model.name): one of {names}; default: from the model folder's model_index.json"


def _parser() -> argparse.ArgumentParser:
    from hv_tune.models import DEFAULT_MODEL

    p = argparse.ArgumentParser(
        prog="finetune.py",
        description="hv-tune: train HunyuanVideo style LoRAs from your own videos.",
        epilog="exit codes: 0 done; 2 an error you can fix (the message names the file or key); "
               "130 / 143 training stopped by SIGINT / SIGTERM after saving a checkpoint (resume with --resume)",
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = sub.add_parser("tiny-model", help="write a tiny random HunyuanVideo model folder (diffusers format)")
    t.add_argument("out_dir", type=Path, help="folder to create")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    t.add_argument("--model-name", default=DEFAULT_MODEL, help=_family_help(DEFAULT_MODEL))

    tr = sub.add_parser("train", help="train a LoRA from a cache, as configured")
    tr.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
    tr.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="resume from the newest readable checkpoint in output_dir, or from checkpoint folder PATH",
    )
    tr.add_argument("--resume-anyway", action="store_true",
                    help="resume although keys that change the training trajectory differ from the checkpoint's "
                         "config (the new values take effect; the run is marked as not exact)")
    tr.add_argument("--overwrite", action="store_true",
                    help="start a fresh run in an output_dir that holds another run, moving that run's files "
                         "into output_dir/previous-runs/ first")
    tr.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. lora.rank=16")
    tr.add_argument("--gpu-memory", default=None, metavar="SIZE",
                    help="card memory for the fit check, e.g. 16GB (default: memory.gpu_memory, else detected)")

    pl = sub.add_parser("plan", help="predict peak GPU memory per memory preset (meta device, no weights loaded)")
    pl.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
    pl.add_argument("--gpu-memory", default=None, metavar="SIZE",
                    help="card memory, e.g. 16GB (default: memory.gpu_memory, else the CUDA device's)")
    pl.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")

    c = sub.add_parser("cache", help="encode data.sources into data.cache_dir (latents + text embeddings)")
    c.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
    c.add_argument("--verify", action="store_true",
                   help="read every file of the existing cache and report broken ones (encodes nothing)")
    c.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")

    s = sub.add_parser("sample", help="generate a preview video with the model's diffusers pipeline")
    s.add_argument("--model", required=True, help="diffusers-format model folder or hub id")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="LoRA file (diffusers, ComfyUI, ComfyUI-internal or kohya format), repeatable; default scale 1")
    s.add_argument("--transformer", default=None, metavar="FILE",
                   help="transformer from one original-layout .safetensors (configs from --model)")
    s.add_argument("--vae", default=None, metavar="FILE", help="VAE from one .safetensors (config from --model)")
    s.add_argument("--prompt", default=None, help="the prompt (or --from-file)")
    s.add_argument("--from-file", default=None, metavar="FILE", type=Path,
                   help="render every line of a prompt file (musubi-tuner's syntax: PROMPT --w W --h H --f F --d SEED "
                        "--s STEPS --g GUIDANCE --fs SHIFT --i IMAGE; # comments) into --out as a folder (NN.mp4)")
    s.add_argument("--frames", type=int, default=None,
                   help="frame count the model takes, 4k+1 for HunyuanVideo (default 33; 1 for a .png --out)")
    s.add_argument("--image", default=None, metavar="FILE",
                   help="first frame for an image-to-video model (its model_index.json names an image-to-video "
                        "pipeline); that pipeline picks the output size from the image")
    s.add_argument("--height", type=int, default=None,
                   help="multiple of the model's pixel multiple (16); default 320; not with --image")
    s.add_argument("--width", type=int, default=None,
                   help="multiple of the model's pixel multiple (16); default 512; not with --image")
    s.add_argument("--steps", type=int, default=30, help="denoising steps, >= 1 (default 30)")
    s.add_argument("--shift", type=float, default=7.0, help="flow shift of the scheduler, > 0 (default 7)")
    s.add_argument("--guidance", type=float, default=6.0,
                   help="guidance scale, >= 0: embedded guidance (HunyuanVideo), classifier-free guidance (1.5)")
    s.add_argument("--model-name", default=None, help=_family_help(None))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fps", type=int, default=None, help="frame rate of the mp4, >= 1 (default: the model's, 24)")
    s.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 on GPU, fp32 on CPU")
    s.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (less memory)")
    s.add_argument("--offload", choices=["none", "text-encoders", "model"], default="none",
                   help="text-encoders: keep the text encoders on the CPU except while encoding; "
                        "model: diffusers' model CPU offload (GPU only)")
    s.add_argument("--out", required=True, type=Path,
                   help="preview.mp4, or x.png for one frame; with --from-file a folder (00.mp4, 01.png, ...)")

    m = sub.add_parser("merge", help="merge LoRAs into the base transformer and write a merged model")
    m.add_argument("--model", required=True, type=Path, help="diffusers-format model folder (local)")
    m.add_argument("--lora", action=_LoraAction, dest="loras", default=[], metavar="FILE[:SCALE]", required=True,
                   help="LoRA file (diffusers, ComfyUI, ComfyUI-internal or kohya format), repeatable")
    m.add_argument("--transformer", default=None, metavar="FILE",
                   help="base transformer from one original-layout .safetensors instead of --model's folder")
    m.add_argument("--scale", action=_ScaleAction, dest="loras", type=float, metavar="S",
                   help="scale of the --lora just before it (default 1)")
    m.add_argument("--out", required=True, type=Path,
                   help="new model folder (diffusers format), or FILE.safetensors (--format original)")
    m.add_argument("--format", choices=["diffusers", "original"], default="diffusers",
                   help="original: one safetensors transformer with Tencent's names (ComfyUI diffusion model)")
    m.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="dtype of the merged weights (default: the base's)")
    m.add_argument("--max-shard-size", default="5GB",
                   help="largest transformer shard (diffusers format): 5GB, 500MB, 2GiB or bytes")
    m.add_argument("--copy", action="store_true", help="copy the other components instead of hard-linking them")
    m.add_argument("--skip-unknown", action="store_true", help="leave out (and list) LoRA keys naming no layer")
    m.add_argument("--model-name", default=None, help=_family_help(None))
    m.add_argument("--allow-repeat", action="store_true",
                   help="merge a LoRA (recognised by content) that the base already holds or that is given twice; "
                        "its update then counts twice")

    c = sub.add_parser("convert", help="convert a LoRA file between diffusers, ComfyUI and kohya formats")
    c.add_argument("input", type=Path, help="LoRA file (format detected from its keys)")
    c.add_argument("output", type=Path, help="file to write (.safetensors)")
    c.add_argument("--to", required=True, choices=["diffusers", "comfyui", "kohya", "comfyui-internal", "original"],
                   help="comfyui (alias original): what ComfyUI's LoRA loader maps; kohya: musubi-tuner; "
                        "comfyui-internal: ComfyUI's own module names")
    c.add_argument("--model", default=None,
                   help="model folder the LoRA is for (layer sizes); default: the full-size architecture")
    c.add_argument("--model-name", default=None, help=_family_help(None))
    c.add_argument("--rank-check", action="store_true",
                   help="re-read the output, check each layer's update equals the input's, print ranks")
    c.add_argument("--skip-unknown", action="store_true", help="leave out (and list) keys naming no layer")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file (never the input)")
    c.add_argument("--svd-rank", type=int, default=None, metavar="K",
                   help="write plain LoRA: DoRA/LoKr/LoHa layers and weight deltas become their best rank-K LoRA "
                        "(truncated SVD: an approximation; its measured error is printed)")

    d = sub.add_parser("demo", help="tiny model + generated clips -> cache -> train -> sample (CPU, minutes)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for everything the demo makes")
    d.add_argument("--source", type=Path, default=None,
                   help="train on this source (e.g. a curation manifest.jsonl) instead of generated clips")
    d.add_argument("--model-name", default=None, help=_family_help(DEFAULT_MODEL) + " (of the tiny model)")
    d.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides of configs/demo_tiny.yaml")
    return p


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from hv_tune.models import spec_for

    out = spec_for(args.model_name, None, "--model-name").build_tiny(args.out_dir, seed=args.seed)
    print(f"tiny model written to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from hv_tune.training.plan import config_for_training
    from hv_tune.training.trainer import train

    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        # `--resume lora.rank=8`: argparse took the override as --resume's PATH
        args.overrides, args.resume = [args.resume, *args.overrides], True
    cfg, plan = config_for_training(args.config, args.overrides, args.gpu_memory)  # stops before weights load
    print(plan)
    _say_hub(cfg.model.path)
    if args.resume_anyway and not args.resume:
        raise HvTuneError("--resume-anyway goes with --resume")
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, resume_anyway=args.resume_anyway)
    print(f"LoRA written to {result.lora_path}")


def cmd_plan(args: argparse.Namespace) -> None:
    from hv_tune.training.plan import format_plan, plan_config

    print(format_plan(plan_config(args.config, args.overrides, args.gpu_memory)[0]))


def cmd_cache(args: argparse.Namespace) -> None:
    from hv_tune.config import load_config
    from hv_tune.data.encode import build_cache
    from hv_tune.errors import DataError
    from hv_tune.models import spec_for

    cfg = load_config(args.config, args.overrides)
    if args.verify:
        return _verify_cache(cfg.data.cache_dir, args.config)
    _say_hub(cfg.model.path)
    device = "cuda" if _cuda() else "cpu"
    summary = build_cache(spec_for(cfg.model.name, cfg.model.path), cfg, device)
    print(summary.table())
    if summary.items == 0:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in summary.skipped[:10]) or "the sources list no media"
        raise DataError(f"the cache {cfg.data.cache_dir} is empty: no usable item ({reasons}); "
                        "fix or add data.sources and run `cache` again")


def _verify_cache(cache_dir: str, config: Path) -> None:
    from hv_tune.data.cache import broken_files, describe_broken, read_index
    from hv_tune.errors import DataError
    from hv_tune.io import count

    entries = read_index(cache_dir)
    broken = broken_files(cache_dir, entries, full=True)
    if broken:
        listing = "\n  ".join(describe_broken(cache_dir, *b) for b in broken)
        raise DataError(f"{count(len(broken), 'broken file')} in the cache {cache_dir}:\n  {listing}\n"
                        f"re-encode them with `finetune.py cache --config {config}` (needs their sources)")
    print(f"cache {cache_dir}: {count(len(entries), 'item')}, every file reads back complete and finite")


def _say_hub(model: str) -> None:
    from hv_tune.paths import check_model_path

    if check_model_path(model, "model.path") == "hub":
        print(f"model {model!r} is not a local folder: loading it as a Hugging Face hub id")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _parse_lora(text: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> (FILE, SCALE); a ``:`` not followed by a number is part of the path; FILE may be
    a PEFT / diffusion-pipe folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    path, _, scale = text.rpartition(":")
    try:
        value = float(scale) if path else None
    except ValueError:
        value = None
    if value is None:
        path, value = text, 1.0
    from hv_tune.export.lora_io import adapter_file

    path = str(adapter_file(_expand(path)))  # a PEFT / diffusion-pipe folder: its adapter file
    if not Path(path).is_file():
        bad_scale = ":" in text and Path(_expand(text.rpartition(":")[0])).is_file()
        raise HvTuneError(f"--lora {text}: the scale after ':' must be a number, e.g. {text.rpartition(':')[0]}:0.8"
                          if bad_scale else f"--lora {text}: file {path} does not exist")
    from hv_tune.io import safetensors_problem

    problem = safetensors_problem(path)
    if problem:
        raise HvTuneError(f"--lora {text}: {path} is not a usable LoRA file: {problem}")
    return path, _lora_scale(value, f"--lora {text}", f"{path}:0.8")


def _lora_scale(value: float, flag: str, example: str) -> float:
    """A finite LoRA scale (NaN or inf would make every merged or sampled weight NaN/inf)."""
    import math

    if not math.isfinite(value):
        raise ConfigError(f"{flag}: the scale must be a finite number, e.g. {example}")
    return value


def _expand(path: str | Path) -> str:
    return os.path.expandvars(os.path.expanduser(str(path)))


def _out_path(path: Path, flag: str) -> Path:
    """An output path whose folder can exist (no file in the way)."""
    from hv_tune.paths import check_folder

    out = Path(_expand(path))
    try:
        check_folder(str(out.parent), flag)
    except HvTuneError as e:
        raise HvTuneError(f"{flag} {path}: {str(e).split(': ', 1)[1]}") from e
    return out


class _LoraAction(argparse.Action):
    """``--lora FILE[:SCALE]`` appends [text, None] to a list that ``--scale`` can amend."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append([values, None])


class _ScaleAction(argparse.Action):
    """``--scale S`` sets the scale of the ``--lora`` given just before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        loras = getattr(namespace, self.dest)
        if not loras:
            parser.error("--scale must follow the --lora it applies to")
        loras[-1][1] = values


def _device_dtype(name: str):
    import torch

    from hv_tune.models.base import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, resolve_dtype(name, device)


def cmd_sample(args: argparse.Namespace) -> None:
    from hv_tune.arguments import check_sample_numbers, check_video_shape
    from hv_tune.models import LoadOptions, spec_for
    from hv_tune.paths import check_model_path
    from hv_tune.sampling import SampleRequest, generate, load_pipeline, offloaded_prompt_embeds, write_video

    check_sample_numbers(args.steps, args.shift, args.guidance, args.seed, args.fps)  # before anything is read
    if (args.prompt is None) == (args.from_file is None):
        raise HvTuneError("sample: give either --prompt TEXT or --from-file FILE")
    args.out = _out_path(args.out, "--out")
    args.model = _expand(args.model)
    spec = spec_for(args.model_name, args.model, "--model-name")
    if check_model_path(args.model, "--model") == "hub":
        print(f"--model {args.model!r} is not a local folder: loading it as a Hugging Face hub id")
    if args.from_file is not None:
        return _sample_from_file(args, spec)
    if args.out.suffix.lower() not in (".mp4", ".png"):
        raise HvTuneError(f"--out {args.out}: write an .mp4 (H.264 video) or a .png (one frame)")
    png = args.out.suffix.lower() == ".png"
    frames = args.frames if args.frames is not None else 1 if png else 33
    if png and frames != 1:
        raise HvTuneError(f"--out {args.out}: a .png holds one frame; use --frames 1 or an .mp4 output")
    height = args.height if args.height is not None else 320
    width = args.width if args.width is not None else 512
    check_video_shape(spec, frames, height, width)
    fps = args.fps if args.fps is not None else spec.video.fps
    image = _first_frame(spec, args)
    loras = [_parse_lora(s) for s in args.lora]
    _refuse_sample_inputs(args, loras)
    device, dtype = _device_dtype(args.dtype)
    opts = LoadOptions(args.model, dtype, transformer_path=args.transformer, vae_path=args.vae)
    pipe = load_pipeline(spec, args.model, loras, device, dtype, args.vae_tiling, args.offload, opts)
    req = SampleRequest(args.prompt, frames, height, width, args.steps, args.shift, args.guidance,
                        args.seed, fps, image)
    embeds = None
    if args.offload == "text-encoders":
        embeds = offloaded_prompt_embeds(spec, pipe, args.prompt, device)
        pipe = spec.pipeline.from_parts(LoadOptions(args.model, dtype), pipe.transformer, pipe.vae)  # encoders freed
    print(f"sample written to {write_video(generate(spec, pipe, req, embeds), args.out, fps)}")


def _sample_from_file(args: argparse.Namespace, spec) -> None:
    """``sample --from-file``: every line of the prompt file rendered into the folder ``--out`` (``NN.mp4``, or
    ``NN.png`` for a one-frame line), each with its own settings over the flags' values.

    Raises:
        ConfigError: a bad line (named ``FILE:LINE``), an image missing or given where the model takes none.
        HvTuneError: ``--out`` is a file.
    """
    from hv_tune.arguments import check_sample_numbers
    from hv_tune.models import LoadOptions
    from hv_tune.prompts import apply_line, check_line_shape, read_prompt_file
    from hv_tune.sampling import (
        SampleRequest,
        generate,
        load_pipeline,
        offloaded_prompt_embeds,
        read_first_frame,
        write_video,
    )

    lines = read_prompt_file(_expand(args.from_file))
    if args.out.suffix.lower() in (".mp4", ".png") or args.out.is_file():
        raise HvTuneError(f"--out {args.out}: with --from-file, --out is a folder (one file per line)")
    fps = args.fps if args.fps is not None else spec.video.fps
    defaults = SampleRequest("", args.frames or 33, args.height or 320, args.width or 512, args.steps, args.shift,
                             args.guidance, args.seed, fps)
    requests = []
    for line in lines:  # every line is checked before the model loads
        req = apply_line(defaults, line)
        check_line_shape(spec, line, req.frames, req.height, req.width)
        check_sample_numbers(req.steps, req.shift, req.guidance, req.seed, None)
        image = line.image or (args.image and _expand(args.image))
        if spec.pipeline.sample_input == "image":
            if not image:
                raise HvTuneError(f"{line.where}: {spec.name} is an image-to-video model: give the first frame "
                                  "with --i IMAGE on the line (or --image for every line)")
            req.image = read_first_frame(image, f"{line.where}: --i")
        elif image:
            raise HvTuneError(f"{line.where}: --i: {spec.name} is a text-to-video model; remove the image")
        requests.append(req)
    loras = [_parse_lora(s) for s in args.lora]
    device, dtype = _device_dtype(args.dtype)
    opts = LoadOptions(args.model, dtype, transformer_path=args.transformer, vae_path=args.vae)
    pipe = load_pipeline(spec, args.model, loras, device, dtype, args.vae_tiling, args.offload, opts)
    written = set()
    for i, req in enumerate(requests):
        embeds = None
        if args.offload == "text-encoders":  # the encoders visit the device for each line's prompt only
            embeds = offloaded_prompt_embeds(spec, pipe, req.prompt, device, req.negative_prompt)
        out = args.out / f"{i:02d}.{'png' if req.frames == 1 else 'mp4'}"
        print(f"{lines[i].where}: written to {write_video(generate(spec, pipe, req, embeds), out, fps)}")
        written.add(out.name)
    _note_earlier_outputs(args.out, written)


def _note_earlier_outputs(folder: Path, written: set[str]) -> None:
    """Say which ``NN.mp4``/``NN.png`` in ``folder`` this run did not write (an earlier run's, left as
    they are), so a reused ``--out`` does not pass them off as this prompt file's."""
    import re

    earlier = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d{2,}\.(mp4|png)", p.name)
                     and p.name not in written)
    if earlier:
        shown = ", ".join(earlier[:6]) + (", ..." if len(earlier) > 6 else "")
        print(f"note: {folder} also holds {len(earlier)} file(s) this run did not write ({shown}): an earlier "
              "run's, left as they are; remove them or give a new --out", file=sys.stderr)


def _refuse_sample_inputs(args: argparse.Namespace, loras: list[tuple[str, float]]) -> None:
    """``--out`` is none of the input files (a .png ``--out`` could be the ``--image``)."""
    from hv_tune.arguments import refuse_inputs

    inputs = {"--image": args.image and _expand(args.image), "--transformer": args.transformer,
              "--vae": args.vae, **{f"--lora {p}": p for p, _ in loras}}
    refuse_inputs(args.out, "--out", inputs)


def _first_frame(spec, args: argparse.Namespace):
    """The ``--image`` of an image-to-video model as a PIL image (None for text-to-video models).

    Raises:
        HvTuneError: --image missing for an image-to-video model, given for a text-to-video one,
            given with --height/--width, or not a readable image (named).
    """
    from hv_tune.sampling import read_first_frame

    if spec.pipeline.sample_input != "image":
        if args.image:
            raise HvTuneError(f"--image: {spec.name} is a text-to-video model; use an image-to-video model "
                              "or leave --image out")
        return None
    if not args.image:
        raise HvTuneError(f"{spec.name} is an image-to-video model: give the first frame with --image FILE")
    if args.height or args.width:
        raise HvTuneError("--height/--width do not apply with --image: the image-to-video pipeline takes the size "
                          "from the image (HunyuanVideo 1.5: its aspect ratio and the model's target_size)")
    return read_first_frame(_expand(args.image), "--image")


def cmd_merge(args: argparse.Namespace) -> None:
    from hv_tune.arguments import parse_size
    from hv_tune.export.merge import merge_loras
    from hv_tune.models import spec_for
    from hv_tune.models.base import DTYPES

    max_shard_bytes = parse_size(args.max_shard_size, "--max-shard-size")
    args.out = _out_path(args.out, "--out")
    args.model = Path(_expand(args.model))
    if not args.model.is_dir():
        raise HvTuneError(f"--model {args.model}: no such model folder (merge needs a local diffusers-format folder)")
    loras = []
    for text, scale in args.loras:
        path, parsed = _parse_lora(text)
        if scale is not None:
            parsed = _lora_scale(scale, f"--scale {scale} (of --lora {text})", "--scale 0.8")
        loras.append((path, parsed))
    if args.format == "original" and args.out.suffix != ".safetensors":
        raise HvTuneError(f"--out {args.out}: --format original writes one file; name it *.safetensors")
    result = merge_loras(
        spec_for(args.model_name, str(args.model), "--model-name"), args.model, loras, args.out, args.format,
        DTYPES[args.dtype] if args.dtype else None, max_shard_bytes, args.copy, args.skip_unknown,
        args.transformer and _expand(args.transformer), args.allow_repeat,
    )
    for note in result.notes:
        print(note)
    print(f"merged {len(loras)} LoRA(s) into {result.merged_layers} layers; {result.tensors} tensors "
          f"({result.shards} file(s)) written to {result.out}")


def cmd_convert(args: argparse.Namespace) -> None:
    from hv_tune.arguments import refuse_existing, refuse_inputs
    from hv_tune.export.convert import convert_lora
    from hv_tune.export.lora_io import adapter_file
    from hv_tune.export.merge import base_weights_of
    from hv_tune.io import safetensors_problem
    from hv_tune.models import spec_for

    args.input, args.output = Path(_expand(args.input)), _out_path(args.output, "output")
    args.model = _expand(args.model) if args.model is not None else None
    spec = spec_for(args.model_name, args.model, "--model-name")
    args.input = adapter_file(args.input)  # a PEFT / diffusion-pipe folder: its adapter file
    if not args.input.is_file():
        raise HvTuneError(f"input {args.input}: file does not exist")
    if args.svd_rank is not None and args.svd_rank < 1:
        raise ConfigError(f"--svd-rank {args.svd_rank}: use a rank of 1 or more")
    refuse_inputs(args.output, "output", {"input": args.input})
    refuse_existing(args.output, "output", args.overwrite)
    problem = safetensors_problem(args.input)
    if problem:
        raise HvTuneError(f"input {args.input}: not a usable LoRA file: {problem}")
    if args.model is not None and not Path(args.model, spec.transformer_subfolder, "config.json").is_file():
        raise HvTuneError(f"--model {args.model}: no {spec.transformer_subfolder}/config.json there")
    shapes = spec.linear_shapes(args.model)
    base = base_weights_of(spec, args.model) if args.model is not None else None  # DoRA deltas need them
    result = convert_lora(spec, args.input, args.output, args.to, shapes, args.rank_check, args.skip_unknown,
                          args.svd_rank, base)
    for line in result.notes + result.check:
        print(line)
    print(f"{result.source_format} -> {args.to}: {result.layers} layers written to {result.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from hv_tune.demo import run_demo

    names = [f"model.name={args.model_name}"] if args.model_name else []
    run_demo(args.out, DEMO_CONFIG, [*names, *args.overrides], source=args.source)


COMMANDS = {
    "tiny-model": cmd_tiny_model,
    "cache": cmd_cache,
    "train": cmd_train,
    "plan": cmd_plan,
    "sample": cmd_sample,
    "merge": cmd_merge,
    "convert": cmd_convert,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code.

    0 success; 2 an error the user can fix (message on stderr, no traceback); 128 + N when
    training stopped on signal N after saving a checkpoint (130 SIGINT, 143 SIGTERM); 130 for
    a second Ctrl-C.
    """
    args = _parser().parse_args(argv)
    drop_unactionable_library_logs()
    try:
        code = COMMANDS[args.verb](args)
    except HvTuneError as e:
        if isinstance(e, Interrupted):  # the checkpoint is saved and we are exiting: a 2nd Ctrl-C changes nothing
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # (kept through interpreter shutdown, unlike a handler)
        # a stop the user asked for is reported as what happened, not as an error
        print(str(e) if isinstance(e, Interrupted) else f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted (nothing is saved after the last checkpoint)", file=sys.stderr)
        return 130
    return code or 0
