"""The media layer (hv_tune.media) and the cache on phone-style inputs: rotation, EXIF, VFR, codecs.

Inputs are built here (tests/media_files.py); upright checks use pixels (a red band that must
end up at the top), not only sizes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hv_tune.config import DataConfig, SourceConfig
from hv_tune.data.buckets import resampled_by_time
from hv_tune.data.encode import load_pixels
from hv_tune.data.plan import plan_items
from hv_tune.data.sources import scan_sources
from hv_tune.media import (
    MediaError,
    VideoFrames,
    VideoProbe,
    decode_caption_bytes,
    image_size,
    probe_video,
    read_image,
    scaled_size,
    write_h264,
)
from hv_tune.media.probe import torchcodec_available
from hv_tune.media.video import quarter_turns
from hv_tune.media.writer import frame_times, thread_scheduling
from hv_tune.models import DEFAULT_MODEL, get_spec
from tests.media_files import (
    RED,
    decode_pyav,
    marked_frames,
    top_is_red,
    vfr_times,
    write_audio_only,
    write_exif_jpeg,
    write_video,
)

ROTATIONS = [-90, 90, 180, 270]
BACKENDS = ["pyav", "torchcodec"] if torchcodec_available() else ["pyav"]


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> dict[int, Path]:
    """A 176x320 (portrait) displayed clip stored as phones store it, per rotation; 0 = not rotated."""
    d = tmp_path_factory.mktemp("rotated")
    display = marked_frames(12, 320, 176, seed=1)
    return {r: write_video(d / f"rot{r}.mp4", display, rotation=r) for r in [0, *ROTATIONS]}


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_torchcodec_turns_the_picture_then_resizes(rotated, rotation):
    """What torchcodec does with a display matrix (the media layer relies on it): it returns
    the turned picture, and its Resize applies to the turned picture."""
    pytest.importorskip("torchcodec")
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    full = VideoDecoder(str(rotated[rotation]), dimension_order="NHWC")[0].numpy()
    assert full.shape == (320, 176, 3) and top_is_red(full)
    small = VideoDecoder(str(rotated[rotation]), dimension_order="NHWC", transforms=[Resize((174, 96))])[0].numpy()
    assert small.shape == (174, 96, 3) and top_is_red(small)
    stored, _, frame_rotation = decode_pyav(rotated[rotation])  # PyAV: the stored picture + its rotation
    assert stored.shape[1:3] == ((176, 320) if rotation % 180 else (320, 176))
    assert frame_rotation % 360 == rotation % 360 and not top_is_red(stored[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotation", [0, *ROTATIONS])
def test_probe_and_frames_are_upright_display_size(rotated, rotation, backend):
    probe = probe_video(rotated[rotation])
    assert (probe.width, probe.height) == (176, 320) and probe.num_frames == 12
    assert probe.stored_size == ((320, 176) if rotation % 180 else (176, 320))
    probe = dataclasses.replace(probe, backend=backend)
    for size in (None, (64, 116)):
        frames = VideoFrames(rotated[rotation], probe, size).get([0, 11, 5])
        assert frames.shape == (3, *((320, 176) if size is None else (116, 64)), 3)
        assert all(top_is_red(f) for f in frames)


@pytest.mark.parametrize("rotation", [0, *ROTATIONS])
def test_pyav_frames_are_pyavs_own_conversion_turned(rotated, rotation):
    """The PyAV reader converts on one thread and turns with ``quarter_turns``: the pixels are those of
    PyAV's default conversion (threads chosen by FFmpeg) turned by numpy, at full and reduced size (identical
    on the 2-core machine; 1 level allowed, as the default's slices follow the machine's core count)."""
    import av

    probe = probe_video(rotated[rotation])
    assert probe.backend == "pyav"
    for size in (None, (64, 116)):
        got = VideoFrames(rotated[rotation], probe, size).get(range(12))
        turned = (size[1], size[0]) if size and rotation % 180 else size
        with av.open(str(rotated[rotation])) as c:
            ref = [f.to_ndarray(format="rgb24", **({"width": turned[0], "height": turned[1]} if size else {}))
                   for f in c.decode(video=0)]
        turned_ref = np.stack([np.rot90(f, k=(rotation // 90) % 4) for f in ref])
        assert got.shape == turned_ref.shape and np.abs(got.astype(int) - turned_ref).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_quarter_turns_is_numpys_rot90(channels):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, channels), dtype=np.uint8)
    for k in range(-4, 6):
        out = quarter_turns(image, k)
        assert np.array_equal(out, np.rot90(image, k=k)) and out.flags.c_contiguous


@pytest.mark.parametrize("backend", BACKENDS)
def test_av1_is_decoded_by_each_decoder(tmp_path, backend):
    path = write_video(tmp_path / "av1.mp4", marked_frames(8, 96, 128, seed=2), codec="libsvtav1")
    probe = probe_video(path)
    assert probe.backend == "pyav" and probe.codec == "av1" and probe.num_frames == 8
    frames = VideoFrames(path, dataclasses.replace(probe, backend=backend)).get([7, 0])
    assert frames.shape == (2, 96, 128, 3) and all(top_is_red(f) for f in frames)
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 1  # two different frames


def test_no_video_stream_and_empty_file_are_named(tmp_path):
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(write_audio_only(tmp_path / "voice.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        probe_video(tmp_path / "empty.mp4")


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> Path:
    """2 s at 8 fps, then 2 s at 48 fps (112 frames)."""
    pts = vfr_times()
    return write_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", marked_frames(len(pts), 64, 96, seed=3),
                       fps=48, pts_s=pts)


def test_vfr_probe_uses_presentation_timestamps(vfr_clip):
    probe = probe_video(vfr_clip)
    assert probe.num_frames == 112 and probe.vfr and probe.duration == pytest.approx(4.0, abs=0.03)
    assert probe.times[16] == pytest.approx(2.0, abs=1e-3) and probe.times[15] == pytest.approx(1.875, abs=1e-3)
    assert probe.to_record()["notes"] == ["variable frame rate (8-48 fps)"]


def test_resampling_by_time_keeps_real_speed():
    times = np.asarray(vfr_times())
    idx = resampled_by_time(times, 4.0, 24.0)
    assert len(idx) == 96  # 4 s at 24 fps
    assert idx[:6] == [0, 0, 0, 1, 1, 1] and idx[48:51] == [16, 18, 20]  # hold at 8 fps, skip at 48 fps
    assert times[idx[24]] == pytest.approx(1.0)  # a 25-frame item covers 1.0 s of source
    assert resampled_by_time(np.arange(30) / 30, 1.0, 24.0) == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15,
                                                               16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 28]


def test_writer_keeps_source_timestamps(vfr_clip, tmp_path):
    reader = VideoFrames(vfr_clip)
    out = write_h264(tmp_path / "cut.mp4", [reader.get(range(10, 20)), reader.get(range(20, 30))],
                     reader.times[10:30])
    frames, times, _ = decode_pyav(out)
    assert len(frames) == 20 and np.allclose(times, reader.times[10:30] - reader.times[10], atol=2e-3)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(tmp_path, orientation):
    path = write_exif_jpeg(tmp_path / f"o{orientation}.jpg", marked_frames(1, 160, 96, seed=4)[0], orientation)
    img = read_image(path)
    assert img.shape == (160, 96, 3) and top_is_red(img) and image_size(path) == (96, 160)


@pytest.mark.parametrize(("raw", "text", "note"), [
    ("café".encode("cp1252"), "café", "caption not UTF-8; decoded as cp1252"),
    (b"\xef\xbb\xbf" + "café".encode(), "café", None),
    ("café".encode("utf-16"), "café", "caption decoded as UTF-16"),
    ("café".encode(), "café", None),
])
def test_caption_encodings(raw, text, note):
    assert decode_caption_bytes(raw) == (text, note)


# ----------------------------------------------------------------------------- the cache stage


def _plan(folder: Path, buckets: list[int]):
    data = DataConfig(sources=[SourceConfig(path=str(folder))], resolution=128, frame_buckets=buckets,
                      missing_caption="empty")
    scan = scan_sources(data)
    return plan_items(scan, data, "test-model", get_spec(DEFAULT_MODEL).video), scan


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_cache_bucket_and_pixels_are_display_picture(rotated, rotation, tmp_path):
    (tmp_path / "clip.mp4").symlink_to(rotated[rotation])
    (items, scan) = _plan(tmp_path, [1, 9])
    assert not scan.skipped and len(items) == 1
    item = items[0]
    assert item.height > item.width  # a portrait bucket
    pixels = load_pixels(item)  # [3, F, H, W] in [-1, 1]
    frames = ((pixels.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)  # -> [F, H, W, 3]
    assert frames.shape[1:3] == (item.height, item.width) and all(top_is_red(f) for f in frames)


@pytest.mark.parametrize("orientation", [6, 8])
def test_cache_uses_exif_upright_image(tmp_path, orientation):
    write_exif_jpeg(tmp_path / "photo.jpg", marked_frames(1, 160, 96, seed=5)[0], orientation)
    (items, _) = _plan(tmp_path, [1])
    item = items[0]
    assert item.height > item.width
    frames = ((load_pixels(item).permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert top_is_red(frames[0])


def test_cache_vfr_window_covers_one_second(vfr_clip, tmp_path):
    (tmp_path / "vfr.mp4").symlink_to(vfr_clip)
    (items, _) = _plan(tmp_path, [1, 25])
    times = probe_video(vfr_clip).times
    span = times[items[0].indices[-1]] - times[items[0].indices[0]]
    assert span == pytest.approx(1.0, abs=0.03)  # by average fps (28) it would be 2.25 s


def test_cache_summary_reports_tokens_dropped_from_a_long_caption(spec, tiny_model, tmp_path):
    from hv_tune.data.encode import build_cache
    from hv_tune.models import LoadOptions
    from tests.conftest import cache_config

    folder = tmp_path / "clips"
    write_video(folder / "long.mp4", marked_frames(12, 32, 32, seed=10), fps=24)
    words = " ".join(f"word{i}" for i in range(400))
    (folder / "long.txt").write_text(words)
    write_video(folder / "short.mp4", marked_frames(12, 32, 32, seed=11), fps=24)
    (folder / "short.txt").write_text("a short caption")
    enc = spec.text.load(LoadOptions(str(tiny_model)))
    n = len(enc["text_encoder"].tokenizer(words, add_special_tokens=False).input_ids)  # the caption alone, Llama 3
    summary = build_cache(spec, cache_config(tiny_model, folder, tmp_path / "cache"), "cpu")
    notes = [s.reason for s in summary.notes if s.path.startswith("caption")]
    assert len(notes) == 1, notes  # the short caption fits
    assert n > 256
    assert notes[0] == f"{n - 256} caption tokens dropped: longer than the text encoder's limit"  # 256 kept


def test_demo_prints_a_readable_prompt():
    from hv_tune.demo import readable_prompt

    assert readable_prompt("a red circle  moves left") == "'a red circle moves left'"
    junk = "sks, \u0000\u4f60\u597d\ufffd\u0007" + "\u0b85" * 20
    shown = readable_prompt(junk)
    assert shown.isascii() and shown.isprintable() and "'sks'" in shown and "random text" in shown


# ----------------------------------------------------------------------------- the decoder of a file


def _shots() -> np.ndarray:
    """Three shots (30, 36, 30 frames, 96x64) of curation's sample shapes, a red band on top."""
    from curation.samples import moving_shape

    frames = np.concatenate([moving_shape(30, 64, 96, color=0, background=0, texture_seed=1),
                             moving_shape(36, 64, 96, color=2, background=1, square=True, speed=-1, texture_seed=2),
                             moving_shape(30, 64, 96, color=3, background=2, texture_seed=3)])
    frames[:, :8] = RED
    return frames


