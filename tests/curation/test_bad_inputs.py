"""Bad inputs: each becomes one record with its reason (or is handled correctly); the run goes on."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from curation.config import FramesConfig, MotionConfig
from curation.pipeline import run
from curation.samples import moving_shape, write_video
from curation.stages.frames import SampleFrames

FPS = 12


def _lying_avi(path):
    """An AVI whose headers claim 500 frames; it holds 36."""
    # a high bitrate: at mpeg4's default one the keyframe every 12 frames jumps enough to look like a cut
    write_video(path, moving_shape(36, 64, 96, texture_seed=5), FPS, codec="mpeg4", options={"b": "4M"})
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, 500)  # MainAVIHeader.dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, 500)  # AVIStreamHeader.dwLength
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("bad") / "in"
    good = moving_shape(36, 64, 96, color=1, texture_seed=6)
    write_video(d / "good.mp4", good, FPS)
    (d / "zero.mp4").write_bytes(b"")
    full = write_video(d / "full.mp4", good, FPS).read_bytes()
    (d / "full.mp4").unlink()
    (d / "truncated.mp4").write_bytes(full[: len(full) // 2])
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "broken.jpg").write_text("not a jpeg either")
    _lying_avi(d / "lying.avi")
    vfr = moving_shape(36, 64, 96, color=2, texture_seed=8)
    write_video(d / "vfr.mp4", vfr, FPS, pts_ms=np.cumsum([0] + [50 if i % 2 else 120 for i in range(35)]))
    write_video(d / "one_frame.mp4", good[:1], FPS)
    big = moving_shape(2, 2160, 3840, speed=0.5)
    write_video(d / "big_4k.mp4", big, FPS, options={"preset": "ultrafast"})
    write_video(d / "huge.mp4", moving_shape(2, 2592, 4608, speed=0.5), FPS, options={"preset": "ultrafast"})
    from PIL import Image

    Image.fromarray(good[0]).save(d / "photo.jpg")
    (d / "loop").symlink_to(d, target_is_directory=True)  # a folder link back to its parent
    os.symlink(d / "ping.mp4", d / "pong.mp4")  # two file links pointing at each other
    os.symlink(d / "pong.mp4", d / "ping.mp4")
    weird = d / "dir with space" / "vidéo été ü.mp4"
    write_video(weird, moving_shape(36, 64, 96, color=4, texture_seed=7), FPS)
    cfg = tiny_config("probe.max_pixels=10000000", "scenes.min_clip_s=1.0", "probe.timeout_s=60")
    result = run(cfg, d, tmp_path_factory.mktemp("bad-out"))
    by_name = {}
    for r in result.records:
        by_name.setdefault(os.path.basename(r["source"]), []).append(r)
    return by_name, result


def _one(bad_run, name):
    recs = bad_run[0][name]
    assert len(recs) == 1, recs
    return recs[0]


@pytest.mark.parametrize("name", ["zero.mp4", "truncated.mp4", "text.mp4", "broken.jpg"])
def test_unreadable_file_is_one_error_record(bad_run, name):
    rec = _one(bad_run, name)
    assert rec["status"] == "error" and rec["reasons"][0].startswith("unreadable: ")
    if name == "zero.mp4":
        assert rec["reasons"] == ["unreadable: empty file (0 bytes)"]


def test_good_video_still_accepted(bad_run):
    rec = _one(bad_run, "good.mp4")
    assert rec["status"] == "accepted", rec["reasons"]


def test_container_lying_about_frame_count(bad_run):
    rec = _one(bad_run, "lying.avi")
    assert rec["status"] == "accepted" and rec["end_frame"] == 36  # what decodes, not the 500 claimed
    assert rec["probe_notes"] == ["container says 500 frames, 36 decodable"]


def test_variable_frame_rate_uses_real_timestamps(bad_run):
    rec = _one(bad_run, "vfr.mp4")
    assert rec["status"] == "accepted" and rec["num_frames"] == 36
    # 18 gaps of 120 ms and 17 of 50 ms: 3.01 s, plus the last frame's own duration
    assert rec["end_time"] == pytest.approx(3.01 + 0.05, abs=0.08)
    assert rec["fps"] == pytest.approx(36 / rec["end_time"], rel=0.05)
    assert rec["scores"]["motion"] > 0.002


def test_one_frame_video_is_rejected_as_too_short(bad_run):
    rec = _one(bad_run, "one_frame.mp4")
    assert rec["status"] == "rejected" and rec["reasons"][0].startswith("too short: ")


def test_very_large_resolution_is_bounded(bad_run):
    huge = _one(bad_run, "huge.mp4")
    assert huge["status"] == "rejected"
    assert huge["reasons"] == ["too large: 4608x2592 > probe.max_pixels 10000000; raise it to accept"]
    big = _one(bad_run, "big_4k.mp4")
    assert big["status"] != "error" and (big["width"], big["height"]) == (3840, 2160)
    # decoding for scoring happens at frames.short_side, whatever the source size
    out = SampleFrames(FramesConfig(short_side=64), MotionConfig())([{**big, "status": "pending"}])[0]
    assert out["_frames"].shape[1:] == (72, 128, 3) and out["_motion"].shape[1:] == (72, 128)  # width a multiple of 32


def test_image_is_a_one_frame_clip(bad_run):
    rec = _one(bad_run, "photo.jpg")
    assert rec["kind"] == "image" and rec["status"] == "accepted" and rec["num_frames"] == 1
    assert rec["scores"]["motion"] is None and rec["clip_path"].endswith(".png")


def test_symlink_loops(bad_run):
    for name in ("ping.mp4", "pong.mp4"):
        rec = _one(bad_run, name)
        assert rec["status"] == "error" and "symbolic links" in rec["reasons"][0]
    sources = [r["source"] for recs in bad_run[0].values() for r in recs]
    assert not any("/loop/" in s for s in sources)  # the folder loop is walked once


def test_path_with_spaces_and_non_ascii(bad_run):
    rec = _one(bad_run, "vidéo été ü.mp4")
    assert rec["status"] == "accepted" and "dir with space" in rec["source"]
    assert re.fullmatch(r"[0-9a-f]{12}-\d{6}-\d{6}", rec["id"]) and (bad_run[1].out_dir / rec["clip_path"]).is_file()


def test_probe_that_runs_too_long_is_stopped(tmp_path):
    from curation.config import ProbeConfig
    from curation.stages.probe import Probe

    path = write_video(tmp_path / "ok.mp4", moving_shape(12, 64, 96), FPS)
    rec = {"source": str(path), "rel": "ok.mp4", "kind": "video"}
    slow = Probe(ProbeConfig(timeout_s=0.001))([rec])[0]  # the worker cannot even start in 1 ms
    assert slow["error"].startswith("unreadable: probe did not finish in 0.001 s")
    ok = Probe(ProbeConfig())([rec, rec])  # a fresh worker after the stop
    assert [r["probe"]["num_frames"] for r in ok] == [12, 12]


def test_empty_folder_gives_empty_outputs(tmp_path, tiny_config):
    from hv_tune.data.manifest import read_manifest

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.md").write_text("not a video")  # ignored: not a video or image extension
    result = run(tiny_config(), tmp_path / "in", tmp_path / "out")
    assert result.records == [] and read_manifest(tmp_path / "out") == []
    assert (tmp_path / "out" / "manifest.parquet").is_file() and (tmp_path / "out" / "report.html").is_file()
