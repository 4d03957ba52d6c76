"""From media items to cache items: bucket, frame indices and content keys (no pixels yet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hv_tune.config import DataConfig
from hv_tune.data.buckets import (
    choose_bucket,
    clip_frame_buckets,
    frame_windows,
    kept_fraction,
    resampled_by_time,
    resolution_buckets,
)
from hv_tune.data.cache import content_key
from hv_tune.data.decode import MediaError, VideoInfo, probe_video, read_image
from hv_tune.data.sources import MediaItem, Scan, Skip
from hv_tune.models.base import VideoRules


@dataclass
class PlannedItem:
    """One training item: which source frames, which bucket, which cache files."""

    id: str
    media: MediaItem
    frames: int
    height: int
    width: int
    indices: list[int]  # source frame indices (empty for images)
    info: VideoInfo | None
    latent_key: str
    text_keys: list[str]
    template: str  # "video" | "image"
    source_size: tuple[int, int] = (0, 0)  # the source's (height, width), upright; (0, 0) = unknown

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def kept(self) -> float:
        """Share of the source picture's area the bucket's centre crop keeps (1.0 when unknown)."""
        return kept_fraction(*self.source_size, (self.height, self.width)) if all(self.source_size) else 1.0


def file_fingerprint(path: Path) -> tuple[str, int, int]:
    """What a cached latent depends on about its file: absolute path, size, mtime (ns)."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def text_key(model_id: str, template: str, caption: str) -> str:
    return content_key("text", model_id, template, caption)


def plan_items(scan: Scan, data: DataConfig, model_id: str, video: VideoRules) -> list[PlannedItem]:
    """Probe each media item and expand it into its windows; problems go to ``scan.skipped``.

    Each item is planned with its own source's settings (``MediaItem.settings``: resolution,
    frame buckets, fps, upscaling); ``video`` (the model spec's) gives the pixel multiple of the
    buckets and the frame rate clips are resampled to when no fps is set. ``data`` is kept for
    callers' sake: the settings were resolved from it by the scan.
    """
    res_buckets: dict[int, list[tuple[int, int]]] = {}
    planned: list[PlannedItem] = []
    for media in scan.items:
        res = media.settings.resolution
        if res not in res_buckets:
            res_buckets[res] = resolution_buckets(res, video.pixel_multiple)
        try:
            planned += _plan_one(media, res_buckets[res], model_id, video)
        except MediaError as e:
            scan.skipped.append(Skip(str(media.path), str(e)))
        except OSError as e:
            scan.skipped.append(Skip(str(media.path), f"cannot read: {e.strerror or e}"))
    return planned


def _plan_one(media: MediaItem, res_buckets, model_id: str, video: VideoRules) -> list[PlannedItem]:
    s = media.settings
    if media.kind == "image":
        if 1 not in s.frame_buckets:
            raise MediaError("image, but its frame_buckets (data.frame_buckets or the source's) have no 1-frame bucket")
        if not media.path.is_file() or media.path.stat().st_size == 0:
            raise MediaError("file vanished" if not media.path.exists() else "zero-byte file")
        h, w = read_image(media.path).shape[:2]
        bh, bw = choose_bucket(h, w, res_buckets, video.pixel_multiple, s.allow_upscale)
        return [_item(media, 0, 1, bh, bw, [], None, model_id, "image", (h, w))]
    info = probe_video(media.path)
    start, end = media.span if media.span else (0, info.num_frames)
    end = min(end, info.num_frames)
    if end - start < 1:
        raise MediaError(f"empty frame span [{start}, {end}) of a {info.num_frames}-frame video")
    span_end = float(info.times[end]) if end < info.num_frames else info.end_time  # by timestamps: VFR-safe
    fps = s.fps or video.fps
    resampled = [start + i for i in resampled_by_time(info.times[start:end], span_end, fps)]
    buckets = clip_frame_buckets(len(resampled), s.frame_buckets, s.frame_bucket_choice)
    if not buckets:
        shortest = min([b for b in s.frame_buckets if b > 1], default=None)
        raise MediaError(
            f"too short: {len(resampled)} frames at {fps:g} fps, shortest video bucket is {shortest}"
        )
    bh, bw = choose_bucket(info.height, info.width, res_buckets, video.pixel_multiple, s.allow_upscale)
    windows = [(b, o) for b in buckets for o in frame_windows(len(resampled), b, s.frame_extraction, s.frame_samples)]
    return [
        _item(media, n, b, bh, bw, resampled[o : o + b], info, model_id, "video", (info.height, info.width))
        for n, (b, o) in enumerate(windows)
    ]


def _item(media, window, frames, h, w, indices, info, model_id, template, source_size) -> PlannedItem:
    fp = file_fingerprint(media.path)
    latent_key = content_key("latent", model_id, *fp, frames, h, w, indices)
    item_id = f"{media.path.stem}-{content_key(*fp, window)[:8]}-w{window}"
    keys = [text_key(model_id, template, c) for c in media.captions]
    return PlannedItem(item_id, media, frames, h, w, indices, info, latent_key, keys, template, source_size)


def model_identity(path: str) -> str:
    """A model's identity for cache keys: its resolved path (or hub id)."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path
