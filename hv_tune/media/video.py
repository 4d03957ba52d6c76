"""Decoded frames of a video, upright, by index or by time, at a bounded size.

decord (seeking decode, resizes inside the decoder) reads every file it can open; PyAV reads
the rest (codecs the decord build lacks). decord 0.6.0 applies the display-matrix rotation
itself and, given ``width``/``height``, turns first and then resizes, so it is asked for the
display size; a build that returns the stored picture is turned here (checked by shape).
PyAV returns stored frames, which are turned here. tests/test_media.py pins both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hv_tune.media.errors import MediaError
from hv_tune.media.probe import VideoProbe, probe_video, pyav_times

SEEK_GAP_S = 2.0  # PyAV: seek again rather than decode through more than this many seconds


def scaled_size(width: int, height: int, short_side: int, multiple: int = 32) -> tuple[int, int]:
    """Output ``(width, height)``: short side near ``short_side`` (never upscaled), width a multiple of 32.

    decord's resize needs a width that is a multiple of 32 (other widths can fail its
    buffer-size check).
    """
    scale = min(1.0, short_side / max(1, min(width, height)))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(2, int(round(height * (w / width) / 2)) * 2)
    return w, h


class VideoFrames:
    """Frames of one video as uint8 ``[N, H, W, 3]``, upright, at ``size`` (display ``(width, height)``).

    Args:
        path: the video.
        probe: its ``probe_video`` result (probed here when None).
        size: output ``(width, height)`` in display orientation; None = the display size.
            With decord the width should be a multiple of 32 (``scaled_size``).
    """

    def __init__(self, path: str | Path, probe: VideoProbe | None = None, size: tuple[int, int] | None = None):
        self.path = str(path)
        self.probe = probe or probe_video(self.path)
        self.size = size or (self.probe.width, self.probe.height)
        self._decord: Any = None

    @property
    def times(self) -> np.ndarray:
        """Presentation start time of every frame ``[num_frames]``, seconds from the first frame."""
        if self.probe.times is None:  # a probe rebuilt from a record: read the index now
            self.probe.times = self._read_times()
        return self.probe.times

    def _read_times(self) -> np.ndarray:
        if self.probe.backend != "decord":
            return pyav_times(self.path)[0]  # (the probe's start_time stays valid)
        ts = self._reader().get_frame_timestamp(list(range(len(self))))[:, 0].astype(np.float64)  # [N] starts
        return ts - ts[0]

    def __len__(self) -> int:
        return self.probe.num_frames

    def at_times(self, seconds: Sequence[float]) -> list[int]:
        """Index of the frame on screen at each time (sample and hold)."""
        idx = np.searchsorted(self.times, np.asarray(seconds, np.float64) + 1e-4, side="right") - 1
        return idx.clip(0, len(self) - 1).tolist()

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (decoded by seeking): ``[N, H, W, 3]`` uint8.

        Raises:
            MediaError: when the decoder fails or returns fewer frames (a truncated file).
        """
        indices = [int(i) for i in indices]
        if not indices:
            w, h = self.size
            return np.zeros((0, h, w, 3), np.uint8)
        if self.probe.backend == "decord":
            frames = self._get_decord(indices)
        else:
            frames = self._get_pyav(indices)
        if len(frames) != len(indices):
            raise MediaError(f"decoder returned {len(frames)} of {len(indices)} frames (truncated file?)")
        return frames

    def _get_decord(self, indices: list[int]) -> np.ndarray:
        import decord

        w, h = self.size
        try:
            frames = self._reader().get_batch(indices).asnumpy()
        except (decord.DECORDError, RuntimeError, ValueError, IndexError) as e:
            raise MediaError(f"decode failed: {str(e).splitlines()[0][:200]}") from e
        if self.probe.rotation % 180 and frames.shape[1:3] == (w, h) and w != h:
            frames = np.rot90(frames, k=self.probe.rotation // 90, axes=(1, 2))  # a build that does not turn
        return np.ascontiguousarray(frames)

    def _reader(self) -> Any:
        """The decord reader (opened once), asked for the display-oriented output size."""
        import decord

        if self._decord is None:
            w, h = self.size
            kw = {} if (w, h) == (self.probe.width, self.probe.height) else {"width": w, "height": h}
            try:
                self._decord = decord.VideoReader(self.path, num_threads=1, **kw)
            except (decord.DECORDError, RuntimeError, ValueError) as e:
                raise MediaError(f"decode failed: {str(e).splitlines()[0][:200]}") from e
        return self._decord

    def _get_pyav(self, indices: list[int]) -> np.ndarray:
        """Decode with PyAV: seek near each wanted frame, match frames to indices by timestamp."""
        import av

        wanted = sorted(set(indices))
        got: dict[int, np.ndarray] = {}
        try:
            with av.open(self.path) as container:
                s = container.streams.video[0]
                s.thread_type = "AUTO"
                while len(got) < len(wanted):
                    nxt = next(i for i in wanted if i not in got)
                    if not self._decode_from(container, s, nxt, set(wanted), got):
                        break
        except av.FFmpegError as e:
            raise MediaError(f"decode failed: {' '.join(str(e).split())[:200]}") from e
        if not got:
            return np.zeros((0, self.size[1], self.size[0], 3), np.uint8)
        return np.stack([got[i] for i in indices if i in got])

    def _decode_from(self, container: Any, s: Any, first: int, wanted: set[int], got: dict[int, np.ndarray]) -> bool:
        """Seek before frame ``first`` and decode forward; False when nothing new was found."""
        found = False
        start = self.probe.start_time  # the first frame's presentation time: times count from it
        container.seek(int((self.times[first] + start) / s.time_base), stream=s, backward=True)
        for frame in container.decode(s):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base) - start
            i = int(np.argmin(np.abs(self.times - t)))
            if i in wanted and i not in got:
                got[i] = self._convert(frame)
                found = True
            rest = [j for j in wanted if j not in got]
            if not rest or self.times[min(rest)] - t > SEEK_GAP_S or self.times[min(rest)] < t - 1e-6:
                break
        return found

    def _convert(self, frame: Any) -> np.ndarray:
        """A PyAV frame -> upright uint8 RGB at ``size``."""
        w, h = self.size
        k = self.probe.rotation // 90
        sw, sh = (h, w) if k % 2 else (w, h)  # stored orientation of the output size
        arr = frame.to_ndarray(format="rgb24", width=sw, height=sh)
        return np.ascontiguousarray(np.rot90(arr, k=k)) if k else arr

