"""A musubi-tuner dataset config (``.toml``) read as hv-tune sources.

musubi-tuner (``docs/dataset_config.md``, ``src/musubi_tuner/dataset/config_utils.py``) describes
its data as ``[general]`` defaults plus ``[[datasets]]`` tables; a dataset's key wins over the
same key in ``[general]``. Each dataset becomes one hv-tune source: a folder (``video_directory``
/ ``image_directory``) or a musubi ``.jsonl`` list (``video_jsonl_file`` / ``image_jsonl_file``),
with its keys mapped to the per-source settings of ``SourceConfig`` (``docs/data.md`` has the
table). A key whose meaning we cannot reproduce is refused with a ``ConfigError`` naming the
file, the dataset and the key, never silently ignored.

Relative paths in the file are taken relative to the ``.toml`` file's folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hv_tune.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

#: keys allowed in [general] and in a dataset (musubi's DATASET_ASCENDABLE_SCHEMA)
SHARED_KEYS = ("resolution", "caption_extension", "batch_size", "num_repeats", "enable_bucket", "bucket_no_upscale")
#: keys of a dataset only
MEDIA_KEYS = ("video_directory", "image_directory", "video_jsonl_file", "image_jsonl_file")
VIDEO_KEYS = ("target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "source_fps")
#: accepted with no effect on the items: our cache is data.cache_dir, and clips are always resampled
#: to data.fps by their own timestamps (musubi's source_fps declares the rate we read from the file)
NO_EFFECT_KEYS = ("cache_directory", "source_fps")
UNSUPPORTED = {
    "control_directory": "control images/videos are not a training input here",
    "multiple_target": "layered (Qwen-Image-Layered) targets are not supported",
    "no_resize_control": "control images are not supported",
    "control_resolution": "control images are not supported",
    "flux_kontext_no_resize_control": "control images are not supported",
    "qwen_image_edit_no_resize_control": "control images are not supported",
    "qwen_image_edit_control_resolution": "control images are not supported",
}
#: musubi's defaults (config_utils.BaseDatasetParams / VideoDatasetParams)
DEFAULTS = {"resolution": [960, 544], "enable_bucket": False, "bucket_no_upscale": False, "num_repeats": 1,
            "batch_size": 1, "target_frames": [1], "frame_extraction": "head", "frame_stride": 1,
            "frame_sample": 1, "max_frames": 129}
#: musubi's frame_extraction -> ours (``full`` is handled by its own rule)
EXTRACTION = {"head": "head", "chunk": "chunks", "uniform": "uniform"}
RESOLUTION_STEP = 16  # musubi's bucket step (BucketSelector) for both HunyuanVideo families
FRAME_STEP = 4  # musubi rounds target_frames down to 4k+1 for every architecture (vae_frame_stride)


@dataclass
class TomlDataset:
    """One ``[[datasets]]`` table as an hv-tune source: where its media are and its settings."""

    index: int
    path: Path  # folder or .jsonl
    type: str  # "musubi_videos" | "musubi_images" (a directory: that kind, top folder only) | "jsonl"
    settings: dict[str, Any] = field(default_factory=dict)  # SourceConfig keys


def is_musubi_toml(path: str | Path, source_type: str = "auto") -> bool:
    """Whether a source (its path and ``type``) is a musubi-tuner dataset config: ``type: musubi_toml``,
    or ``auto`` and a ``.toml`` file."""
    if source_type != "auto":
        return source_type == "musubi_toml"
    p = Path(path).expanduser()
    return p.suffix.lower() == ".toml" and not p.is_dir()


def read_musubi_toml(path: str | Path, batch_size: int | None = None) -> list[TomlDataset]:
    """The datasets of a musubi-tuner dataset config, mapped to hv-tune source settings.

    Args:
        path: the ``.toml`` file.
        batch_size: ``training.batch_size``; a dataset's ``batch_size`` must equal it (one batch size
            per run here). None = not checked.

    Raises:
        ConfigError: unreadable TOML, no datasets, or a key we do not support (file, dataset index, key).
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not a readable TOML file ({e})") from e
    extra = sorted(set(doc) - {"general", "datasets"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {extra}; a musubi-tuner dataset config has "
                          "[general] and [[datasets]]")
    general, datasets = doc.get("general", {}), doc.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list) or not datasets:
        raise ConfigError(f"{path}: needs at least one [[datasets]] table (and [general] must be a table)")
    for key in general:
        if key not in SHARED_KEYS:
            raise ConfigError(f"{path}: [general] key {key!r} is not supported; [general] takes {', '.join(SHARED_KEYS)}")
    return [_dataset(path, i, general, d, batch_size) for i, d in enumerate(datasets)]


