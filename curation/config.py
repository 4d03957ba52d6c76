"""Curation config: one dataclass per concern, loaded from YAML with ``key.path=value`` overrides.

Every field is defined once here (type, default, one-line doc). ``validate`` runs every value
and cross-field check before any file is decoded or any model is loaded. Thresholds live in
``filters`` and are the only scoring-related keys ``python -m curation filter`` may change.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from curation.errors import ConfigError
from hv_tune import typed_config as typed
from hv_tune.typed_config import doc_field

_f = doc_field


@dataclass
class InputConfig:
    video_extensions: list[str] = _f([".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"], "Files treated as videos.")
    image_extensions: list[str] = _f([".jpg", ".jpeg", ".png", ".webp", ".bmp"], "Files treated as images.")


@dataclass
class ProbeConfig:
    max_pixels: int = _f(4096 * 4096, "Largest width*height decoded; bigger files become rejected records.")
    max_duration_s: float = _f(4 * 3600.0, "Longest video accepted for scene detection, in seconds.")
    timeout_s: float = _f(60.0, "Time limit of one file's probe (run in a separate process).")
    max_memory_mb: int = _f(4096, "Address-space limit of the probe process (0 = none).")
    frame_count_tolerance: float = _f(0.02, "Relative mismatch between container and decoded frame count that is noted.")


@dataclass
class ScenesConfig:
    adaptive_threshold: float = _f(3.0, "AdaptiveDetector: ratio of a frame's score to its neighbours' for a cut.")
    min_content_val: float = _f(15.0, "AdaptiveDetector: minimum content change for a cut.")
    window_width: int = _f(2, "AdaptiveDetector: frames on each side in the rolling average.")
    min_scene_len: int = _f(15, "AdaptiveDetector: frames between two cuts at least.")
    detect_width: int = _f(256, "Decode width for detection (a multiple of 32; PySceneDetect downscales anyway).")
    trim_frames: int = _f(1, "Frames dropped on each side of a detected cut (boundary frames leak across).")
    min_clip_s: float = _f(2.0, "Scenes shorter than this (after trimming) become rejected records.")
    max_clip_s: float = _f(10.0, "Longer scenes are cut into equal pieces no longer than this.")
    black_luma: float = _f(0.1, "A pixel is black below this luma (fraction of white; ffmpeg blackdetect's pix_th).")
    black_pixels: float | None = _f(
        0.95, "A frame is near-black when this share of its pixels is black (blackdetect's pic_th, 0.98 there); "
        "such stretches (fades, black, title cards) are cut out of clips. null = keep them."
    )
    fade_step: float = _f(0.02, "Frames beside a black stretch that darken toward it by at least this "
                                "fraction per frame are its fade and are cut out with it.")


@dataclass
class FramesConfig:
    positions: list[float] = _f([0.1, 0.5, 0.9], "Where in a clip the scored frames sit (fractions; first/last compared).")
    short_side: int = _f(256, "Short side of decoded scoring frames (resized while decoding).")


@dataclass
class MotionConfig:
    fps: float = _f(2.0, "Frame rate of the frames that optical flow compares.")
    max_pairs: int = _f(16, "At most this many frame pairs per clip (bounds cost on long clips).")
    pyr_scale: float = _f(0.5, "Farneback pyramid scale.")
    levels: int = _f(3, "Farneback pyramid levels.")
    winsize: int = _f(15, "Farneback averaging window.")
    iterations: int = _f(3, "Farneback iterations per level.")


@dataclass
class ZeroShotPrompt:
    name: str = _f("", "Score name (stored as zs_<name>); threshold in filters.zero_shot_max.<name>.")
    positive: list[str] = _f([], "Prompts describing the defect.")
    negative: list[str] = _f([], "Prompts describing a clean frame.")


DEFAULT_ZERO_SHOT = [
    ZeroShotPrompt("watermark", ["a photo with a watermark", "a frame with a logo watermark"], ["a clean photo"]),
    ZeroShotPrompt("text_overlay", ["a frame with subtitles or text overlay"], ["a frame without any text"]),
    ZeroShotPrompt("blurry", ["a blurry, out of focus photo"], ["a sharp, in focus photo"]),
    ZeroShotPrompt("letterbox", ["a frame with black bars at the top and bottom"], ["a full frame photo"]),
]


@dataclass
class ClipConfig:
    model: str = _f("ViT-L-14", "open_clip model name, or local-dir:/path (open_clip_config.json + weights).")
    pretrained: str | None = _f("openai", "open_clip pretrained tag or checkpoint file; null with local-dir:.")
    aesthetic_head: str = _f("", "LAION aesthetic MLP (.pth state dict, layers.0/2/4/6/7); empty = no aesthetic score.")
    batch_size: int = _f(32, "Frames per CLIP forward pass.")
    device: str = _f("auto", "torch device for CLIP; auto = cuda if available, else cpu.")
    zero_shot: list[ZeroShotPrompt] = _f(DEFAULT_ZERO_SHOT, "Zero-shot prompt filters (defect vs clean).")


DEFAULT_PROMPT = (
    "Describe this video for a text-to-video training caption in one paragraph. Cover, in order: "
    "the subject, its motion, the scene, the camera (angle and movement), the lighting and the visual "
    "style. Be concrete and do not speculate."
)


@dataclass
class CaptionConfig:
    enabled: bool = _f(True, "Caption accepted clips (model captions only where no user caption exists).")
    model: str = _f("Qwen/Qwen2.5-VL-7B-Instruct", "transformers vision-language model: local folder or hub id.")
    revision: str | None = _f(None, "Hub revision when `model` is a hub id.")
    prompt: str = _f(DEFAULT_PROMPT, "Structured instruction: subject, motion, scene, camera, lighting, style.")
    trigger_word: str = _f("", "Starts every caption (yours and the model's) once as '<trigger>, <caption>'; replaces [trigger].")
    overwrite: bool = _f(False, "Replace user captions (source.txt or an edited clips/ID.txt).")
    batch_size: int = _f(4, "Clips per generate() call.")
    num_frames: int = _f(8, "Frames given to the model per clip (evenly spaced; even is best for Qwen).")
    short_side: int = _f(336, "Short side of caption frames.")
    max_new_tokens: int = _f(160, "Longest caption in tokens.")
    device: str = _f("auto", "torch device; auto = cuda if available, else cpu.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = _f("auto", "Model dtype; auto = bf16 on GPU, fp32 on CPU.")


@dataclass
class FilterConfig:
    aesthetic_min: float | None = _f(4.5, "Reject below this LAION aesthetic score (null = off).")
    motion_min: float | None = _f(0.002, "Reject as static below this motion (diagonals per second).")
    motion_max: float | None = _f(None, "Reject as shaky above this motion (null = off).")
    frame_diff_min: float | None = _f(None, "Reject as static below this frame difference per second (null = off).")
    first_last_sim_min: float | None = _f(0.6, "Reject as transition below this first/last frame CLIP cosine.")
    zero_shot_max: dict[str, float] = _f(
        {"watermark": 0.8, "text_overlay": 0.8, "blurry": 0.8, "letterbox": 0.8},
        "Reject when a zero-shot defect probability exceeds its threshold (keys: clip.zero_shot names).",
    )
    duplicate_cosine: float | None = _f(0.98, "Near-duplicates at or above this clip cosine keep only the best.")


@dataclass
class ExportConfig:
    copy_clips: bool = _f(True, "Cut accepted clips to clips/ID.mp4 + ID.txt (false: spans in the manifest only).")
    crf: int = _f(18, "x264 quality of cut clips (lower = better).")
    thumb_height: int = _f(72, "Height of report thumbnails in pixels.")


@dataclass
class RayConfig:
    address: str | None = _f(None, "Ray cluster address; null starts a local instance.")
    num_cpus: int | None = _f(None, "CPUs of a local instance (null = all).")
    object_store_mb: int | None = _f(None, "Object store size of a local instance (null = Ray's default).")
    model_actors: int = _f(1, "Actors per model stage (each loads the model once).")
    num_gpus: float = _f(0.0, "GPUs per model actor (1 on a GPU cluster).")


@dataclass
class CurationConfig:
    executor: Literal["local", "ray"] = _f("local", "Run stages in-process or on Ray Data.")
    batch_size: int = _f(8, "Clips per batch handed to a stage.")
    workers: int | Literal["auto"] = _f(
        "auto", "Local executor: worker processes for the CPU stages (probe, scene split, frame decode, "
        "motion, clip cutting); auto = the machine's cores, 0 = all in the calling process.")
    frames_in_flight: int = _f(1024, "Local executor: no new file or clip is started while this many "
                               "scoring frames wait for CLIP (bounds memory).")
    input: InputConfig = _f(InputConfig(), "Which files are inputs.")
    probe: ProbeConfig = _f(ProbeConfig(), "Bounds on what one file may cost.")
    scenes: ScenesConfig = _f(ScenesConfig(), "Scene split.")
    frames: FramesConfig = _f(FramesConfig(), "Frame sampling for scoring.")
    motion: MotionConfig = _f(MotionConfig(), "Optical flow motion score.")
    clip: ClipConfig = _f(ClipConfig(), "CLIP embeddings, aesthetic head, zero-shot prompts.")
    caption: CaptionConfig = _f(CaptionConfig(), "Captions for accepted clips.")
    filters: FilterConfig = _f(FilterConfig(), "Thresholds (re-appliable with `curation filter`).")
    export: ExportConfig = _f(ExportConfig(), "Clips and report.")
    ray: RayConfig = _f(RayConfig(), "Ray executor.")


def load_raw(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty when ``path`` is None)."""
    return {} if path is None else typed.read_yaml_mapping(path)


