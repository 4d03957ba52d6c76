"""Worker processes of the local run: the CPU stages over one file (or one clip) per job.

A ``concurrent.futures.ProcessPoolExecutor`` (forkserver on Linux, spawn elsewhere) runs the
jobs below; ``workers: 0`` runs them in the calling process instead (``InlinePool``), with the
same code, so a one-worker run and a many-worker run compute the same thing.

Each worker ignores Ctrl-C (the parent handles it and stops the workers), uses ``threads``
threads in OpenCV and torch (``workers x threads <= cores``), and exits when its parent is gone
(a SIGKILLed run leaves no worker behind). The probe keeps its own time- and memory-limited
process inside each worker (``curation.stages.probe``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.config import CurationConfig

if TYPE_CHECKING:  # (workers never import torch)
    import torch

PRELOAD = ["curation.workers", "curation.stages.probe", "curation.stages.scenes", "curation.stages.frames",
           "curation.stages.motion", "curation.stages.cut", "curation.report", "cv2", "scenedetect.detectors",
           "PIL.Image", "av"]  # PyAV, the decoder of every pattern (torchcodec, the fallback, loads when a file needs it)
_LOCAL: dict[str, Any] = {}  # per worker process: the probe stage (its child process is kept)


def cpu_count() -> int:
    """Cores this process may run on (``workers: auto``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int | str) -> int:
    """``auto`` -> the machine's cores; an integer as it is (0 = in the calling process)."""
    return cpu_count() if workers == "auto" else int(workers)


def limit_threads(threads: int) -> None:
    """OpenCV and torch (when loaded) use at most ``threads`` threads in this process."""
    import cv2

    cv2.setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextmanager
def stream_threads(clip_device: torch.device) -> Iterator[None]:
    """While the stream runs with CLIP on a GPU, the calling process's torch uses one CPU thread (the
    workers hold the cores); restored after. With CLIP on the CPU the count stays as it is.

    Never ``cores - workers``: a CPU matmul's result depends on its thread count in the last bits
    (ViT-L-14: up to 1.6e-6 between 1 and 2 threads), and a run's scores must not depend on
    ``workers``. One thread for a CPU CLIP would halve a model-bound run's speed (it ran 4 % faster
    only in the decode-bound bench, where the model is tiny).
    """
    torch = sys.modules.get("torch")
    if torch is None or clip_device.type != "cuda":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stop_worker(*_: Any) -> None:
    probe = _LOCAL.pop("probe", None)
    if probe is not None:
        probe.close()
    os._exit(1)


def _on_term(*_: Any) -> None:
    """SIGTERM (the run stopping us): end the job by an exception, so a clip being written loses
    its temporary file (``hv_tune.io.atomic_write``); the worker then exits as a pool worker does
    (its probe process with it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(run_pid: int) -> None:
    """Exit when the run's process is gone (its pid or our parent, a forkserver, changes)."""
    parent = os.getppid()
    while os.getppid() == parent and _alive(run_pid):
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # the job in hand stops cleanly ...
    time.sleep(3.0)
    _stop_worker()  # ... and nobody is left to tell us to exit


