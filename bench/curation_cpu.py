"""Curation with the tiny CLIP and captions off (model time small, as on a GPU): the CPU side.

``decode_bound``: a folder of 16 clips (four sizes, four display rotations, three lengths, one
cut each) built here; (a) the pipeline's wall time (``curation.pipeline.run``, the model loaded
beforehand), (b) each stage's own work run bare, one stage after another in one process, on
the same files (probe, decode + scene detection, seeks + optical flow, the tiny CLIP, cut
decode + encode of the clips the pipeline accepted), (c) the same bare work spread over the
pipeline's worker count (a warm process pool; CLIP in the calling process).

``many_clips``: N one-second clips; wall time and peak resident memory of the run (the calling
process plus its worker processes, sampled every 0.1 s), also for N/5 clips, to show it is flat.

Used by ``python -m bench.curation --decode-bound`` / ``--many N``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import CurationConfig, load_config
from curation.pipeline import run
from curation.samples import moving_shape
from curation.stages.clip_scores import ClipScores
from curation.tiny import build_tiny_models
from curation.workers import cpu_count, limit_threads, resolve_workers
from hv_tune.media.writer import frame_times, write_h264

REPO = Path(__file__).resolve().parent.parent
SIZES = [(320, 240), (480, 360), (640, 480), (640, 360)]
ROTATIONS = [0, 90, 180, 270]
LENGTHS_S = [3.0, 5.0, 8.0]
FPS = 24


def make_folder(folder: Path, count: int = 16, scale: float = 1.0) -> list[dict[str, Any]]:
    """``count`` clips of several display sizes, rotations and lengths, each with one cut."""
    specs = []
    for i in range(count):
        (w, h), rot, secs = SIZES[i % 4], ROTATIONS[(i // 4) % 4], LENGTHS_S[i % 3] * scale
        n = max(24, int(secs * FPS))
        a = moving_shape(n // 2, h, w, color=i, background=i, texture_seed=i)
        b = moving_shape(n - n // 2, h, w, color=i + 1, background=i + 3, texture_seed=100 + i, speed=1.5)
        display = np.concatenate([a, b])
        stored = np.rot90(display, k=-(rot // 90), axes=(1, 2)) if rot else display  # what a phone stores
        path = folder / f"clip{i:02d}_{w}x{h}_r{rot}.mp4"
        write_h264(path, [np.ascontiguousarray(stored)], frame_times(n, FPS), crf=20, preset="veryfast", rotation=rot)
        specs.append({"file": path.name, "display": f"{w}x{h}", "rotation": rot, "seconds": round(n / FPS, 2)})
    return specs


def tiny_config(models: dict[str, Path], workers: str) -> CurationConfig:
    return load_config(REPO / "configs" / "curation_tiny.yaml", [
        f"clip.model=local-dir:{models['clip']}", f"clip.aesthetic_head={models['aesthetic']}",
        f"caption.model={models['vlm']}", "caption.enabled=false", f"workers={workers}",
        "frames.short_side=256", "scenes.detect_width=256", "scenes.min_scene_len=15", "scenes.min_clip_s=1.0",
    ])


# ----------------------------------------------------------------------------- bare work


def file_work(cfg: CurationConfig, rec: dict[str, Any], cuts: list[dict[str, Any]], cut_dir: str,
              ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One file's CPU work, each stage's own code, no pipeline: probe, decode + scene detection,
    seeks + optical flow of its clips, cut decode + encode of ``cuts``."""
    from curation.stages.cut import write_clip
    from curation.stages.frames import SampleFrames
    from curation.stages.motion import Motion
    from curation.stages.probe import probe_video
    from curation.stages.scenes import SceneSplit

    t, t0 = {}, time.perf_counter()
    rec = {**rec, "probe": probe_video(rec["source"], cfg.probe.max_pixels, cfg.probe.max_duration_s)}
    t["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = SceneSplit(cfg.scenes).one(rec)
    t["scenes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample, readers = SampleFrames(cfg.frames, cfg.motion), {}
    clips = Motion(cfg.motion)([sample.one(c, readers) for c in rec["clips"] if c["status"] == "pending"])
    t["frames+motion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cuts:
        write_clip(c, Path(cut_dir) / f"{c['id']}.mp4", cfg.export.crf)
    t["cut"] = time.perf_counter() - t0
    return clips, t


def cpu_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU time in ticks since boot (Linux ``/proc/stat``, all processes;
    idle and iowait are not busy)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_cores(since: tuple[int, int]) -> float:
    """The mean number of busy cores since the ``cpu_ticks()`` reading ``since`` (on a quiet machine,
    how many cores a phase kept busy)."""
    busy, total = cpu_ticks()
    return round(os.cpu_count() * (busy - since[0]) / max(1, total - since[1]), 2)


def _warm(_: int) -> int:
    import curation.stages.cut  # noqa: F401 - what the jobs import
    import curation.stages.scenes  # noqa: F401

    time.sleep(0.2)
    return os.getpid()


def bare(cfg: CurationConfig, files: list[dict[str, Any]], cuts: dict[str, list], stage: ClipScores,
         out: Path, workers: int) -> tuple[float, dict[str, float]]:
    """The bare work in one process (``workers`` 0) or over a warm pool; (wall seconds, stage seconds)."""
    import multiprocessing

    out.mkdir(parents=True)
    stages: dict[str, float] = {}
    pool = None
    if workers:
        ctx = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=limit_threads,
                                   initargs=(max(1, cpu_count() // workers),))
        list(pool.map(_warm, range(workers * 2)))  # started before the clock: the work is timed, not start-up
    t0 = time.perf_counter()
    args = [(cfg, f, cuts.get(f["source"], []), str(out)) for f in files]
    results = list(pool.map(file_work, *zip(*args))) if pool else [file_work(*a) for a in args]
    clips = [c for r in results for c in r[0]]
    t1 = time.perf_counter()
    for i in range(0, len(clips), cfg.batch_size):
        stage(clips[i : i + cfg.batch_size])
    stages["clip"] = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    for _, t in results:
        for k, v in t.items():
            stages[k] = stages.get(k, 0.0) + v
    if pool:
        pool.shutdown()
    return wall, stages


def decode_bound(workers: str = "auto", scale: float = 3.0, repeats: int = 1) -> dict[str, Any]:
    """The ``--decode-bound`` JSON (see the module docstring): ``repeats`` rounds of pipeline, bare work
    in one process and bare work over the workers, alternating; the minimum of each (the run least
    disturbed by the rest of the machine) and the ratios of the minima, with every sample."""
    from curation.stages.probe import discover

    n = resolve_workers(workers)
    times: dict[str, list[float]] = {"pipeline": [], "bare_1proc": [], "bare_workers": []}
    busy: dict[str, list[float]] = {k: [] for k in times}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_tiny_models(tmp / "models")
        specs = make_folder(tmp / "in", scale=scale)
        cfg = tiny_config(models, workers)
        stage = ClipScores(cfg.clip)
        stage.setup()
        load1 = os.getloadavg()
        files = discover(tmp / "in", cfg.input)
        for r in range(repeats):
            t0, c0 = time.perf_counter(), cpu_ticks()
            result = run(cfg, tmp / "in", tmp / f"pipeline{r}", {"clip": stage})
            times["pipeline"].append(time.perf_counter() - t0)
            busy["pipeline"].append(busy_cores(c0))
            cuts: dict[str, list] = {}
            for rec in result.records:
                if rec["status"] == "accepted" and rec["kind"] == "video":
                    cuts.setdefault(rec["source"], []).append(rec)
            for key, count in (("bare_1proc", 0), ("bare_workers", n)):
                c0 = cpu_ticks()
                wall, stages = bare(cfg, files, cuts, stage, tmp / f"{key}{r}", count)
                times[key].append(wall)
                busy[key].append(busy_cores(c0))
                if count == 0 and wall <= min(times[key]):
                    one_stages = stages
        load2 = os.getloadavg()
    best = {k: min(v) for k, v in times.items()}
    return {
        "mode": "decode-bound: tiny CLIP, captions off", "machine": platform.processor() or platform.machine(),
        "cores": cpu_count(), "load_average_before_after": [round(load1[0], 2), round(load2[0], 2)],
        "files": specs, "clips": len(result.records), "clips_scored": result.clips_scored,
        "clips_cut": sum(len(v) for v in cuts.values()), "workers": n, "repeats": repeats,
        "pipeline_s": round(best["pipeline"], 2), "bare_1proc_s": round(best["bare_1proc"], 2),
        "bare_workers_s": round(best["bare_workers"], 2),
        "ratio_to_1proc": round(best["pipeline"] / best["bare_1proc"], 3),
        "ratio_to_workers": round(best["pipeline"] / best["bare_workers"], 3),
        "samples_s": {k: [round(x, 2) for x in v] for k, v in times.items()}, "busy_cores": busy,
        "bare_1proc_stages_s": {k: round(v, 2) for k, v in one_stages.items()},
        "pipeline_stages": result.stage_table["stages"],
    }


# ----------------------------------------------------------------------------- many clips


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(x) for x in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def _own_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) * 1024


def measured_run(cfg: CurationConfig, inp: Path, out: Path, stage: ClipScores) -> dict[str, Any]:
    """Wall time and peak RSS of one run: this process alone, and with every process below it
    (forkserver, workers, probe processes; pages they share are counted once per process)."""
    peak = {"main": 0, "all": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["main"] = max(peak["main"], _own_rss())
            peak["all"] = max(peak["all"], _tree_rss(os.getpid()))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    result = run(cfg, inp, out, {"clip": stage})
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    return {"clips": len(result.records), "wall_s": round(wall, 2), "peak_rss_main_mb": round(peak["main"] / 2**20),
            "peak_rss_with_workers_mb": round(peak["all"] / 2**20)}


def many_clips(count: int, workers: str = "auto") -> dict[str, Any]:
    """The ``--many N`` JSON: the same run over N/5 and N one-second clips."""
    from curation.samples import write_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_tiny_models(tmp / "models")
        for i in range(count):
            sub = tmp / "in" / ("a" if i < count // 5 else "b")
            write_video(sub / f"c{i:04d}.mp4", moving_shape(12, 96, 128, color=i, background=i, texture_seed=i), 12)
        cfg = tiny_config(models, workers)
        stage = ClipScores(cfg.clip)
        stage.setup()
        small = measured_run(cfg, tmp / "in" / "a", tmp / "out_small", stage)
        full = measured_run(cfg, tmp / "in", tmp / "out_full", stage)
    return {"mode": f"many: {count} one-second 128x96 clips, tiny CLIP, captions off", "workers": resolve_workers(workers),
            "cores": cpu_count(), "load_average": round(os.getloadavg()[0], 2),
            "frames_in_flight": cfg.frames_in_flight, f"run_{count // 5}": small, f"run_{count}": full}