@pytest.fixture(scope="module")
def hard_media(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Files that once decoded in one access pattern and failed in another: (path, displayed frames)."""
    d = tmp_path_factory.mktemp("hard")
    out = {}
    for name, frames, kw in [
        ("tiny48x32", marked_frames(24, 32, 48, seed=20), {}),
        ("tiny_rot90", marked_frames(24, 48, 32, seed=21), {"rotation": 90}),
        ("av1_long_gop", marked_frames(72, 72, 100, seed=22), {"codec": "libsvtav1", "fps": 24}),
        # three shots: x264 puts a key frame at each cut whose B-frames need the frames before it
        ("scene_cuts", _shots(), {}),
    ]:
        out[name] = (write_video(d / f"{name}.mp4", frames, **kw), frames)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny48x32", "tiny_rot90", "av1_long_gop", "scene_cuts"])
def test_every_access_pattern_reads_the_same_frames(hard_media, name, backend):
    """Scene split (sequential, reduced), scoring (seeks, short side 256), cut (sequential chunks, full
    size): all decode, upright, and show the source's frames at their indices."""
    path, src = hard_media[name]
    probe = dataclasses.replace(probe_video(path), backend=backend)
    n, (w, h) = probe.num_frames, (probe.width, probe.height)
    assert n == len(src) and (h, w) == src.shape[1:3]
    cut = np.concatenate([VideoFrames(path, probe).get(range(i, min(n, i + 8))) for i in range(0, n, 8)])
    err = np.abs(cut.astype(float) - src).mean(axis=(1, 2, 3))  # a lossy encode: a few levels
    assert err.max() < 12 and err.mean() < np.abs(cut[1:].astype(float) - src[:-1]).mean()
    scene = VideoFrames(path, probe, scaled_size(w, h, 32)).get(range(n))
    seeks = VideoFrames(path, probe, scaled_size(w, h, 256)).get([n - 1, 0, n // 2, n - 1])
    assert all(top_is_red(f) for f in [*cut, *scene, *seeks])
    assert np.array_equal(seeks[0], seeks[3])  # a repeated index is the same picture
    alone = np.concatenate([VideoFrames(path, probe).get([i]) for i in range(n)])  # a cut may start anywhere
    assert np.array_equal(alone, cut)  # the same decoder gives the same picture however it got there


def test_truncated_file_keeps_its_decodable_prefix(tmp_path):
    src = marked_frames(48, 96, 128, seed=23)
    data = write_video(tmp_path / "full.mkv", src).read_bytes()  # 12 fps
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 2 // 3])  # a recording stopped mid-write
    probe = probe_video(tmp_path / "cut.mkv")
    n = probe.num_frames
    assert 0 < n < 48 and len(probe.times) == n
    assert probe.duration == pytest.approx(probe.times[-1] + 1 / 12, abs=2e-3)  # (mkv times are in ms)
    frames = VideoFrames(tmp_path / "cut.mkv", probe).get(range(n))
    shown = src[np.round(probe.times * 12).astype(int)].astype(float)  # the source frame at each timestamp
    assert frames.shape == (n, 96, 128, 3) and np.abs(frames - shown).mean(axis=(1, 2, 3)).max() < 12
    with pytest.raises(MediaError, match="out of range"):
        VideoFrames(tmp_path / "cut.mkv", probe).get([n])


def test_the_decoder_choice_travels_with_the_record(hard_media):
    path = hard_media["av1_long_gop"][0]
    probe = probe_video(path)
    rebuilt = VideoProbe.from_record(probe.to_record())  # what a worker or the cache reads
    assert rebuilt.backend == probe.backend == "pyav" and rebuilt.times is None
    clip = VideoProbe.from_record({**probe.to_record(), "start_time": 2.5})  # a clip record: the clip's start
    a = VideoFrames(path, probe, (64, 46)).get([70, 3])
    assert np.array_equal(a, VideoFrames(path, rebuilt, (64, 46)).get([70, 3]))  # identical in any process
    assert np.array_equal(a, VideoFrames(path, clip, (64, 46)).get([70, 3]))


@pytest.mark.parametrize("height,width", [(64, 48), (64, 96), (64, 112), (128, 96), (90, 160), (240, 320)])
def test_the_writer_gives_the_same_bytes_for_the_same_frames(tmp_path, height, width):
    """With x264's macroblock tree these sizes gave several different files for one set of frames
    (what the process had run before decided which); a cut clip is a function of its frames."""
    from curation.samples import moving_shape

    frames = moving_shape(24, height, width, color=1, background=2, texture_seed=3, speed=2.0)
    files = {write_h264(tmp_path / f"{i}.mp4", [frames], frame_times(24, 12)).read_bytes() for i in range(8)}
    assert len(files) == 1


def test_writing_av1_leaves_the_thread_scheduling_as_it_was(tmp_path):
    """SVT-AV1 run as root makes the thread that opens it real-time (SCHED_FIFO 99); the project's
    writer puts the policy back (a real-time spinning thread starved a later test's probe pool)."""
    before = thread_scheduling()
    write_video(tmp_path / "av1.mp4", marked_frames(4, 64, 64, seed=1), codec="libsvtav1")
    assert thread_scheduling() == before
