"""Decoded frames of a video, upright, by index or by time, at a bounded size.

Two decoders sit behind ``VideoFrames``, chosen per file at probe time and recorded in the
probe's ``backend`` (docs/decisions.md, "Decoder by measurement"):

- ``pyav``: the fastest correct decoder on every access pattern measured (bench/decoders.py).
  PyAV returns stored frames, which are scaled by swscale and turned here.
- ``torchcodec`` (PyTorch's decoder over the system FFmpeg, where installed): for a file PyAV
  fails on at probe time. It applies the display rotation itself and its ``Resize`` acts on
  the turned picture, so it is asked for the display size.

Frame ``i`` is the ``i``-th frame in presentation order for both, the same order as the
probe's timestamps. A reader keeps its decoder open: consecutive ``get`` calls over increasing
indices (a scene split in chunks, a cut) continue decoding without seeking again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hv_tune.media.errors import MediaError
from hv_tune.media.probe import (
    CONVERT_HINT,
    VFR_SPREAD,
    VideoProbe,
    container_info,
    pyav_times,
    torchcodec_available,
)

SEEK_GAP_S = 1.0  # PyAV: seek rather than decode forward through more than this many seconds
SEEK_BACK_S = (0.0, 2.0, None)  # PyAV: seek this far before a frame, again earlier, then from the start


def scaled_size(width: int, height: int, short_side: int, multiple: int = 32) -> tuple[int, int]:
    """Output ``(width, height)``: short side near ``short_side``, width a multiple of ``multiple``.

    Never upscaled, except that the width is rounded to ``multiple`` (at least one multiple).
    The 32-multiple is kept for the sizes curation records (scene split, scoring); neither
    decoder needs it.
    """
    scale = min(1.0, short_side / max(1, min(width, height)))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(2, int(round(height * (w / width) / 2)) * 2)
    return w, h


class VideoFrames:
    """Frames of one video as uint8 ``[N, H, W, 3]``, upright, at ``size`` (display ``(width, height)``).

    Args:
        path: the video.
        probe: its ``probe_video`` result (probed here when None); its ``backend`` picks the decoder.
        size: output ``(width, height)`` in display orientation; None = the display size.
    """

    def __init__(self, path: str | Path, probe: VideoProbe | None = None, size: tuple[int, int] | None = None):
        self.path = str(path)
        self.probe = probe or probe_video(self.path)
        self.size = tuple(size) if size else (self.probe.width, self.probe.height)
        self._reader: Any = None

    @property
    def times(self) -> np.ndarray:
        """Presentation start time of every frame ``[num_frames]``, seconds from the first frame."""
        if self.probe.times is None:  # a probe rebuilt from a record: read the index now
            times, _, self.probe.start_time = pyav_times(self.path)
            self.probe.times = times[: self.probe.num_frames]
        return self.probe.times

    def __len__(self) -> int:
        return self.probe.num_frames

    def at_times(self, seconds: Sequence[float]) -> list[int]:
        """Index of the frame on screen at each time (sample and hold)."""
        idx = np.searchsorted(self.times, np.asarray(seconds, np.float64) + 1e-4, side="right") - 1
        return idx.clip(0, len(self) - 1).tolist()

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed): ``[N, H, W, 3]`` uint8.

        Raises:
            MediaError: when the decoder fails or returns fewer frames (a truncated file).
        """
        indices = [int(i) for i in indices]
        w, h = self.size
        if not indices:
            return np.zeros((0, h, w, 3), np.uint8)
        if min(indices) < 0 or max(indices) >= len(self):
            raise MediaError(f"frame index out of range 0..{len(self) - 1} (truncated file?)")
        if self._reader is None:
            self.times  # noqa: B018  (a probe from a record: timestamps and start time, read once)
            self._reader = open_reader(self.path, self.probe, self.size)
        frames = self._reader.get(indices)
        if frames.shape[1:3] != (h, w) or len(frames) != len(indices):
            raise MediaError(f"decoder returned {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}, "
                             f"wanted {len(indices)} of {w}x{h} (truncated file?)")
        return frames

    def close(self) -> None:
        """Release the decoder (also released when the object is garbage-collected)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def open_reader(path: str, probe: VideoProbe, size: tuple[int, int]) -> Any:
    """A reader object of ``probe.backend`` with ``get(indices) -> [N, H, W, 3]`` and ``close()``.

    Records written before this choice (``backend: decord``) read with PyAV.
    """
    if probe.backend == "torchcodec":
        return _TorchcodecReader(path, probe, size)
    return _PyavReader(path, probe, size)


class _TorchcodecReader:
    """torchcodec (exact seek mode: frame index = presentation order), one FFmpeg thread."""

    def __init__(self, path: str, probe: VideoProbe, size: tuple[int, int]):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        w, h = size
        transforms = [] if (w, h) == (probe.width, probe.height) else [Resize((h, w))]
        try:
            self.dec = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact",
                                    transforms=transforms)
        except (RuntimeError, ValueError) as e:
            raise MediaError(f"decode failed: {_short(e)}") from e

    def get(self, indices: list[int]) -> np.ndarray:
        order = sorted(set(indices))  # torchcodec decodes forward through sorted indices without re-seeking
        try:
            batch = self.dec.get_frames_at(order).data.numpy()
        except (RuntimeError, ValueError, IndexError) as e:
            raise MediaError(f"decode failed: {_short(e)}") from e
        if order == indices:
            return batch
        pos = {i: k for k, i in enumerate(order)}
        return batch[[pos[i] for i in indices]]

    def close(self) -> None:
        self.dec = None


class _PyavReader:
    """PyAV with one open container: decodes forward, seeks only for a jump of more than ``SEEK_GAP_S``."""

    def __init__(self, path: str, probe: VideoProbe, size: tuple[int, int]):
        import av

        self.av, self.probe, self.size = av, probe, size
        try:
            self.container = av.open(path)
            self.stream = self.container.streams.video[0]
        except av.FFmpegError as e:
            raise MediaError(f"decode failed: {_short(e)}") from e
        self.stream.thread_count = 1  # one thread per decoder: curation runs one worker per core
        self.times = probe.times  # read by VideoFrames before it opens a reader
        self._iter: Any = None  # the running decode
        self._last = -1  # index of the frame the running decode returned last

    def get(self, indices: list[int]) -> np.ndarray:
        got: dict[int, np.ndarray] = {}
        try:
            for i in sorted(set(indices)):
                got[i] = self._frame(i)
        except self.av.FFmpegError as e:
            raise MediaError(f"decode failed: {_short(e)}") from e
        return np.stack([got[i] for i in indices])

    def _frame(self, i: int) -> np.ndarray:
        """Frame ``i``: decode forward from the last one, else seek back to a key frame first.

        A key frame that does not bring frame ``i`` back (B-frames of an open GOP that refer to
        the frames before it are dropped) is retried from earlier, finally from the start.
        """
        gap = self.times[i] - self.times[max(self._last, 0)]
        if self._iter is None and self._last == -1 and self.times[i] <= SEEK_GAP_S:
            self._iter = self.container.decode(self.stream)  # near the start of a fresh container: no seek
        if self._iter is not None and self._last < i and gap <= SEEK_GAP_S:
            frame = self._forward_to(i)
            if frame is not None:
                return frame
        for back in SEEK_BACK_S:
            self._seek(max(0.0, self.times[i] - back) if back is not None else None)
            frame = self._forward_to(i)
            if frame is not None:
                return frame
        raise MediaError(f"frame {i} did not decode (truncated file?)")

    def _seek(self, t: float | None) -> None:
        """Seek to the key frame at or before ``t`` seconds from the first frame (None: the start)."""
        if t is None:
            self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
        else:
            pts = int(round((t + self.probe.start_time) / self.stream.time_base))
            self.container.seek(pts, stream=self.stream, backward=True)
        self._iter, self._last = self.container.decode(self.stream), -1

    def _forward_to(self, i: int) -> np.ndarray | None:
        """Decode forward until frame ``i`` (converted) or a later one (None: ``i`` was not shown)."""
        for frame in self._iter:
            if frame.pts is None:
                continue
            k = self._index(float(frame.pts * frame.time_base) - self.probe.start_time)
            self._last = k
            if k == i:
                return self._convert(frame)
            if k > i:
                break
        self._iter = None
        return None

    def _index(self, t: float) -> int:
        """The frame whose timestamp is nearest ``t`` (seconds from the first frame)."""
        j = int(np.searchsorted(self.times, t))
        if j >= len(self.times) or (j > 0 and t - self.times[j - 1] < self.times[j] - t):
            j -= 1
        return max(j, 0)

    def _convert(self, frame: Any) -> np.ndarray:
        """A PyAV frame -> upright uint8 RGB at ``size``."""
        w, h = self.size
        k = self.probe.rotation // 90
        sw, sh = (h, w) if k % 2 else (w, h)  # stored orientation of the output size
        same = (sw, sh) == (frame.width, frame.height)
        size = {} if same else {"width": sw, "height": sh}
        # threads=1: PyAV's default (0, auto) starts a new swscale slice-thread pool for every frame
        # (FFmpeg 8): the same pixels for 1.6x the CPU time (docs/benchmarks.md)
        arr = frame.to_ndarray(format="rgb24", threads=1, **size)
        return quarter_turns(arr, k) if k else arr

    def close(self) -> None:
        self._iter = None
        self.container.close()


def quarter_turns(image: np.ndarray, k: int) -> np.ndarray:
    """``image`` ``[H, W, C]`` turned ``k`` quarter turns counter-clockwise (``np.rot90``'s sense),
    as a new contiguous array. OpenCV's ``rotate`` where it is installed (the curation extra): the
    same pixels, 10-25x faster than numpy's strided copy on a 640x480 frame."""
    k %= 4
    try:
        import cv2
    except ImportError:
        return np.ascontiguousarray(np.rot90(image, k=k))
    if k == 0:
        return image.copy()
    code = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}[k]
    h, w = image.shape[:2]
    return cv2.rotate(image, code).reshape((w, h) + image.shape[2:] if k % 2 else image.shape)  # (keeps C = 1)


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def probe_video(path: str | Path, max_pixels: int | None = None) -> VideoProbe:
    """Probe ``path``: container facts, packet timestamps, and the decoder proven for it.

    A few frames are decoded (``choose_decoder``); a truncated file keeps its decodable prefix.

    Raises:
        MediaError: empty file, no video stream, too many pixels, or a codec no decoder here reads
            (the message names the codec and how to convert the file).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise MediaError("file vanished")
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    info = container_info(path)
    w, h = info["width"], info["height"]
    if max_pixels is not None and w * h > max_pixels:
        raise MediaError(f"too large: {w}x{h} > {max_pixels} pixels")
    times, end_time, start_time = pyav_times(path)
    n = len(times)
    duration = end_time if n > 1 or end_time > 0 else 0.0
    steps = np.diff(times)
    vfr = bool(len(steps) > 1) and float(steps.max() - steps.min()) > VFR_SPREAD * float(steps.mean())
    fps = n / duration if duration > 0 else info["rate"]
    probe = VideoProbe(n, fps, w, h, info["rotation"], info["codec"], "", times, end_time, vfr,
                       info["frames"], info["duration"], start_time)
    probe.backend, n_ok, probe.decoder_note = choose_decoder(path, probe)
    if n_ok < n:  # a truncated file: its decodable prefix
        probe.num_frames, probe.times, probe.end_time = n_ok, times[:n_ok], float(times[n_ok])
        probe.fps = n_ok / probe.end_time if probe.end_time > 0 else probe.fps
    return probe


def choose_decoder(path: str, probe: VideoProbe) -> tuple[str, int, str | None]:
    """The decoder for ``path``, proven on every access pattern later stages use, and its frame count.

    PyAV first (the fastest on every pattern, bench/decoders.py), then torchcodec (FFmpeg's
    system build, where installed). A decoder is proven when it
    decodes, with the frame count the timestamps promise (or the decodable prefix of a truncated
    file), the first two frames in sequence and the last one by seeking, at the full display
    size (clip cutting) and at a reduced size (scene split, scoring, the cache), with the right
    shapes. The choice goes into the probe record, so every stage and the cache read the file
    with the same decoder whichever worker reads it.

    Returns:
        ``(backend, decodable frames, why PyAV failed on this file or None)``.

    Raises:
        MediaError: neither decoder reads the file.
    """
    reasons: list[str] = []
    small = scaled_size(probe.width, probe.height, 256)
    for backend in ("pyav", "torchcodec"):
        if backend == "torchcodec" and not torchcodec_available():  # (imported only when needed)
            reasons.append("torchcodec: not installed (it needs FFmpeg's shared libraries)")
            break
        trial = dataclasses.replace(probe, backend=backend)
        try:
            n = _decodable_frames(path, trial, None)
            trial.num_frames = n
            _decodes(path, trial, small, sorted({0, min(1, n - 1), n - 1}))
            return backend, n, "; ".join(reasons) or None
        except MediaError as e:
            reasons.append(f"{backend}: {e}")
    raise MediaError(f"codec {probe.codec}: no decoder here reads it ({'; '.join(reasons)[:300]}); {CONVERT_HINT}")


def _decodable_frames(path: str, probe: VideoProbe, size: tuple[int, int] | None) -> int:
    """Frames that really decode at ``size``: the index may promise frames the data lacks."""
    n = probe.num_frames
    _decodes(path, probe, size, [0, 1] if n > 1 else [0])
    if _decodes(path, probe, size, [n - 1], fail=False):
        return n
    lo, hi = 0, n - 1  # invariant: frame lo decodes, frame hi does not
    while lo < hi - 1:  # binary search by seeking, at most log2(n) decodes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _decodes(path, probe, size, [mid], fail=False) else (lo, mid)
    return lo + 1


def _decodes(path: str, probe: VideoProbe, size: tuple[int, int] | None, indices: list[int],
             fail: bool = True) -> bool:
    """Whether ``indices`` decode at ``size`` (None = display size) with the probe's backend."""
    reader = VideoFrames(path, probe, size)
    try:
        reader.get(indices)
        return True
    except MediaError:
        if fail:
            raise
        return False
    finally:
        reader.close()
