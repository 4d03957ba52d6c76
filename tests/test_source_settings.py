"""Per-source data settings (resolution, frame buckets, fps, upscaling) and musubi-tuner dataset .toml sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hv_tune.data.buckets import resolution_buckets
from hv_tune.data.cache import read_index
from hv_tune.data.demo import write_demo_folder
from hv_tune.data.encode import build_cache
from hv_tune.errors import ConfigError

from .conftest import cache_config


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 2 videos (8 frames, 64x64, 24 fps) and a folder of 2 stills (128x128), with captions."""
    root = tmp_path_factory.mktemp("two_sources")
    videos, stills = root / "videos", root / "stills"
    write_demo_folder(videos, 2, 8, 64, 64)
    (videos / "still.png").unlink()
    (videos / "still.txt").unlink()
    write_demo_folder(stills, 0, 8, 128, 128)
    shutil.copy(stills / "still.png", stills / "still2.png")
    (stills / "still2.txt").write_text("a second green square\n", encoding="utf-8")
    return videos, stills


def _sources(videos: Path, stills: Path, video_res: int = 64) -> str:
    return (f"data.sources=[{{path: {videos}, resolution: {video_res}, frame_buckets: [5]}}, "
            f"{{path: {stills}, resolution: 128, frame_buckets: [1]}}]")


def _buckets(cache: Path) -> dict[str, set]:
    out: dict[str, set] = {}
    for e in read_index(cache):
        out.setdefault(Path(e.source).parent.name, set()).add(e.bucket)
    return out


def test_each_source_is_cached_at_its_own_size_and_a_change_reencodes_only_that_source(
        spec, tiny_model, two_sources, tmp_path):
    videos, stills = two_sources
    cache = tmp_path / "cache"
    # data.* says 32 px and [1, 5]: each source's own keys win
    first = build_cache(spec, cache_config(tiny_model, videos, cache, _sources(videos, stills)), "cpu")
    assert not first.skipped, first.table()
    assert _buckets(cache) == {"videos": {(5, 64, 64)}, "stills": {(1, 128, 128)}}
    assert first.latents_encoded == 4
    assert first.sources == [f"data.sources[0] {videos}: 64 px, frame buckets [5] (longest), 24 fps, no upscale",
                             f"data.sources[1] {stills}: 128 px, frame buckets [1] (longest), 24 fps, no upscale"]
    assert "sources (their own resolution / frame buckets):" in first.table()
    # the video source at 32 px: its 2 latents are re-encoded, the stills' 2 are reused, no text changes
    again = build_cache(spec, cache_config(tiny_model, videos, cache, _sources(videos, stills, 32)), "cpu")
    assert _buckets(cache) == {"videos": {(5, 32, 32)}, "stills": {(1, 128, 128)}}
    assert (again.latents_encoded, again.latents_reused, again.texts_encoded) == (2, 2, 0)
    assert again.changes == ["data.sources changed: data.sources[0] resolution: 64 -> 32: its latents are "
                             "re-encoded (that source's items only)"]
    # data.resolution is used by no source: changing it re-encodes nothing, and the summary says so
    again = build_cache(spec, cache_config(tiny_model, videos, cache, _sources(videos, stills, 32),
                                           "data.resolution=48"), "cpu")
    assert (again.latents_encoded, again.texts_encoded) == (0, 0)
    assert again.changes == ["data.resolution: 32 -> 48: no effect: every source sets its own"]
    # a source's fps: 12 fps gives the 8-frame clips 4 frames, too short for the 5-frame bucket
    cfg = cache_config(tiny_model, videos, cache, f"data.sources=[{{path: {videos}, fps: 12}}]")
    third = build_cache(spec, cfg, "cpu")
    assert third.items == 0 and all("too short: 4 frames at 12 fps" in s.reason for s in third.skipped)


def test_the_memory_plan_takes_the_largest_bucket_over_all_sources(spec, tiny_model, two_sources, tmp_path):
    from hv_tune.training.plan import _tokens, largest_bucket

    videos, stills = two_sources
    cfg = cache_config(tiny_model, videos, tmp_path / "none", _sources(videos, stills))
    bucket, source = largest_bucket(cfg, spec)
    assert _tokens(spec, bucket) == max(_tokens(spec, (1, h, w)) for h, w in resolution_buckets(128, 16))
    assert bucket[0] == 1 and bucket[1] * bucket[2] >= 120 * 120  # a 128 px still, not data.resolution's 32 px
    assert "every source" in source
    # a 256 px video source outgrows the stills: 2 latent frames of ~256^2
    cfg = cache_config(tiny_model, videos, tmp_path / "none", _sources(videos, stills, 256))
    assert largest_bucket(cfg, spec)[0][0] == 5