def _init_worker(threads: int, parent: int) -> None:
    _LOCAL["worker"] = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    signal.signal(signal.SIGTERM, _on_term)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    limit_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _importable_in_children() -> None:
    """Python 3.11's forkserver ignores the caller's ``sys.path``: put the folder this package
    was imported from on ``PYTHONPATH`` (children only read it) so the server finds it too."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


class InlinePool:
    """``workers: 0``: jobs run at submission in the calling process (the same functions)."""

    workers = 0

    def submit(self, fn: Any, *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller as a pool would
            if isinstance(e, KeyboardInterrupt):
                raise
            fut.set_exception(e)
        return fut

    def close(self, cancel: bool = False) -> None:
        probe = _LOCAL.pop("probe", None)
        if probe is not None:
            probe.close()


class WorkerPool:
    """``workers`` processes (a ``ProcessPoolExecutor``); ``close(cancel=True)`` stops them at once."""

    def __init__(self, workers: int):
        self.workers = workers
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":  # imported once in the server; every worker forks with them loaded
            ctx.set_forkserver_preload(PRELOAD)
            _importable_in_children()
        threads = max(1, cpu_count() // workers)
        self._before = set(multiprocessing.active_children())
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(threads, os.getpid()))

    def submit(self, fn: Any, *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def close(self, cancel: bool = False) -> None:
        if not cancel:
            self._pool.shutdown(wait=True)
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        ours = [p for p in multiprocessing.active_children() if p not in self._before]
        for p in ours:
            p.terminate()
        for p in ours:
            p.join(timeout=10)
            if p.is_alive():  # a worker stuck in a decoder
                p.kill()


def make_pool(cfg: CurationConfig) -> InlinePool | WorkerPool:
    """The pool ``cfg.workers`` asks for."""
    n = resolve_workers(cfg.workers)
    return WorkerPool(n) if n >= 1 else InlinePool()


# ----------------------------------------------------------------------------- jobs


def split_job(cfg: CurationConfig, rec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Probe and scene-split one file record; returns it with ``probe`` and ``clips`` and the
    seconds each stage took."""
    from curation.stages.probe import Probe
    from curation.stages.scenes import SceneSplit

    probe = _LOCAL.get("probe")
    if probe is None or probe.cfg != cfg.probe:
        # a worker is single-threaded between jobs (its OpenCV pool idle): the probe's process forks from it
        probe = _LOCAL["probe"] = Probe(cfg.probe, "fork" if _LOCAL.get("worker") else "spawn")
    t0 = time.perf_counter()
    rec = probe.one(rec)
    t1 = time.perf_counter()
    rec = SceneSplit(cfg.scenes).one(rec)
    return rec, {"probe": t1 - t0, "scenes": time.perf_counter() - t1}


def sample_job(cfg: CurationConfig, clips: list[dict[str, Any]], thumbs: str | None = None,
               ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Scoring frames (``_frames``) and motion scores of clips of one source; with ``thumbs`` (the
    report's thumbnail folder) each video clip's thumbnail strip from its scoring frames (the same
    positions), so the report decodes nothing again."""
    from curation.report import thumbnail_from_frames
    from curation.stages.frames import SampleFrames
    from curation.stages.motion import Motion

    t0 = time.perf_counter()
    stage, readers = SampleFrames(cfg.frames, cfg.motion), {}
    out = [stage.one(c, readers) for c in clips]
    t1 = time.perf_counter()
    out = Motion(cfg.motion)(out)
    t2 = time.perf_counter()
    for rec in out if thumbs else ():
        if rec["kind"] == "video" and rec.get("_frames") is not None:
            thumbnail_from_frames(rec, rec["_frames"], cfg.export.thumb_height, Path(thumbs))
    return out, {"frames": t1 - t0, "motion": t2 - t1, "report": time.perf_counter() - t2}


def cut_job(rec: dict[str, Any], path: str, crf: int) -> tuple[str | None, dict[str, float]]:
    """Cut one accepted clip to ``path`` (atomic); the reason when it cannot be cut (a full
    volume is raised: the run stops)."""
    from curation.errors import out_of_space
    from curation.stages.cut import write_clip

    t0 = time.perf_counter()
    err = None
    try:
        write_clip(rec, Path(path), crf)
    except Exception as e:  # the export tries again and records the reason
        if out_of_space(e):
            raise
        err = " ".join(str(e).split())[:200]
    return err, {"cut": time.perf_counter() - t0}


def thumbs_job(records: list[dict[str, Any]], positions: list[float], height: int,
               cache: str) -> tuple[None, dict[str, float]]:
    """The report's thumbnail strips of some clips, into ``cache`` (what ``write_report`` reads)."""
    from curation.report import thumbnail_strip

    t0 = time.perf_counter()
    for rec in records:
        thumbnail_strip(rec, positions, height, Path(cache), encode=False)
    return None, {"report": time.perf_counter() - t0}
