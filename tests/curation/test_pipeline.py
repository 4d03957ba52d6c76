"""End to end on generated videos: scene cuts, static vs moving, manifest, clips, captions, `filter`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from curation.pipeline import refilter, run
from curation.samples import moving_shape, write_video
from curation.stages.caption import Captioner
from curation.stages.clip_scores import ClipScores
from hv_tune.data.manifest import MANIFEST_FIELDS, read_manifest
from tests.media_files import decode_pyav

JOINS = (30, 66)  # frames where the content of the joined video changes


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """Three shots of different content joined at known frames (12 fps, 96x64), plus a static shot."""
    d = tmp_path_factory.mktemp("joined")
    parts = [moving_shape(30, 64, 96, color=0, background=0, texture_seed=1),
             moving_shape(36, 64, 96, color=2, background=1, square=True, speed=-1, texture_seed=2),
             moving_shape(30, 64, 96, color=3, background=2, texture_seed=3)]
    write_video(d / "joined.mp4", np.concatenate(parts), fps=12)
    write_video(d / "static.mp4", moving_shape(30, 64, 96, color=1, background=3, speed=0.0, texture_seed=4), fps=12)
    return d


@pytest.fixture(scope="module")
def joined_run(tmp_path_factory, joined, tiny_config):
    cfg = tiny_config("caption.enabled=false", "scenes.min_clip_s=1.0")
    return run(cfg, joined, tmp_path_factory.mktemp("joined-out"))


def test_scene_cuts_within_two_frames_of_each_join(joined_run):
    clips = [r for r in joined_run.records if r["source"].endswith("joined.mp4")]
    assert len(clips) == 3
    for join, (left, right) in zip(JOINS, zip(clips[:-1], clips[1:])):
        assert abs(left["end_frame"] - join) <= 2 and abs(right["start_frame"] - join) <= 2
        assert left["end_frame"] < right["start_frame"]  # trimmed: no frame of one shot leaks into the other
    assert clips[0]["start_frame"] == 0 and clips[-1]["end_frame"] == 96


def test_static_video_rejected_moving_accepted(joined_run):
    by_source = {}
    for r in joined_run.records:
        by_source.setdefault(r["source"].rsplit("/", 1)[-1], []).append(r)
    (static,) = by_source["static.mp4"]
    assert static["status"] == "rejected" and static["reasons"][0].startswith("static: motion ")
    assert static["scores"]["motion"] < 0.002
    assert all(r["status"] == "accepted" and r["scores"]["motion"] > 0.004 for r in by_source["joined.mp4"])


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, samples, tiny_config):
    inp = tmp_path_factory.mktemp("in-captions")
    shutil.copytree(samples, inp, dirs_exist_ok=True)
    (inp / "red_circle.txt").write_text("my own words about a red circle\n")  # a user caption
    cfg = tiny_config("caption.batch_size=2")
    stages = {"clip": ClipScores(cfg.clip), "caption": Captioner(cfg.caption)}
    out = tmp_path_factory.mktemp("out-captions")
    return run(cfg, inp, out, stages), stages, cfg


def test_manifest_fields_and_parquet_match(sample_run):
    result, _, _ = sample_run
    rows = read_manifest(result.out_dir)
    assert [list(r) for r in rows] == [list(MANIFEST_FIELDS)] * len(rows)
    statuses = {Path(r["source"]).stem.split("_")[0]: r["status"] for r in rows}
    assert statuses["static"] == "rejected" and statuses["still"] == "accepted"
    parquet = Dataset.from_parquet(str(result.out_dir / "manifest.parquet")).to_list()
    assert [p["id"] for p in parquet] == [r["id"] for r in rows]
    for p, r in zip(parquet, rows):
        assert p["status"] == r["status"] and p["scores"]["motion"] == r["scores"]["motion"]
        assert p["start_frame"] == r["start_frame"] and p["end_frame"] == r["end_frame"]
    video = next(r for r in rows if r["kind"] == "video" and r["status"] == "accepted")
    assert video["fps"] == 12.0 and (video["width"], video["height"]) == (96, 64)
    assert video["num_frames"] == video["end_frame"] - video["start_frame"]
    assert video["metrics"]["motion"].startswith("farneback") and "aesthetic" in video["metrics"]
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["accepted"] == sum(r["status"] == "accepted" for r in rows)
    assert summary["rejected_by_reason"]["static"] == 1


def test_clips_are_cut_frame_accurately(sample_run):
    result, _, _ = sample_run
    for r in result.records:
        if r["status"] != "accepted" or r["kind"] != "video":
            continue
        cut, cut_times, _ = decode_pyav(result.out_dir / r["clip_path"])  # every frame, independently decoded
        src, _, _ = decode_pyav(r["source"])
        assert len(cut) == r["end_frame"] - r["start_frame"]
        ours = cut[[0, len(cut) - 1]].astype(float)
        theirs = src[[r["start_frame"], r["end_frame"] - 1]].astype(float)
        off_by_one = src[[r["start_frame"] + 1, r["end_frame"] - 2]].astype(float)
        err, err_shifted = np.abs(ours - theirs).mean(), np.abs(ours - off_by_one).mean()
        assert err < 3.0 and err < err_shifted  # the same frames, not their neighbours
        assert 1 / np.median(np.diff(cut_times)) == pytest.approx(12.0)


def test_captions_only_for_accepted_clips_user_text_kept(sample_run):
    result, stages, cfg = sample_run
    accepted = [r for r in result.records if r["status"] == "accepted"]
    user = [r for r in accepted if r["source"].endswith("red_circle.mp4")]
    # the user's own caption follows the caption rule too: the trigger word starts it
    assert user and user[0]["caption"] == "sks, my own words about a red circle" and user[0]["caption_source"] == "user"
    model = [r for r in accepted if r["caption_source"] == "model"]
    assert len(model) == len(accepted) - 1 and all(r["caption"].startswith("sks, ") for r in model)
    assert stages["caption"].clips_captioned == len(model) == result.captions_generated
    assert result.caption_calls == stages["caption"].generate_calls
    assert all(r["caption"] is None for r in result.records if r["status"] != "accepted")
    for r in accepted:
        assert (result.out_dir / "clips" / f"{r['id']}.txt").read_text().strip() == r["caption"]


def test_filter_reapplies_thresholds_without_rescoring(sample_run):
    result, stages, cfg = sample_run
    out = result.out_dir
    images, captions = stages["clip"].images_encoded, stages["caption"].clips_captioned
    strict = refilter(cfg.__class__(**{**cfg.__dict__, "filters": cfg.filters.__class__(
        **{**cfg.filters.__dict__, "motion_min": 1.0})}), out, stages)
    videos = [r for r in strict.records if r["kind"] == "video" and r["status"] != "error"]
    assert all(r["status"] == "rejected" and r["reasons"][0].startswith("static") for r in videos)
    assert not list((out / "clips").glob("*.mp4"))  # clips no longer accepted are removed
    assert {r["id"] for r in read_manifest(out) if r["status"] == "accepted"} == {
        r["id"] for r in strict.records if r["kind"] == "image"}
    back = refilter(cfg, out, stages)
    assert [r["status"] for r in back.records] == [r["status"] for r in result.records]
    assert [r["caption"] for r in back.records] == [r["caption"] for r in result.records]  # stored, not regenerated
    assert stages["clip"].images_encoded == images and stages["caption"].clips_captioned == captions
    assert len(list((out / "clips").glob("*.mp4"))) == sum(
        r["status"] == "accepted" and r["kind"] == "video" for r in result.records)


def test_edited_caption_kept_unless_overwrite(tmp_path, samples, tiny_config):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(samples / "blue_square.mp4", inp)
    cfg = tiny_config()
    out = tmp_path / "out"
    first = run(cfg, inp, out)
    (rec,) = [r for r in first.records if r["status"] == "accepted"]
    txt = out / "clips" / f"{rec['id']}.txt"
    txt.write_text("edited by hand\n")
    again = run(cfg, inp, out)
    assert again.records[0]["caption"] == "sks, edited by hand" and again.captions_generated == 0  # the rule: trigger first
    forced = run(tiny_config("caption.overwrite=true"), inp, out)
    assert forced.records[0]["caption"] == rec["caption"] and forced.captions_generated == 0  # stored model caption
    assert txt.read_text().strip() == rec["caption"]


def test_copy_clips_false_keeps_spans_only(tmp_path, samples, tiny_config):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(samples / "red_circle.mp4", inp)
    result = run(tiny_config("export.copy_clips=false", "caption.enabled=false"), inp, tmp_path / "out")
    assert result.records[0]["status"] == "accepted" and result.records[0]["clip_path"] is None
    assert not (tmp_path / "out" / "clips").exists()


def test_cli_run_then_filter(tmp_path, samples, tiny_models, capsys):
    from curation.cli import main

    from .conftest import TINY_CONFIG, model_overrides

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(samples / "red_circle.mp4", inp)
    shutil.copy(samples / "static_shot.mp4", inp)
    out = tmp_path / "out"
    assert main(["run", str(inp), "--out", str(out), "--config", str(TINY_CONFIG), *model_overrides(tiny_models),
                 "caption.enabled=false"]) == 0
    table = capsys.readouterr().out
    assert "accepted                               1" in table and "  static                               1" in table
    assert main(["filter", str(out), "filters.motion_min=null"]) == 0
    assert [r["status"] for r in read_manifest(out)] == ["accepted", "accepted"]
    assert "motion_min: null" in (out / "state" / "config.yaml").read_text()  # the new thresholds are kept