def _dataset(path: Path, i: int, general: dict, table: dict, batch_size: int | None) -> TomlDataset:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: [[datasets]] #{i} key {key!r}: {why}")

    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [[datasets]] #{i} is not a table (got {table!r})")
    for key in table:
        if key in UNSUPPORTED:
            raise bad(key, f"not supported ({UNSUPPORTED[key]}); remove it or train that dataset with musubi-tuner")
        if key not in SHARED_KEYS + MEDIA_KEYS + VIDEO_KEYS + NO_EFFECT_KEYS:
            raise bad(key, "unknown or not supported by hv-tune (docs/data.md lists the keys it reads)")
    media = [k for k in MEDIA_KEYS if k in table]
    if len(media) != 1:
        raise bad("video_directory", f"give exactly one of {', '.join(MEDIA_KEYS)} (got {media or 'none'})")
    video = media[0].startswith("video")
    if not video and any(k in table for k in VIDEO_KEYS if k != "source_fps"):
        key = next(k for k in VIDEO_KEYS if k in table)
        raise bad(key, "is a video key, but this is an image dataset")
    get = lambda k: table.get(k, general.get(k, DEFAULTS.get(k)))  # noqa: E731 (musubi's fallback order)
    src = Path(str(table[media[0]])).expanduser()
    src = src if src.is_absolute() else path.parent / src
    if not src.exists():
        raise bad(media[0], f"{src} does not exist (relative paths are read from the .toml file's folder)")
    settings: dict[str, Any] = {"repeats": _int(get("num_repeats"), 1, bad, "num_repeats")}
    settings["resolution"] = _resolution(get("resolution"), bad)
    if not get("enable_bucket"):
        raise bad("enable_bucket", "false (musubi's default: every item resized and cropped to exactly the "
                                   "resolution) is not supported; hv-tune always buckets by aspect ratio: set "
                                   "enable_bucket = true in [general]")
    settings["allow_upscale"] = not bool(get("bucket_no_upscale"))
    ext = get("caption_extension")
    if ext is not None and media[0].endswith("directory") and str(ext).lower() != ".txt":
        raise bad("caption_extension", f"{ext!r}: captions are read from .txt files beside the media; rename them")
    bs = _int(get("batch_size"), 1, bad, "batch_size")
    if batch_size is not None and bs != batch_size:
        raise bad("batch_size", f"{bs} differs from training.batch_size={batch_size}: hv-tune has one batch "
                                "size per run; set training.batch_size or remove it from the toml")
    settings |= _frames(get, bad) if video else {"frame_buckets": [1]}
    kind = ("musubi_videos" if video else "musubi_images") if media[0].endswith("directory") else "jsonl"
    return TomlDataset(i, src, kind, settings)


def _int(value: Any, low: int, bad, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise bad(key, f"must be an integer >= {low} (got {value!r})")
    return value


def _resolution(value: Any, bad) -> int:
    """musubi's resolution (one side, or ``[width, height]``) as our side length: the multiple of
    ``RESOLUTION_STEP`` nearest to ``sqrt(width * height)`` (our buckets keep that area, any aspect)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise bad("resolution", f"must be a side in pixels or [width, height] (got {value!r})")
    side = round(math.sqrt(value[0] * value[1]) / RESOLUTION_STEP) * RESOLUTION_STEP
    return max(RESOLUTION_STEP, side)


def _frames(get, bad) -> dict[str, Any]:
    """Video keys -> frame_buckets, frame_bucket_choice, frame_extraction, frame_samples."""
    mode = get("frame_extraction")
    if mode == "full":  # the whole clip, cut to 4k+1 frames and to max_frames: the longest 4k+1 that fits
        top = _int(get("max_frames"), 1, bad, "max_frames")
        return {"frame_buckets": list(range(1, top + 1, FRAME_STEP)), "frame_bucket_choice": "longest",
                "frame_extraction": "head"}
    if mode == "slide":
        raise bad("frame_extraction", "'slide' (windows every frame_stride frames) has no hv-tune equivalent; "
                                      "use 'chunk' (back-to-back windows) or 'uniform' with frame_sample")
    if mode not in EXTRACTION:
        raise bad("frame_extraction", f"{mode!r} is not one of head, chunk, slide, uniform, full")
    counts = get("target_frames")
    if not isinstance(counts, list) or not counts or not all(isinstance(n, int) and n >= 1 for n in counts):
        raise bad("target_frames", f"must be a list of frame counts >= 1 (got {counts!r})")
    rounded = sorted({(n - 1) // FRAME_STEP * FRAME_STEP + 1 for n in counts})  # as musubi rounds them
    out = {"frame_buckets": rounded, "frame_bucket_choice": "every", "frame_extraction": EXTRACTION[mode]}
    if mode == "uniform":
        out["frame_samples"] = _int(get("frame_sample"), 1, bad, "frame_sample")
    return out
