"""Find input files and probe them through hv_tune.media (display size, timestamps, decodable frames).

The probe of one file runs in a separate process with a time limit and an address-space
limit, because a decoder can allocate without bound on huge frames and hang on containers that
lie about their frame count. A file that fails is one ``error`` record with the reason.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

from curation.config import InputConfig, ProbeConfig
from hv_tune.media.captions import is_caption_name

# ----------------------------------------------------------------------------- discovery


def discover(input_dir: Path, cfg: InputConfig, skipped: list[dict[str, str]] | None = None,
             out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Walk ``input_dir`` recursively (following symlinks, once per real folder).

    Returns one file record per video or image, sorted by relative path, with ``source``
    absolute and resolved (no ``..``). Files that cannot be resolved (a symlink loop, a
    dangling link) become records with an ``error``. Every other file the walk sees is used (a
    media file, or the ``.txt`` caption of one) or appended to ``skipped`` as ``{"rel",
    "reason"}``. Output folders are never input: ``out_dir`` (this run's) and any earlier
    curation output (``output_marker``) are not walked and are listed in ``skipped``.
    """
    input_dir = Path(input_dir).resolve()
    exts = {e.lower(): "video" for e in cfg.video_extensions} | {e.lower(): "image" for e in cfg.image_extensions}
    out_real = os.path.realpath(out_dir) if out_dir is not None else None
    seen_dirs: set[str] = set()
    records, others = [], []
    for root, dirs, files in os.walk(input_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a folder reached twice through links: a loop or a duplicate
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for d in list(dirs):
            reason = output_reason(Path(root) / d, out_real)
            if reason:
                dirs.remove(d)
                others.append(((Path(root) / d).relative_to(input_dir).as_posix() + "/", reason))
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(input_dir).as_posix()
            kind = exts.get(Path(name).suffix.lower())
            if kind is None or name.startswith("."):
                others.append((rel, skip_reason(name, kind)))
                continue
            records.append(_file_record(path, rel, kind))
    if skipped is not None:
        stems = {Path(r["rel"]).with_suffix("").as_posix() for r in records}
        skipped += [{"rel": rel, "reason": reason} for rel, reason in sorted(others)
                    if not (is_caption_name(rel) and Path(rel).with_suffix("").as_posix() in stems)]
    return sorted(records, key=lambda r: r["rel"])


def output_marker(folder: Path) -> str | None:
    """The file that makes ``folder`` a curation output (``state/config.yaml``, written first by
    every run, or ``state/files.jsonl``), or None."""
    for marker in ("state/config.yaml", "state/files.jsonl"):
        if (folder / marker).is_file():
            return marker
    return None


def output_reason(folder: Path, out_real: str | None) -> str | None:
    """Why the walk does not enter ``folder`` (this run's output, an earlier output), or None."""
    if out_real is not None and os.path.realpath(folder) == out_real:
        return "output folder of this run (--out): outputs are never input"
    marker = output_marker(folder)
    if marker:
        return f"output of an earlier curation run (has {marker}): outputs are never input"
    return None


def skip_reason(name: str, kind: str | None) -> str:
    """Why the walk does not use a file (it is not a caption of a media file either)."""
    if name.startswith("."):
        return "hidden file"
    ext = Path(name).suffix.lower() or "(none)"
    if ext == ".txt":
        return "caption without a media file of the same name"
    return (f"unsupported extension {ext} (if it is a video or image, add it to input.video_extensions "
            "or input.image_extensions)")


def _file_record(path: Path, rel: str, kind: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": str(path), "rel": rel, "kind": kind}  # under the resolved input folder
    try:
        st = path.stat()  # follows links: raises on loops and dangling links
        rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    except OSError as e:
        rec.update(size=-1, mtime_ns=0, error=f"unreadable: {e.strerror or e} ({path})")
    return rec


# ----------------------------------------------------------------------------- probing


def probe_video(path: str, max_pixels: int, max_duration_s: float, tolerance: float = 0.0) -> dict[str, Any]:
    """``hv_tune.media.probe_video`` plus curation's limits. Runs in the probe process.

    Returns:
        The probe as plain data (display size, fps, duration, rotation, codec, vfr, notes).

    Raises:
        RuntimeError: with a readable message when the file cannot be used.
    """
    from hv_tune.media import MediaError
    from hv_tune.media import probe_video as media_probe

    try:
        probe = media_probe(path, max_pixels)
    except MediaError as e:
        msg = str(e)
        if msg.startswith("too large"):  # "too large: WxH > N pixels" in curation's terms
            msg = f"{msg.split(' > ')[0]} > probe.max_pixels {max_pixels}; raise it to accept"
        raise RuntimeError(msg) from e
    if probe.duration > max_duration_s:
        raise RuntimeError(f"too long: {probe.duration:.0f} s > probe.max_duration_s {max_duration_s:.0f}")
    rec = probe.to_record()
    n, container_frames = probe.num_frames, probe.container_frames
    if container_frames and abs(container_frames - n) > tolerance * n:
        rec["notes"].append(f"container says {container_frames} frames, {n} decodable")
    if probe.rotation:
        rec["notes"].append(f"display rotation {probe.rotation} (frames used upright, {probe.width}x{probe.height})")
    return rec


def probe_image(path: str, max_pixels: int) -> dict[str, Any]:
    """Display size of an image (EXIF orientation applied), checked by decoding it fully."""
    from hv_tune.media import image_size, read_image

    if os.path.getsize(path) == 0:
        raise RuntimeError("empty file (0 bytes)")
    width, height = image_size(path)
    if width * height > max_pixels:
        raise RuntimeError(f"too large: {width}x{height} > probe.max_pixels {max_pixels}; raise it to accept")
    read_image(path)
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


def _limit_memory(max_mb: int, on_top: bool = False) -> None:
    """Probe worker set-up: the address-space limit; Ctrl-C is the parent's to handle (the
    terminal sends it to the whole process group: a worker would print its own traceback).

    ``on_top``: a process forked from a curation worker starts with the worker's mappings
    (libraries, decoders); the limit is ``max_mb`` on top of those (what the probe itself may map).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked from a curation worker: not the worker's handler
    if max_mb > 0:
        import resource

        limit = (max_mb << 20) + (_mapped_bytes() if on_top else 0)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mapped_bytes() -> int:
    """This process's address space in bytes (Linux ``VmSize``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) << 10 for ln in fh if ln.startswith("VmSize:"))
    except (OSError, StopIteration):
        return 0


class Probe:
    """Stage: file records -> file records with ``probe`` (or ``error``). CPU stage.

    Each file is probed in a worker process with ``probe.timeout_s`` and ``probe.max_memory_mb``;
    a worker that hangs or dies is replaced and the file gets an ``error``. The worker is kept
    between batches (starting one costs ~1 s); the owner calls ``close()`` at the end.
    """

    name = "probe"
    uses_model = False

    def __init__(self, cfg: ProbeConfig, start_method: str = "spawn"):
        self.cfg, self.start_method = cfg, start_method  # "fork" from a curation worker: starts in ms
        self._pool = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            ctx = multiprocessing.get_context(self.start_method)
            on_top = self.start_method == "fork"
            self._pool = ctx.Pool(1, initializer=_limit_memory, initargs=(self.cfg.max_memory_mb, on_top))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:  # Ray ships stages to workers: the pool stays behind
        return {"cfg": self.cfg, "start_method": "spawn", "_pool": None}

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