def test_per_source_settings_are_validated(tiny_model, two_sources, tmp_path):
    videos, _ = two_sources
    cases = {f"data.sources=[{{path: {videos}, resolution: 100}}]": "data.sources[0].resolution",
             f"data.sources=[{{path: {videos}, frame_buckets: [6]}}]": "data.sources[0].frame_buckets[0]",
             f"data.sources=[{{path: {videos}, frame_buckets: []}}]": "data.sources[0].frame_buckets",
             f"data.sources=[{{path: {videos}, fps: 0}}]": "data.sources[0].fps"}
    for override, key in cases.items():
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            cache_config(tiny_model, videos, tmp_path / "c", override)


def test_every_frame_bucket_choice_cuts_a_clip_for_each_count():
    from hv_tune.data.buckets import clip_frame_buckets

    assert clip_frame_buckets(8, [1, 5, 9], "longest") == [5]
    assert clip_frame_buckets(8, [1, 5, 9], "every") == [1, 5]
    assert clip_frame_buckets(3, [1, 5], "longest") == []
    assert clip_frame_buckets(3, [5, 1], "every") == [1]


# ----------------------------------------------------------------------------- musubi-tuner dataset .toml

#: a dataset config in musubi-tuner's documented keys (docs/dataset_config.md): a video and an image dataset
MUSUBI_TOML = """
[general]
resolution = [64, 64]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = true

[[datasets]]
video_directory = "videos"
cache_directory = "cache_videos"
target_frames = [1, 5]
frame_extraction = "head"
source_fps = 24.0

[[datasets]]
image_directory = "stills"
cache_directory = "cache_stills"
resolution = [128, 128]
num_repeats = 2
"""


def _toml(folder: Path, text: str) -> Path:
    path = folder / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_musubi_dataset_toml_trains_the_same_items_as_the_equivalent_yaml(spec, tiny_model, two_sources, tmp_path):
    videos, stills = two_sources
    toml = _toml(videos.parent, MUSUBI_TOML)
    cache = tmp_path / "cache"
    built = build_cache(spec, cache_config(tiny_model, videos, cache, f"data.sources=[{{path: {toml}}}]"), "cpu")
    from_toml = read_index(cache)
    # head with target_frames [1, 5]: each 8-frame clip gives a 1-frame and a 5-frame item, as in musubi
    assert built.buckets == {"1x64x64": 2, "5x64x64": 2, "1x128x128": 2} and not built.skipped
    yaml = (f"data.sources=[{{path: {videos}, resolution: 64, frame_buckets: [1, 5], frame_bucket_choice: every, "
            f"frame_extraction: head, allow_upscale: false}}, "
            f"{{path: {stills}, resolution: 128, frame_buckets: [1], repeats: 2, allow_upscale: false}}]")
    again = build_cache(spec, cache_config(tiny_model, videos, cache, yaml), "cpu")
    assert (again.latents_encoded, again.texts_encoded) == (0, 0)  # every file the toml's run wrote is reused
    assert read_index(cache) == from_toml
    assert {e.repeats for e in from_toml if e.frames == 1 and e.height == 128} == {2}


@pytest.mark.parametrize("line, key", [
    ('frame_extraction = "slide"\nframe_stride = 2', "frame_extraction"),
    ('frame_extraction = "random"', "frame_extraction"),
    ('control_directory = "videos"', "control_directory"),
    ("fp_latent_window_size = 9", "fp_latent_window_size"),
    ("batch_size = 4", "batch_size"),
    ('caption_extension = ".caption"', "caption_extension"),
    ("target_frames = []", "target_frames"),
    ("resolution = [64]", "resolution"),
])
def test_a_musubi_toml_key_we_do_not_support_is_refused_naming_file_dataset_and_key(
        tiny_model, two_sources, tmp_path, line, key):
    videos, _ = two_sources
    first = MUSUBI_TOML.index("[[datasets]]")
    text = MUSUBI_TOML[:first] + "\n".join(
        ln for ln in MUSUBI_TOML[first:].splitlines() if not ln.startswith(key + " ")) + "\n"
    text = text.replace("source_fps = 24.0", f"source_fps = 24.0\n{line}", 1)
    toml = _toml(tmp_path, text.replace('"videos"', f'"{videos}"').replace('"stills"', f'"{videos.parent / "stills"}"'))
    with pytest.raises(ConfigError) as err:
        cache_config(tiny_model, videos, tmp_path / "c", f"data.sources=[{{path: {toml}}}]")
    assert str(toml) in str(err.value) and "[[datasets]] #0" in str(err.value) and repr(key) in str(err.value)


