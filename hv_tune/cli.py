"""Command line: ``python finetune.py VERB ...``. Each verb parses, then calls one function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hv_tune.errors import HvTuneError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_tiny.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune.py",
        description="hv-tune: train HunyuanVideo style LoRAs from your own videos.",
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = sub.add_parser("tiny-model", help="write a tiny random HunyuanVideo model folder (diffusers format)")
    t.add_argument("out_dir", type=Path, help="folder to create")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    tr = sub.add_parser("train", help="train a LoRA from a cache, as configured")
    tr.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
    tr.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="resume from the newest checkpoint in output_dir, or from checkpoint folder PATH",
    )
    tr.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. lora.rank=16")

    c = sub.add_parser("cache", help="encode data.sources into data.cache_dir (latents + text embeddings)")
    c.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
    c.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")

    s = sub.add_parser("sample", help="generate a preview video with diffusers' HunyuanVideoPipeline")
    s.add_argument("--model", required=True, help="diffusers-format model folder or hub id")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="LoRA file, repeatable")
    s.add_argument("--prompt", required=True)
    s.add_argument("--frames", type=int, default=33, help="4k+1 frames")
    s.add_argument("--height", type=int, default=320)
    s.add_argument("--width", type=int, default=512)
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--shift", type=float, default=7.0, help="flow shift of the scheduler")
    s.add_argument("--guidance", type=float, default=6.0, help="embedded guidance scale")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, type=Path, help="preview.mp4, or x.png for one frame")

    d = sub.add_parser("demo", help="tiny model + generated clips -> cache -> train -> sample (CPU, minutes)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for everything the demo makes")
    d.add_argument("--source", type=Path, default=None,
                   help="train on this source (e.g. a curation manifest.jsonl) instead of generated clips")
    d.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides of configs/demo_tiny.yaml")
    return p


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from hv_tune.models import get_spec

    out = get_spec("hunyuan-video").build_tiny(args.out_dir, seed=args.seed)
    print(f"tiny model written to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from hv_tune.config import load_config
    from hv_tune.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    print(f"LoRA written to {result.lora_path}")


def cmd_cache(args: argparse.Namespace) -> None:
    from hv_tune.config import load_config
    from hv_tune.data.encode import build_cache
    from hv_tune.models import get_spec

    cfg = load_config(args.config, args.overrides)
    device = "cuda" if _cuda() else "cpu"
    print(build_cache(get_spec(cfg.model.name), cfg, device).table())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _parse_lora(spec: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` (a path may itself contain ':', so only a numeric suffix is a scale)."""
    path, scale = spec, "1"
    head, sep, tail = spec.rpartition(":")
    if sep and tail.replace(".", "", 1).isdigit():
        path, scale = head, tail
    if not Path(path).is_file():
        raise HvTuneError(f"--lora {spec}: file {path} does not exist")
    return path, float(scale)


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from hv_tune.sampling import SampleRequest, generate, load_pipeline, write_video

    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        raise HvTuneError("--frames must be 4k+1 and --height/--width multiples of 16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = load_pipeline(args.model, [_parse_lora(s) for s in args.lora], device, dtype)
    req = SampleRequest(
        args.prompt, args.frames, args.height, args.width, args.steps, args.shift, args.guidance, args.seed
    )
    print(f"sample written to {write_video(generate(pipe, req), args.out)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from hv_tune.demo import run_demo

    run_demo(args.out, DEMO_CONFIG, args.overrides, source=args.source)


COMMANDS = {"tiny-model": cmd_tiny_model, "cache": cmd_cache, "train": cmd_train, "sample": cmd_sample, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for errors the user can fix)."""
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.verb](args)
    except HvTuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
