"""Stored results follow a source file's bytes: a re-export is redone, a rename or move is reused."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from curation.pipeline import run
from curation.samples import moving_shape, write_video
from curation.stages.caption import Captioner
from curation.stages.clip_scores import ClipScores
from hv_tune.data.manifest import read_manifest
from tests.media_files import decode_pyav

from .conftest import TINY_CONFIG, model_overrides

FRAMES = moving_shape(36, 64, 96, color=0, background=1, texture_seed=7)  # 3 s at 12 fps: one clip
EDITS = {  # re-exports of the same length: what an editor's "flip" or "colour grade" gives
    "mirrored": lambda f: f[:, :, ::-1],
    "colours changed": lambda f: f[..., [2, 0, 1]],
    "reversed in time": lambda f: f[::-1],
}


def _pad_to(path: Path, size: int) -> None:
    """Pad an mp4 to ``size`` bytes with a top-level ``free`` box (valid ISO BMFF, ignored by readers)."""
    extra = size - path.stat().st_size
    assert extra >= 8
    with open(path, "ab") as fh:
        fh.write(struct.pack(">I", extra) + b"free" + bytes(extra - 8))


def _write_pair(old: Path, new: Path, frames_new: np.ndarray) -> None:
    """``old`` and ``new`` with the same size in bytes (and the same frame count and rate)."""
    write_video(old, FRAMES, fps=12)
    write_video(new, frames_new, fps=12)
    size = max(old.stat().st_size, new.stat().st_size) + 64
    _pad_to(old, size)
    _pad_to(new, size)


def _stages(cfg):
    return {"clip": ClipScores(cfg.clip), "caption": Captioner(cfg.caption)}


def _first_frame(path: Path) -> np.ndarray:
    return decode_pyav(path)[0][0].astype(float)


@pytest.mark.parametrize("edit", list(EDITS))
def test_reexport_with_same_name_size_length_and_mtime_is_redone(tmp_path, tiny_config, edit):
    inp, out, spare = tmp_path / "in", tmp_path / "out", tmp_path / "spare"
    edited = EDITS[edit](FRAMES)
    _write_pair(inp / "trip.mp4", spare / "trip.mp4", edited)
    cfg = tiny_config()
    stages = _stages(cfg)
    first = run(cfg, inp, out, stages)
    (old,) = [r for r in first.records if r["status"] == "accepted"]
    assert first.clips_scored == 1 and first.captions_generated == 1
    st = (inp / "trip.mp4").stat()

    shutil.copyfile(spare / "trip.mp4", inp / "trip.mp4")  # the re-export, over the old file
    os.utime(inp / "trip.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (inp / "trip.mp4").stat().st_size == st.st_size
    second = run(cfg, inp, out, stages)

    (new,) = [r for r in second.records if r["status"] == "accepted"]
    assert (new["num_frames"], new["source"]) == (old["num_frames"], old["source"])
    assert second.clips_scored == 1 and second.captions_generated == 1  # rescored and recaptioned
    assert new["id"] != old["id"]
    clips = sorted(p.name for p in (out / "clips").iterdir())
    assert clips == [f"{new['id']}.mp4", f"{new['id']}.txt"]  # the old clip and caption are gone
    assert [r["id"] for r in read_manifest(out)] == [new["id"]]
    cut = _first_frame(out / new["clip_path"])  # the exported clip shows the new source
    now, before = edited[new["start_frame"]].astype(float), FRAMES[new["start_frame"]].astype(float)
    err_now, err_before = np.abs(cut - now).mean(), np.abs(cut - before).mean()
    assert err_now < 8.0 and 3 * err_now < err_before, (err_now, err_before)  # two lossy encodes: ~5 apart


def test_renamed_moved_and_copied_file_reuses_its_results(tmp_path, tiny_config):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_video(inp / "trip.mp4", FRAMES, fps=12)
    (inp / "notes").mkdir()
    cfg = tiny_config()
    stages = _stages(cfg)
    first = run(cfg, inp, out, stages)
    (old,) = [r for r in first.records if r["status"] == "accepted"]
    clip = out / old["clip_path"]
    cut_before = clip.stat()

    (inp / "holiday").mkdir()
    (inp / "trip.mp4").rename(inp / "holiday" / "day one.mp4")  # renamed and moved
    shutil.copyfile(inp / "holiday" / "day one.mp4", inp / "notes" / "copy.mp4")  # and copied
    encoded = stages["clip"].images_encoded
    second = run(cfg, inp, out, stages)

    (new,) = [r for r in second.records if r["status"] == "accepted"]
    assert new["id"] == old["id"] and new["scores"] == old["scores"] and new["caption"] == old["caption"]
    assert second.clips_scored == 0 and second.captions_generated == 0
    assert stages["clip"].images_encoded == encoded  # no model work at all
    assert new["source"] == str((inp / "holiday" / "day one.mp4").resolve())
    assert (clip.stat().st_ino, clip.stat().st_mtime_ns) == (cut_before.st_ino, cut_before.st_mtime_ns)  # not re-cut
    assert {"rel": "notes/copy.mp4", "reason": "same content as holiday/day one.mp4 (curated once)"} in second.skipped
    assert len(second.records) == 1


def test_output_folders_inside_the_input_are_never_walked(tmp_path, tiny_config, tiny_models, capsys):
    from curation.cli import main

    videos = tmp_path / "videos"
    write_video(videos / "trip.mp4", FRAMES, fps=12)
    cfg = tiny_config("caption.enabled=false")
    first = run(cfg, videos, videos / "curated")
    assert list((videos / "curated" / "state" / "thumbs").glob("*.jpg"))  # what a second walk would find
    shutil.copytree(videos / "curated", videos / "old" / "earlier-output")  # an earlier run's output, moved
    (videos / "old" / "keep.mp4").write_bytes((videos / "trip.mp4").read_bytes()[:-1] + b"\0")  # still input
    second = run(cfg, videos, videos / "curated")
    sources = sorted({Path(r["source"]).relative_to(videos.resolve()).as_posix() for r in second.records})
    assert sources == ["old/keep.mp4", "trip.mp4"]
    assert [r["id"] for r in second.records if r["source"].endswith("trip.mp4")] == [r["id"] for r in first.records]
    assert {"rel": "curated/", "reason": "output folder of this run (--out): outputs are never input"} in second.skipped
    assert {"rel": "old/earlier-output/", "reason": "output of an earlier curation run (has state/config.yaml): "
            "outputs are never input"} in second.skipped

    cli_args = ["run", str(videos), "--out", str(videos / "curated"), "--config", str(TINY_CONFIG),
                *model_overrides(tiny_models), "caption.enabled=false"]
    assert main(cli_args) == 0
    printed = capsys.readouterr().out
    assert "  curated/: output folder of this run (--out): outputs are never input" in printed


@pytest.mark.parametrize("case", ["out is the input", "input is an output"])
def test_an_output_folder_as_input_is_refused(tmp_path, tiny_config, case):
    from curation.errors import InputError

    videos = tmp_path / "videos"
    write_video(videos / "trip.mp4", FRAMES, fps=12)
    cfg = tiny_config("caption.enabled=false")
    if case == "out is the input":
        (videos / "sub").mkdir()
        with pytest.raises(InputError, match=r"--out .* is the input folder"):
            run(cfg, videos / "sub" / "..", videos)
    else:
        run(cfg, videos, tmp_path / "curated")
        with pytest.raises(InputError, match=r"is the output of a curation run \(has state/config.yaml\)"):
            run(cfg, tmp_path / "curated", tmp_path / "again")


def test_walk_skips_outputs_reached_through_a_link_or_marked_by_state_only(tmp_path):
    from curation.config import InputConfig
    from curation.stages.probe import discover

    videos, out = tmp_path / "videos", tmp_path / "elsewhere" / "curated"
    write_video(videos / "trip.mp4", FRAMES[:4], fps=12)
    write_video(out / "clips" / "a.mp4", FRAMES[:4], fps=12)
    (videos / "to-out").symlink_to(out, target_is_directory=True)  # this run's output, through a link
    (videos / "old" / "state").mkdir(parents=True)  # an earlier output, interrupted after its first file
    (videos / "old" / "state" / "files.jsonl").write_text("")
    write_video(videos / "old" / "clips" / "b.mp4", FRAMES[:4], fps=12)
    skipped: list[dict[str, str]] = []
    files = discover(videos, InputConfig(), skipped, out)
    assert [f["rel"] for f in files] == ["trip.mp4"]
    assert skipped == [
        {"rel": "old/", "reason": "output of an earlier curation run (has state/files.jsonl): outputs are never input"},
        {"rel": "to-out/", "reason": "output folder of this run (--out): outputs are never input"},
    ]


def test_filter_refuses_to_cut_clips_from_a_source_that_changed_since_scoring(tmp_path, tiny_config, capsys):
    from curation.cli import main

    inp, out, spare = tmp_path / "in", tmp_path / "out", tmp_path / "spare"
    _write_pair(inp / "trip.mp4", spare / "trip.mp4", EDITS["mirrored"](FRAMES))
    first = run(tiny_config("caption.enabled=false", "filters.motion_min=1.0"), inp, out)  # nothing accepted, nothing cut
    assert [r["status"] for r in first.records] == ["rejected"]
    st = (inp / "trip.mp4").stat()
    shutil.copyfile(spare / "trip.mp4", inp / "trip.mp4")
    os.utime(inp / "trip.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    assert main(["filter", str(out), "filters.motion_min=0.002"]) == 2
    assert capsys.readouterr().err == (f"error: {(inp / 'trip.mp4').resolve()} changed since it was scored; run "
                                       "`python -m curation run` on its folder again (it redoes only the changed "
                                       "files), then filter\n")
    assert not (out / "clips").exists() or not list((out / "clips").glob("*.mp4"))
