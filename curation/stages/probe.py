"""Find input files and probe them: container metadata checked against what decord decodes.

The probe of one file runs in a separate process with a time limit and an address-space
limit, because decord can allocate without bound on huge frames and hang on containers that
lie about their frame count. A file that fails is one ``error`` record with the reason.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

from curation.config import InputConfig, ProbeConfig

# ----------------------------------------------------------------------------- discovery


def discover(input_dir: Path, cfg: InputConfig) -> list[dict[str, Any]]:
    """Walk ``input_dir`` recursively (following symlinks, once per real folder).

    Returns one file record per video or image, sorted by relative path. Files that cannot be
    resolved (a symlink loop, a dangling link) become records with an ``error``.
    """
    input_dir = Path(input_dir)
    exts = {e.lower(): "video" for e in cfg.video_extensions} | {e.lower(): "image" for e in cfg.image_extensions}
    seen_dirs: set[str] = set()
    records = []
    for root, dirs, files in os.walk(input_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a folder reached twice through links: a loop or a duplicate
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for name in sorted(files):
            kind = exts.get(Path(name).suffix.lower())
            if kind is None or name.startswith("."):
                continue
            path = Path(root) / name
            records.append(_file_record(path, path.relative_to(input_dir).as_posix(), kind))
    return sorted(records, key=lambda r: r["rel"])


def _file_record(path: Path, rel: str, kind: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": str(path.absolute()), "rel": rel, "kind": kind}
    try:
        st = path.stat()  # follows links: raises on loops and dangling links
        rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    except OSError as e:
        rec.update(size=-1, mtime_ns=0, error=f"unreadable: {e.strerror or e} ({path})")
    return rec


# ----------------------------------------------------------------------------- probing


def probe_video(path: str, max_pixels: int, max_duration_s: float, tolerance: float = 0.0) -> dict[str, Any]:
    """Container metadata (PyAV) checked against decord's reality. Runs in the probe process.

    Returns:
        ``{"num_frames", "fps", "width", "height", "duration", "container_frames", "vfr",
        "notes"}``; ``num_frames`` counts frames decord can decode (the last one is decoded).

    Raises:
        RuntimeError: with a readable message when the file cannot be used.
    """
    import av
    import decord

    if os.path.getsize(path) == 0:
        raise RuntimeError("empty file (0 bytes)")
    with av.open(path) as container:
        if not container.streams.video:
            raise RuntimeError("no video stream")
        s = container.streams.video[0]
        width, height = s.codec_context.width, s.codec_context.height
        container_frames = int(s.frames or 0)
        container_dur = float(s.duration * s.time_base) if s.duration else None
    if width * height > max_pixels:
        raise RuntimeError(f"too large: {width}x{height} > probe.max_pixels {max_pixels}; raise it to accept")
    # Decode a small proxy: the bytes decord needs per frame stay bounded whatever the source size.
    vr = decord.VideoReader(path, num_threads=1, width=64, height=max(2, round(64 * height / width / 2) * 2))
    n = len(vr)
    if n < 1:
        raise RuntimeError("no decodable frames")
    n = _last_decodable(vr, n)
    ts = vr.get_frame_timestamp(list(range(n)))  # [n, 2] start/end seconds, from the index
    duration = float(ts[-1][1] - ts[0][0]) if n > 1 else float(ts[0][1] - ts[0][0])
    if duration > max_duration_s:
        raise RuntimeError(f"too long: {duration:.0f} s > probe.max_duration_s {max_duration_s:.0f}")
    steps = [float(ts[i + 1][0] - ts[i][0]) for i in range(n - 1)]
    vfr = bool(steps) and (max(steps) - min(steps)) > 0.25 * (sum(steps) / len(steps))
    fps = n / duration if duration > 0 else float(vr.get_avg_fps())
    notes = []
    if container_frames and abs(container_frames - n) > tolerance * n:
        notes.append(f"container says {container_frames} frames, {n} decodable")
    return {
        "num_frames": n, "fps": round(fps, 6), "width": width, "height": height, "duration": round(duration, 6),
        "container_frames": container_frames, "container_duration": container_dur, "vfr": vfr, "notes": notes,
    }


def _last_decodable(vr: Any, n: int) -> int:
    """Frame count that really decodes: the index may promise frames the data lacks."""
    lo, hi = 0, n - 1  # invariant: frame lo decodes (checked first), frames > hi are unknown
    if _decodes(vr, hi):
        return n
    if not _decodes(vr, 0):
        raise RuntimeError("the first frame does not decode")
    while lo < hi - 1:  # binary search by seeking, at most log2(n) decodes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _decodes(vr, mid) else (lo, mid)
    return lo + 1


def _decodes(vr: Any, i: int) -> bool:
    try:
        vr.get_batch([i]).asnumpy()
        return True
    except Exception:  # decord raises its own error types for bad data
        return False


def probe_image(path: str, max_pixels: int) -> dict[str, Any]:
    """Size of an image, checked by decoding it fully."""
    from PIL import Image

    if os.path.getsize(path) == 0:
        raise RuntimeError("empty file (0 bytes)")
    with Image.open(path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise RuntimeError(f"too large: {width}x{height} > probe.max_pixels {max_pixels}; raise it to accept")
        im.load()
    return {"num_frames": 1, "fps": 0.0, "width": width, "height": height, "duration": 0.0,
            "container_frames": 1, "vfr": False, "notes": []}


def _probe_in_child(kind: str, path: str, max_pixels: int, max_duration_s: float, tol: float) -> dict[str, Any]:
    try:
        if kind == "image":
            return {"probe": probe_image(path, max_pixels)}
        return {"probe": probe_video(path, max_pixels, max_duration_s, tol)}
    except MemoryError:
        return {"error": "unreadable: decoding ran out of memory (probe.max_memory_mb)"}
    except Exception as e:  # any decoder failure becomes the record's reason
        msg = " ".join(str(e).split())
        return {"error": msg if msg.startswith(("too large", "too long")) else f"unreadable: {msg[:300]}"}


def _limit_memory(max_mb: int) -> None:
    if max_mb > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_mb << 20, max_mb << 20))


class Probe:
    """Stage: file records -> file records with ``probe`` (or ``error``). CPU stage.

    Each file is probed in a worker process with ``probe.timeout_s`` and ``probe.max_memory_mb``;
    a worker that hangs or dies is replaced and the file gets an ``error``. The worker is kept
    between batches (starting one costs ~1 s); the owner calls ``close()`` at the end.
    """

    name = "probe"
    uses_model = False

    def __init__(self, cfg: ProbeConfig):
        self.cfg = cfg
        self._pool = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(1, initializer=_limit_memory, initargs=(self.cfg.max_memory_mb,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:  # Ray ships stages to workers: the pool stays behind
        return {"cfg": self.cfg, "_pool": None}

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.one(r) for r in records]

    def one(self, rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("error"):
            return rec
        c = self.cfg
        args = (rec["kind"], rec["source"], c.max_pixels, c.max_duration_s, c.frame_count_tolerance)
        job = self._get_pool().apply_async(_probe_in_child, args)
        try:
            result = job.get(timeout=self.cfg.timeout_s)
        except multiprocessing.TimeoutError:
            self.close()
            result = {"error": f"unreadable: probe did not finish in {self.cfg.timeout_s:g} s "
                               "(a broken or lying container; raise probe.timeout_s if the file is fine)"}
        return {**rec, **result}
