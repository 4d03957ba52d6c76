"""Curation on real-world media: mixed sizes, rotated phone clips, EXIF photos, VFR, cp1252 captions,
runs where nothing gets scored, files that are not media. Inputs come from tests/media_files.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curation.cli import main
from curation.pipeline import run
from curation.stages.frames import SampleFrames
from hv_tune.data.manifest import read_manifest
from tests.curation.conftest import TINY_CONFIG, model_overrides
from tests.media_files import (
    decode_pyav,
    marked_frames,
    top_is_red,
    vfr_times,
    write_audio_only,
    write_exif_jpeg,
    write_video,
)

KEEP_ALL = ("filters.motion_min=null", "filters.duplicate_cosine=null", "caption.enabled=false")


def _by_name(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(Path(r["source"]).name, []).append(r)
    return out


def _check_upright_outputs(rec: dict, out: Path, cfg, display: tuple[int, int]) -> None:
    """Manifest size, scoring frames and the exported clip are the display picture, upright."""
    assert rec["status"] == "accepted", rec["reasons"]
    assert (rec["width"], rec["height"]) == display
    frames = SampleFrames(cfg.frames, cfg.motion)([{**rec, "status": "pending"}])[0]["_frames"]
    assert all(f.shape[0] > f.shape[1] and top_is_red(f) for f in frames)
    clip = out / rec["clip_path"]
    if clip.suffix == ".png":
        from PIL import Image

        pixels = np.asarray(Image.open(clip).convert("RGB"))[None]
        rotation = 0
    else:
        pixels, _, rotation = decode_pyav(clip)
    assert rotation == 0 and pixels.shape[1:3] == (display[1], display[0] - display[0] % 2)
    assert all(top_is_red(f) for f in pixels)


def test_mixed_sizes_and_skipped_files(tmp_path, tiny_config):
    d = tmp_path / "in"
    write_video(d / "portrait.mp4", marked_frames(24, 320, 176, seed=1))
    write_video(d / "landscape.mp4", marked_frames(24, 176, 320, seed=2))
    write_video(d / "av1.mp4", marked_frames(24, 96, 128, seed=3), codec="libsvtav1")
    from PIL import Image

    Image.fromarray(marked_frames(1, 90, 150, seed=4)[0]).save(d / "still.png")
    (d / "portrait.txt").write_text("a caption")  # a caption: used, not skipped
    (d / "notes.xyz").write_text("not media")
    cfg = tiny_config(*KEEP_ALL, "clip.batch_size=5", "caption.enabled=true", "caption.batch_size=4")
    result = run(cfg, d, tmp_path / "out")
    recs = {k: v[0] for k, v in _by_name(result.records).items()}
    assert {k: (r["status"], r["width"], r["height"]) for k, r in recs.items()} == {
        "portrait.mp4": ("accepted", 176, 320), "landscape.mp4": ("accepted", 320, 176),
        "av1.mp4": ("accepted", 128, 96), "still.png": ("accepted", 150, 90)}
    assert all("aesthetic" in r["scores"] for r in recs.values())
    assert recs["portrait.mp4"]["caption_source"] == "user"  # portrait.txt
    assert all(r["caption_source"] == "model" and r["caption"] for k, r in recs.items() if k != "portrait.mp4")
    assert recs["av1.mp4"]["backend"] == "pyav" and not recs["av1.mp4"]["probe_notes"]  # the first choice reads it
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [f["rel"] for f in summary["skipped_files"]] == ["notes.xyz"]
    assert "unsupported extension .xyz" in summary["skipped_files"][0]["reason"]
    assert "notes.xyz" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("rotation", [-90, 90, 180, 270])
def test_rotated_phone_video_is_upright_everywhere(tmp_path, tiny_config, rotation):
    d = tmp_path / "in"
    write_video(d / "phone.mp4", marked_frames(24, 320, 176, seed=5), rotation=rotation)
    cfg = tiny_config(*KEEP_ALL)
    result = run(cfg, d, tmp_path / "out")
    (rec,) = result.records
    _check_upright_outputs(rec, tmp_path / "out", cfg, (176, 320))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_is_upright_everywhere(tmp_path, tiny_config, orientation):
    d = tmp_path / "in"
    d.mkdir()
    write_exif_jpeg(d / "photo.jpg", marked_frames(1, 160, 96, seed=6)[0], orientation)
    cfg = tiny_config(*KEEP_ALL)
    (rec,) = run(cfg, d, tmp_path / "out").records
    _check_upright_outputs(rec, tmp_path / "out", cfg, (96, 160))


def test_variable_frame_rate_is_noted_and_exported_with_real_timing(tmp_path, tiny_config):
    d = tmp_path / "in"
    times = vfr_times()  # 2 s at 8 fps, then 2 s at 48 fps
    write_video(d / "vfr.mp4", marked_frames(len(times), 64, 96, seed=7), fps=48, pts_s=times)
    cfg = tiny_config(*KEEP_ALL, "scenes.adaptive_threshold=1000")
    (rec,) = run(cfg, d, tmp_path / "out").records
    assert rec["status"] == "accepted" and rec["num_frames"] == 112
    assert "variable frame rate (8-48 fps)" in rec["probe_notes"]
    assert rec["end_time"] == pytest.approx(4.0, abs=0.03)
    _, clip_times, _ = decode_pyav(tmp_path / "out" / rec["clip_path"])
    assert len(clip_times) == 112
    assert np.allclose(clip_times, times, atol=2e-3)  # frame 16 still starts at 2.0 s, not at 16/28 s


def test_cp1252_caption_is_read_like_the_cache_reads_it(tmp_path, tiny_config):
    d = tmp_path / "in"
    write_video(d / "cafe.mp4", marked_frames(24, 64, 96, seed=8))
    (d / "cafe.txt").write_bytes("un café au lait".encode("cp1252"))
    (rec,) = run(tiny_config(*KEEP_ALL), d, tmp_path / "out").records
    assert rec["caption"] == "sks, un café au lait" and rec["caption_source"] == "user"  # the tiny config's trigger
    assert "cafe.txt: caption not UTF-8; decoded as cp1252" in rec["probe_notes"]
    assert (tmp_path / "out" / "clips" / f"{rec['id']}.txt").read_text(encoding="utf-8") == "sks, un café au lait\n"


@pytest.mark.parametrize("content", ["five_frames", "audio_only"])
def test_run_where_nothing_is_scored_writes_everything(tmp_path, tiny_models, capsys, content):
    d = tmp_path / "in"
    d.mkdir()
    if content == "five_frames":
        write_video(d / "short.mp4", marked_frames(5, 64, 96, seed=9))
    else:
        write_audio_only(d / "voice.mp4")
    out = tmp_path / "out"
    code = main(["run", str(d), "--out", str(out), "--config", str(TINY_CONFIG), *model_overrides(tiny_models)])
    assert code == 0
    (row,) = read_manifest(out)
    assert row["status"] == ("rejected" if content == "five_frames" else "error") and row["scores"] == {}
    reason = row["reasons"][0]
    assert reason.startswith("too short") if content == "five_frames" else "no video stream" in reason
    import pyarrow.parquet as pq

    assert pq.read_table(out / "manifest.parquet").num_rows == 1
    assert (out / "report.html").is_file() and json.loads((out / "summary.json").read_text())["clips"] == 1
    assert "accepted" in capsys.readouterr().out  # the table was printed
