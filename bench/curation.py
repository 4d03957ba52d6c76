#!/usr/bin/env python
"""Curation throughput with the full-size ViT-L/14 (random weights) and the ratio to bare CLIP.

Generates ``--videos`` clips, runs ``curation.pipeline.run`` with ``configs/curation.yaml``
(captions off: the bench measures scoring), then times ``encode_image`` alone on the same
frames, preprocessed beforehand, in the same batch sizes. Prints one JSON object.

    python -m bench.curation [--videos 12] [--seconds 4] [--size 320x240]   # from the repository root
    python -m bench.curation --decode-bound [--workers auto]   # tiny CLIP: pipeline vs bare stage work
    python -m bench.curation --many 500                          # 500 short clips: wall time, peak RSS

ratio = pipeline wall time (probe, scene split, decode, motion, CLIP, decisions, export,
report; models already loaded) / bare CLIP forward time; medians over ``--repeats`` pairs run
one after the other. The target is <= 1.25: decode,
motion and I/O should hide behind the model.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # as a script, this file would shadow the curation package
    raise SystemExit("run it as a module from the repository root: python -m bench.curation")

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

# Nothing heavy at the top: every worker process of the pipeline imports the main module again
# (Python's spawn/forkserver rule), so a torch import here would cost each worker a second of
# start-up that `python -m curation run` (a light main module) never pays.

REPO = Path(__file__).resolve().parent.parent


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int, fps: int = 24) -> None:
    from curation.samples import moving_shape, write_video

    for i in range(count):
        frames = moving_shape(int(seconds * fps), height, width, color=i, background=i, texture_seed=i)
        write_video(folder / f"video{i:03d}.mp4", frames, fps)


def bare_clip_seconds(stage: Any, records: list[dict], positions: list[float], short_side: int,
                      clips_per_batch: int) -> tuple[float, int]:
    """Time ``encode_image`` of ``stage`` (a set-up ``ClipScores``) alone on the frames the pipeline
    scored, in the pipeline's batch sizes."""
    import numpy as np
    import torch
    from PIL import Image

    from curation.media import open_video, positions_to_indices

    frames = []
    for r in records:
        reader = open_video(r, short_side)
        frames.append(reader.get(positions_to_indices(r["start_frame"], r["end_frame"], positions)))
    per_batch = [np.concatenate(frames[i : i + clips_per_batch]) for i in range(0, len(frames), clips_per_batch)]
    tensors = []
    for batch in per_batch:
        for i in range(0, len(batch), stage.cfg.batch_size):
            tensors.append(torch.stack([stage.preprocess(Image.fromarray(f)) for f in batch[i : i + stage.cfg.batch_size]]))
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in tensors:
            stage.model.encode_image(t)
    return time.perf_counter() - t0, sum(len(t) for t in tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--repeats", type=int, default=2,
                    help="pipeline + bare CLIP pairs (medians reported); --decode-bound: rounds (minima reported)")
    ap.add_argument("--decode-bound", action="store_true",
                    help="tiny CLIP, captions off: the pipeline against its stages' own work run bare (bench.curation_cpu)")
    ap.add_argument("--many", type=int, default=0, metavar="N",
                    help="N short clips, tiny CLIP: wall time and peak memory (bench.curation_cpu)")
    ap.add_argument("--workers", default="auto", help="--decode-bound/--many: the pipeline's workers")
    ap.add_argument("--scale", type=float, default=3.0,
                    help="--decode-bound: clip lengths times this (3.0: over 30 s of bare work on 2 cores)")
    args = ap.parse_args()
    if args.decode_bound or args.many:
        from bench.curation_cpu import decode_bound, many_clips

        out = many_clips(args.many, args.workers) if args.many else decode_bound(args.workers, args.scale, args.repeats)
        print(json.dumps(out, indent=2))
        return
    full_size_clip(args)


def full_size_clip(args: argparse.Namespace) -> None:
    """The default bench: the pipeline with ViT-L/14 against bare CLIP (the module docstring)."""
    import numpy as np
    import torch

    from curation.config import load_config
    from curation.pipeline import run
    from curation.stages.clip_scores import ClipScores
    from curation.tiny import aesthetic_state_dict

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_videos(tmp / "in", args.videos, args.seconds, width, height)
        head = tmp / "sac+logos+ava1-l14-linearMSE.pth"
        torch.save(aesthetic_state_dict(768), head)  # the real layout, random weights
        cfg = load_config(REPO / "configs" / "curation.yaml", [
            "clip.pretrained=null", f"clip.aesthetic_head={head}", "clip.device=cpu", "caption.enabled=false",
        ])
        stage = ClipScores(cfg.clip)
        t0 = time.perf_counter()
        stage.setup()  # ViT-L-14 architecture, random init: nothing is downloaded
        load_s = time.perf_counter() - t0
        with torch.no_grad():  # warm-up (allocator, kernels) so that neither timing pays it
            stage.model.encode_image(torch.zeros(2, 3, 224, 224))
        pairs = []
        for rep in range(args.repeats):  # alternate pipeline and bare runs: the machine's speed drifts
            result = run(cfg, tmp / "in", tmp / f"out{rep}", {"clip": stage})
            scored = [r for r in result.records if r.get("scores")]
            bare_s, images = bare_clip_seconds(stage, scored, cfg.frames.positions, cfg.frames.short_side,
                                               cfg.batch_size)
            pairs.append((result.timings["total_s"], result.stage_s.get("clip", 0.0), bare_s))
    total, score_s, bare_s = (float(np.median([p[i] for p in pairs])) for i in range(3))
    print(json.dumps({
        "model": "open_clip ViT-L-14 (random weights) + LAION aesthetic MLP layout",
        "device": "cpu", "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "videos": args.videos, "video": f"{args.seconds:g} s {width}x{height} 24 fps", "clips": len(result.records),
        "clips_scored": result.clips_scored, "frames_encoded": result.clip_images_encoded,
        "model_load_s": round(load_s, 2), "pipeline_s": round(total, 2),
        "clip_stage_s": round(score_s, 2), "stages": result.stage_table["stages"],
        "clips_per_s": round(len(result.records) / total, 3),
        "bare_clip_forward_s": round(bare_s, 2), "bare_frames": images,
        "ratio_pipeline_to_bare_clip": round(total / bare_s, 3),
        "ratio_clip_stage_to_bare_clip": round(score_s / bare_s, 3),
        "repeats": [{"pipeline_s": round(a, 2), "clip_stage_s": round(b, 2), "bare_s": round(c, 2),
                     "ratio": round(a / c, 3)} for a, b, c in pairs],
    }, indent=2))


if __name__ == "__main__":
    main()
