"""Decoders compared on the access patterns of curation and the cache, and checked for correctness.

    python -m bench.decoders [--videos 6] [--seconds 4] [--repeats 3]   # from the repository root

Decoders: torchcodec and PyAV through ``hv_tune.media.VideoFrames`` (what the project runs),
and decord 0.6.0 through its own reader (if installed; the project no longer uses it).
Patterns, on generated clips of several sizes and display rotations (24 fps):

- ``scene``: every frame, in order, at the detection width (256), 64 frames per call.
- ``score``: a few seeks per clip (5 frames spread over the file) at short side 256.
- ``cut``: frames 24..72 in order at full size, 8 frames per call.
- ``cache``: two time-resampled windows of 33 frames (24 fps clock) at short side 256.

Each time is the minimum over ``--repeats`` alternating rounds, one process, one decoder
thread. Correctness: on tests/media_files.py media, each decoder must give upright frames for
rotations 90/180/270, the right frames of a variable-rate clip, an AV1 clip, a 48x32 clip at
full size, and the decodable prefix of a truncated file. Prints one JSON object.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it as a module from the repository root: python -m bench.decoders")

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hv_tune.data.buckets import resampled_by_time
from hv_tune.media import MediaError, VideoFrames, probe_video, scaled_size
from hv_tune.media.probe import torchcodec_available
from tests.media_files import marked_frames, top_is_red, vfr_times, write_video

CLIPS = [((640, 480), 0), ((480, 640), 90), ((640, 360), 0), ((360, 640), -90), ((480, 480), 180), ((1280, 720), 0)]


class DecordFrames:
    """decord 0.6.0 as the project used it: resize inside the decoder (width a multiple of 32)."""

    def __init__(self, path: str, probe: Any, size: tuple[int, int] | None):
        import decord

        w, h = size or (probe.width, probe.height)
        kw = {} if (w, h) == (probe.width, probe.height) else {"width": w, "height": h}
        self.vr = decord.VideoReader(path, num_threads=1, **kw)

    def get(self, indices: list[int]) -> np.ndarray:
        return self.vr.get_batch(list(indices)).asnumpy()


def readers() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if torchcodec_available():
        out["torchcodec"] = lambda p, pr, s: VideoFrames(p, dataclasses.replace(pr, backend="torchcodec"), s)
    out["pyav"] = lambda p, pr, s: VideoFrames(p, dataclasses.replace(pr, backend="pyav"), s)
    try:
        import decord  # noqa: F401

        out["decord"] = DecordFrames
    except ImportError:
        pass
    return out


def patterns(path: str, probe: Any, open_fn: Any) -> dict[str, float]:
    """Seconds of each access pattern on one file."""
    n, w, h = probe.num_frames, probe.width, probe.height
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    r = open_fn(path, probe, scaled_size(w, h, max(2, int(256 * min(w, h) / w))))
    for s in range(0, n, 64):
        r.get(range(s, min(n, s + 64)))
    t["scene"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = open_fn(path, probe, scaled_size(w, h, 256))
    r.get([int(x) for x in np.linspace(0, n - 1, 5)])
    t["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = open_fn(path, probe, None)
    for s in range(24, min(n, 72), 8):
        r.get(range(s, min(n, 72, s + 8)))
    t["cut"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = open_fn(path, probe, scaled_size(w, h, 256, multiple=32))
    idx = resampled_by_time(probe.times, probe.end_time, 24.0)
    for start in (0, len(idx) // 2):
        r.get(idx[start : start + 33])
    t["cache"] = time.perf_counter() - t0
    return t


def speed(folder: Path, videos: int, seconds: float, repeats: int) -> dict[str, dict[str, float]]:
    files = []
    for i in range(videos):
        (w, h), rot = CLIPS[i % len(CLIPS)]
        frames = marked_frames(int(seconds * 24), h, w, seed=i)
        path = write_video(folder / f"v{i}.mp4", frames, fps=24, rotation=rot)
        files.append((str(path), probe_video(path)))
    best: dict[str, dict[str, float]] = {}
    opens = readers()
    for _ in range(repeats):
        for name, open_fn in opens.items():
            total: dict[str, float] = {}
            for path, probe in files:
                for k, v in patterns(path, probe, open_fn).items():
                    total[k] = total.get(k, 0.0) + v
            best[name] = {k: round(min(v, best.get(name, {}).get(k, v)), 4) for k, v in total.items()}
    return best


def correctness(folder: Path) -> dict[str, dict[str, str]]:
    """``ok`` or the failure, per decoder and media case."""
    cases: dict[str, Any] = {}
    for rot in (90, 180, 270):
        cases[f"rotation{rot}"] = (write_video(folder / f"r{rot}.mp4", marked_frames(12, 320, 176, 1), rotation=rot),
                                   marked_frames(12, 320, 176, 1))
    pts = vfr_times()
    vfr_src = marked_frames(len(pts), 64, 96, 3)
    cases["vfr"] = (write_video(folder / "vfr.mp4", vfr_src, fps=48, pts_s=pts), vfr_src)
    av1_src = marked_frames(96, 96, 128, 2)
    cases["av1"] = (write_video(folder / "av1.mp4", av1_src, fps=24, codec="libsvtav1"), av1_src)
    tiny_src = marked_frames(24, 32, 48, 4)
    cases["tiny48x32"] = (write_video(folder / "tiny.mp4", tiny_src), tiny_src)
    full = write_video(folder / "full.mkv", marked_frames(48, 96, 128, 5)).read_bytes()  # index-free container
    (folder / "trunc.mkv").write_bytes(full[: len(full) * 2 // 3])  # a recording cut off: a decodable prefix
    cases["truncated"] = (folder / "trunc.mkv", None)
    out: dict[str, dict[str, str]] = {}
    for name, open_fn in readers().items():
        out[name] = {c: _check(str(p), src, open_fn) for c, (p, src) in cases.items()}
    return out


def _check(path: str, src: np.ndarray | None, open_fn: Any) -> str:
    try:
        probe = probe_video(path)
        n = probe.num_frames
        if src is not None and n != len(src):
            return f"probe counts {n} frames, file has {len(src)}"
        full = open_fn(path, probe, None).get(list(range(n)))  # sequential, full size (cutting)
        small = open_fn(path, probe, scaled_size(probe.width, probe.height, 32))
        seek = small.get([n - 1, 0, n // 2])  # seeks, reduced size
        if full.shape[1:3] != (probe.height, probe.width):
            return f"full size {full.shape[2]}x{full.shape[1]} != {probe.width}x{probe.height}"
        if src is not None:
            err = np.abs(full.astype(float) - src[:, : full.shape[1], : full.shape[2]]).mean(axis=(1, 2, 3))
            shifted = np.abs(full[1:].astype(float) - src[:-1, : full.shape[1], : full.shape[2]]).mean()
            if err.max() > 12 or err.mean() >= shifted:
                return f"wrong pixels or frames (mean error {err.mean():.1f}, shifted {shifted:.1f})"
        if not (all(top_is_red(f) for f in full) and all(top_is_red(f) for f in seek)):
            return "not upright"
        return "ok"
    except (MediaError, RuntimeError, ValueError, IndexError) as e:
        return "fails: " + " ".join(str(e).split())[:120]
    except Exception as e:  # decord raises its own error types
        return f"fails: {type(e).__name__}: " + " ".join(str(e).split())[:100]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "speed").mkdir()
        (Path(tmp) / "check").mkdir()
        seconds = speed(Path(tmp) / "speed", args.videos, args.seconds, args.repeats)
        checks = correctness(Path(tmp) / "check")
    correct = {d: all(v == "ok" for v in c.values()) for d, c in checks.items()}
    fastest = {p: min((d for d in seconds if correct[d]), key=lambda d: seconds[d][p], default=None)
               for p in ("scene", "score", "cut", "cache")}
    print(json.dumps({"bench": "decoders", "videos": args.videos, "seconds_each": args.seconds,
                      "sizes": [f"{w}x{h} rot{r}" for (w, h), r in CLIPS[: args.videos]], "seconds": seconds,
                      "correct": checks, "fastest_correct": fastest,
                      "machine": platform.processor() or platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