# Keys that hold paths: always (``path``), after ``local-dir:``, or when the value looks like a
# path or names an existing one (``maybe``: otherwise a hub id or an open_clip tag).
PATH_KEYS = {("clip", "model"): "local-dir", ("clip", "pretrained"): "maybe",
             ("clip", "aesthetic_head"): "path", ("caption", "model"): "maybe"}


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of ``raw`` (``PATH_KEYS``) absolute against ``base``, in place.

    ``~`` is expanded and ``..`` removed (lexically: a linked model file keeps its name).
    """
    for (section, key), kind in PATH_KEYS.items():
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value:
            continue
        if kind == "local-dir":
            if value.startswith("local-dir:"):
                node[key] = "local-dir:" + _absolute(value[len("local-dir:"):], base)
        elif kind == "path" or value.startswith(("/", "./", "../", "~")) or (base / value).exists():
            node[key] = _absolute(value, base)


def _absolute(value: str, base: Path) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> CurationConfig:
    """Load a YAML config, apply ``a.b=value`` overrides, and validate.

    Relative paths in the file (model folders, the aesthetic head) are relative to the file's
    folder, so a config works from any working directory; paths in ``overrides`` are relative
    to the working directory. Both are made absolute (what ``OUT/state/config.yaml`` stores).

    Raises:
        ConfigError: naming the bad key and what to do.
    """
    raw = load_raw(path)
    if path is not None:
        resolve_paths(raw, Path(os.path.abspath(path)).parent)
    for item in overrides:  # hv_tune's typed loader: the one loader (and error tree) of the project
        typed.apply_override(raw, item)
    resolve_paths(raw, Path.cwd())  # the overrides' paths (the file's are absolute by now)
    cfg = typed.from_dict(CurationConfig, raw)
    validate(cfg)
    return cfg


def to_dict(cfg: CurationConfig) -> dict[str, Any]:
    """The config as plain data (what a run stores in OUT_DIR/state/config.yaml)."""
    return dataclasses.asdict(cfg)


def validate(cfg: CurationConfig) -> None:
    """All value and cross-field checks; nothing is decoded or loaded.

    Raises:
        ConfigError: naming the first bad key and what to do.
    """
    p, s, fr, m, c, cap, fl = cfg.probe, cfg.scenes, cfg.frames, cfg.motion, cfg.clip, cfg.caption, cfg.filters
    checks: list[tuple[bool, str, str]] = [
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
        (cfg.workers == "auto" or cfg.workers >= 0, "workers", "must be auto or >= 0"),
        (cfg.frames_in_flight >= 1, "frames_in_flight", "must be >= 1"),
        (p.max_pixels > 0, "probe.max_pixels", "must be > 0"),
        (p.timeout_s > 0, "probe.timeout_s", "must be > 0"),
        (s.detect_width >= 32 and s.detect_width % 32 == 0, "scenes.detect_width", "must be a positive multiple of 32"),
        (s.trim_frames >= 0, "scenes.trim_frames", "must be >= 0"),
        (s.min_clip_s >= 0, "scenes.min_clip_s", "must be >= 0"),
        (s.max_clip_s > s.min_clip_s, "scenes.max_clip_s", f"must be > scenes.min_clip_s ({s.min_clip_s})"),
        (s.window_width >= 1, "scenes.window_width", "must be >= 1"),
        (0 < s.black_luma < 1, "scenes.black_luma", "must be in (0, 1) (a fraction of white)"),
        (s.black_pixels is None or 0 < s.black_pixels <= 1, "scenes.black_pixels", "must be in (0, 1] or null"),
        (s.fade_step >= 0, "scenes.fade_step", "must be >= 0"),
        (bool(fr.positions) and all(0 <= x <= 1 for x in fr.positions), "frames.positions", "must be fractions in [0, 1]"),
        (fr.short_side >= 32, "frames.short_side", "must be >= 32"),
        (m.fps > 0, "motion.fps", "must be > 0"),
        (m.max_pairs >= 1, "motion.max_pairs", "must be >= 1"),
        (bool(c.model), "clip.model", "is required: an open_clip model name or local-dir:/path"),
        (c.batch_size >= 1, "clip.batch_size", "must be >= 1"),
        (cap.batch_size >= 1, "caption.batch_size", "must be >= 1"),
        (cap.num_frames >= 1, "caption.num_frames", "must be >= 1"),
        (not cap.enabled or bool(cap.model), "caption.model", "is required when caption.enabled is true"),
        (fl.duplicate_cosine is None or 0 < fl.duplicate_cosine <= 1.0, "filters.duplicate_cosine", "must be in (0, 1]"),
        (cfg.ray.model_actors >= 1, "ray.model_actors", "must be >= 1"),
        (cfg.ray.num_gpus >= 0, "ray.num_gpus", "must be >= 0"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {msg}")
    names = [z.name for z in c.zero_shot]
    for i, z in enumerate(c.zero_shot):
        if not z.name or not z.positive or not z.negative:
            raise ConfigError(f"config key 'clip.zero_shot[{i}]' needs a name and positive and negative prompts")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'clip.zero_shot': names must be unique (got {names})")
    for name in fl.zero_shot_max:
        if name not in names:
            raise ConfigError(
                f"config key 'filters.zero_shot_max.{name}': no zero-shot prompt named {name!r} "
                f"in clip.zero_shot (names: {', '.join(names) or 'none'})"
            )
    if c.model.startswith("local-dir:"):  # the model first: the head is useless without it
        _check_local(c.model[len("local-dir:"):], "clip.model", "an open_clip folder (python -m curation tiny-models DIR)")
    if c.aesthetic_head and not Path(c.aesthetic_head).expanduser().exists():
        raise ConfigError(f"config key 'clip.aesthetic_head': {c.aesthetic_head!r} does not exist; {aesthetic_source(c.aesthetic_head)}")


def _check_local(path: str, key: str, what: str) -> None:
    if path and not Path(path).expanduser().exists():
        raise ConfigError(f"config key {key!r}: {path!r} does not exist; point it at {what}")


AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_REPO = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
AESTHETIC_HUB = "camenduru/improved-aesthetic-predictor"  # a Hugging Face mirror of the same file


def aesthetic_source(path: str) -> str:
    """Where the LAION aesthetic head comes from and the commands that put it at ``path``."""
    target = Path(path).expanduser()
    folder = target.parent
    return (f"it is the LAION improved aesthetic predictor ({AESTHETIC_FILE}, 3.7 MB, from {AESTHETIC_REPO}): "
            f"fetch it with `wget -O '{target}' '{AESTHETIC_REPO}/raw/main/{AESTHETIC_FILE}'` "
            f"or `hf download {AESTHETIC_HUB} '{AESTHETIC_FILE}' --local-dir '{folder}'` (then point "
            "clip.aesthetic_head at it), or run without aesthetic scores: clip.aesthetic_head= filters.aesthetic_min=null")


# Keys `curation filter` may change: thresholds and output options; anything else needs a new run.
FILTER_SECTIONS = ("filters", "export", "caption")