def test_a_musubi_toml_without_buckets_or_with_yaml_overrides_is_refused(tiny_model, two_sources, tmp_path):
    videos, _ = two_sources
    toml = _toml(videos.parent, MUSUBI_TOML.replace("enable_bucket = true", "enable_bucket = false"))
    with pytest.raises(ConfigError, match="enable_bucket"):
        cache_config(tiny_model, videos, tmp_path / "c", f"data.sources=[{{path: {toml}}}]")
    toml = _toml(videos.parent, MUSUBI_TOML)
    with pytest.raises(ConfigError, match=r"data.sources\[0\].resolution.*set it in the .toml"):
        cache_config(tiny_model, videos, tmp_path / "c", f"data.sources=[{{path: {toml}, resolution: 64}}]")


def test_musubi_full_extraction_maps_to_the_longest_4k_plus_1_count(tmp_path):
    from hv_tune.musubi_toml import read_musubi_toml

    (tmp_path / "v").mkdir()
    toml = _toml(tmp_path, '[general]\nenable_bucket = true\nresolution = [960, 544]\n[[datasets]]\n'
                           'video_directory = "v"\nframe_extraction = "full"\nmax_frames = 13\n')
    (d,) = read_musubi_toml(toml)
    # sqrt(960 * 544) = 722.6 -> 720 (multiple of 16); bucket_no_upscale unset -> musubi upscales
    assert d.settings == {"repeats": 1, "resolution": 720, "allow_upscale": True, "frame_buckets": [1, 5, 9, 13],
                          "frame_bucket_choice": "longest", "frame_extraction": "head"}
    assert d.path == tmp_path / "v" and d.type == "musubi_videos"


def test_a_musubi_directory_is_read_as_musubi_reads_it(tiny_model, two_sources, tmp_path):
    """A video_directory: its own videos only (an image beside them and a subfolder are not items)."""
    from hv_tune.data.sources import scan_sources

    videos, stills = two_sources
    folder = tmp_path / "videos"
    shutil.copytree(videos, folder)
    shutil.copy(stills / "still.png", folder / "photo.png")
    (folder / "photo.txt").write_text("a photo\n", encoding="utf-8")
    shutil.copytree(videos, folder / "nested")
    toml = _toml(tmp_path, MUSUBI_TOML.replace('image_directory = "stills"', f'image_directory = "{stills}"'))
    scan = scan_sources(cache_config(tiny_model, videos, tmp_path / "c", f"data.sources=[{{path: {toml}}}]").data)
    assert sorted(m.path.name for m in scan.items if m.kind == "video") == sorted(p.name for p in videos.glob("*.mp4"))
    assert [s.reason for s in scan.skipped if s.path.endswith("photo.png")] == [
        "image in a musubi-tuner video_directory, which reads videos only"]
    # the same folder as a YAML folder source is read recursively, images included
    scan = scan_sources(cache_config(tiny_model, folder, tmp_path / "c").data)
    assert len(scan.items) == 2 * len(list(videos.glob("*.mp4"))) + 1


@pytest.mark.parametrize("lines, settings", [
    ('frame_extraction = "chunk"\ntarget_frames = [5, 3]',
     {"frame_buckets": [1, 5], "frame_bucket_choice": "every", "frame_extraction": "chunks"}),
    ('frame_extraction = "uniform"\ntarget_frames = [9]\nframe_sample = 3',
     {"frame_buckets": [9], "frame_bucket_choice": "every", "frame_extraction": "uniform", "frame_samples": 3}),
    ('frame_extraction = "head"\ntarget_frames = [1, 25, 45]',
     {"frame_buckets": [1, 25, 45], "frame_bucket_choice": "every", "frame_extraction": "head"}),
])
def test_musubi_extraction_modes_map_to_ours(tmp_path, lines, settings):
    from hv_tune.musubi_toml import read_musubi_toml

    (tmp_path / "v").mkdir()
    toml = _toml(tmp_path, f'[general]\nenable_bucket = true\nresolution = 256\nnum_repeats = 3\n'
                           f'[[datasets]]\nvideo_directory = "v"\n{lines}\n')
    (d,) = read_musubi_toml(toml)
    # target_frames are rounded down to 4k+1 as musubi-tuner rounds them (3 -> 1)
    assert d.settings == {"repeats": 3, "resolution": 256, "allow_upscale": True} | settings


def test_per_source_sizes_plan_the_same_way_for_hunyuan_video_1_5(hv15_tiny, two_sources, tmp_path):
    """The data settings are family-independent: a 1.5 model plans each source at its own size too."""
    from hv_tune.data.plan import plan_items
    from hv_tune.data.sources import scan_sources
    from hv_tune.models import get_spec

    videos, stills = two_sources
    cfg = cache_config(hv15_tiny, videos, tmp_path / "c", "model.name=hunyuan-video-1.5", _sources(videos, stills))
    items = plan_items(scan_sources(cfg.data), cfg.data, "m", get_spec("hunyuan-video-1.5").video)
    assert {(p.media.path.parent.name, p.bucket) for p in items} == {("videos", (5, 64, 64)),
                                                                      ("stills", (1, 128, 128))}
