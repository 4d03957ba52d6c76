"""The local run as a stream over worker processes: the one-worker results, in the same order,
whatever the worker count and memory cap; scoring starts before splitting ends and cutting
before scoring ends; stage times in summary.json and one progress line."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from curation.cli import main
from curation.config import load_config
from curation.errors import ConfigError
from curation.pipeline import run
from curation.samples import moving_shape, write_video
from curation.stages.clip_scores import ClipScores
from curation.workers import cpu_count

from .conftest import TINY_CONFIG, model_overrides


def _manifest(out) -> str:
    return (out / "manifest.jsonl").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, samples, tiny_config):
    """The samples curated in the calling process (``workers=0``), captions off."""
    out = tmp_path_factory.mktemp("w0")
    return run(tiny_config("workers=0", "caption.enabled=false"), samples, out), out


@pytest.mark.parametrize("overrides", [["workers=2"], ["workers=1", "frames_in_flight=1", "batch_size=3"]])
def test_worker_processes_give_the_one_worker_manifest(tmp_path, samples, tiny_config, one_worker, overrides):
    ref, ref_out = one_worker
    cfg = tiny_config("caption.enabled=false", *overrides)
    if "batch_size=3" in overrides:  # another batching changes CLIP's batches: compare with its own 0-worker run
        ref_out = tmp_path / "ref"
        ref = run(tiny_config("caption.enabled=false", "workers=0", "batch_size=3"), samples, ref_out)
    result = run(cfg, samples, tmp_path / "out")
    assert _manifest(tmp_path / "out") == _manifest(ref_out)  # same ids, order, scores (same CLIP inputs and batches)
    assert result.clips_scored == ref.clips_scored == 6
    clips = {p.name: p.read_bytes() for p in (tmp_path / "out" / "clips").iterdir()}
    assert clips.keys() == {p.name for p in (ref_out / "clips").iterdir()}
    assert all(clips[name] == (ref_out / "clips" / name).read_bytes() for name in clips)  # the same bytes
    assert sorted(p.name for p in (tmp_path / "out" / "state" / "thumbs").iterdir()) == \
        sorted(p.name for p in (ref_out / "state" / "thumbs").iterdir())


class WatchingClip(ClipScores):
    """The tiny CLIP, noting at each call how many files were split and clips cut by then."""

    def __init__(self, cfg, out):
        super().__init__(cfg)
        self.out, self.seen = out, []

    def __call__(self, records):
        files = (self.out / "state" / "files.jsonl").read_bytes().count(b"\n")
        clips = self.out / "clips"
        deadline = time.monotonic() + (60 if self.seen else 0)  # later calls: give a started cut time to land
        while time.monotonic() < deadline and not (clips.is_dir() and any(clips.glob("*.mp4"))):
            time.sleep(0.05)
        self.seen.append((files, len(list(clips.glob("*.mp4"))) if clips.is_dir() else 0))
        return super().__call__(records)


def test_clips_are_scored_while_files_are_split_and_cut_while_others_are_scored(tmp_path, tiny_config):
    inp = tmp_path / "in"
    for i in range(10):  # moving: every clip passes motion_min and is cut
        write_video(inp / f"v{i:02d}.mp4", moving_shape(24, 48, 64, color=i, background=i, texture_seed=i), 12)
    cfg = tiny_config("workers=1", "batch_size=2", "caption.enabled=false", "scenes.min_clip_s=0.5")
    clip = WatchingClip(cfg.clip, tmp_path / "out")
    result = run(cfg, inp, tmp_path / "out", {"clip": clip})
    accepted = [r for r in result.records if r["status"] == "accepted"]
    assert result.clips_scored == 10 and len(accepted) >= 8
    assert clip.seen[0][0] < 10  # CLIP ran before the last file was split (at most 2 jobs in flight)
    assert clip.seen[-1][1] >= 1  # a clip was cut before the last CLIP batch


def test_summary_and_cli_give_each_stage_time_and_share(tmp_path, samples, tiny_models, capsys):
    out = tmp_path / "out"
    code = main(["run", str(samples), "--out", str(out), "--config", str(TINY_CONFIG),
                 *model_overrides(tiny_models), "caption.enabled=false", "workers=2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    for name in ("probe", "scenes", "frames", "motion", "clip", "cut", "export"):
        assert stages[name]["seconds"] > 0, name
        assert stages[name]["share"] == pytest.approx(stages[name]["seconds"] / summary["wall_s"], abs=2e-3)
    rows = [json.loads(x) for x in _manifest(out).splitlines()]
    assert summary["accepted"] == sum(r["status"] == "accepted" for r in rows) >= 1  # the counts are still there
    captured = capsys.readouterr()
    table = captured.out[captured.out.index("share of wall"):]
    assert all(f"\n{name} " in table for name in ("probe", "scenes", "clip", "cut"))
    progress = captured.err.replace("\r", "\n").splitlines()
    last = [ln for ln in progress if ln.startswith("curate")][-1]  # one line, redrawn
    assert "5/5" in last and re.search(r"clips 6/6 scored, \d+ cut \| split .* files/s, score .* clips/s, cut .* clips/s", last)


def test_workers_auto_is_the_cores_and_bad_values_name_the_key(tmp_path, tiny_models):
    from curation.workers import resolve_workers

    cfg = load_config(TINY_CONFIG, model_overrides(tiny_models))
    assert cfg.workers == "auto" and resolve_workers(cfg.workers) == cpu_count()
    shipped = load_config(TINY_CONFIG.parent / "curation.yaml", ["clip.aesthetic_head="])
    assert shipped.workers == "auto"
    for bad in ("workers=-1", "workers=many", "frames_in_flight=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(TINY_CONFIG, [*model_overrides(tiny_models), bad])


def test_a_duplicate_cut_ahead_is_removed(tmp_path, samples, tiny_config):
    """A clip cut while scoring that the near-duplicate check then rejects leaves no file."""
    inp = tmp_path / "in"
    shutil.copytree(samples, inp)
    frames = moving_shape(24, 48, 64, color=3, background=3, texture_seed=3)
    write_video(inp / "a.mp4", frames, 12)
    write_video(inp / "b.mp4", frames[:, :, ::-1].copy(), 12)  # a mirror: a near-duplicate for the tiny CLIP?
    cfg = tiny_config("workers=2", "caption.enabled=false", "scenes.min_clip_s=0.5", "filters.duplicate_cosine=0.5")
    result = run(cfg, inp, tmp_path / "out")
    dups = [r for r in result.records if any(x.startswith("near-duplicate") for x in r["reasons"])]
    accepted = {f"{r['id']}.mp4" for r in result.records if r["status"] == "accepted" and r["kind"] == "video"}
    assert dups  # at cosine 0.5 random tiny-CLIP embeddings of moving shapes collide
    assert {p.name for p in (tmp_path / "out" / "clips").glob("*.mp4")} == accepted


def test_report_thumbnails_come_from_the_scoring_frames_and_match_a_fresh_decode(tmp_path, one_worker, tiny_config):
    """Every video clip's strip is written by the job that sampled its scoring frames (the same
    positions, resized), so the report decodes nothing again; it matches the decoded strip."""
    import numpy as np
    from PIL import Image

    from curation.report import thumbnail_strip, thumbs_dir
    from curation.workers import sample_job

    ref, out = one_worker
    cfg = tiny_config("workers=0", "caption.enabled=false")
    videos = [r for r in ref.records if r["kind"] == "video" and r["status"] != "error"]
    assert len(videos) >= 3
    sample_job(cfg, [{**r, "status": "pending"} for r in videos], str(tmp_path / "job"))  # the job alone
    for rec in videos:
        made = np.asarray(Image.open(tmp_path / "job" / f"{rec['id']}.jpg"), np.float32)
        assert (thumbs_dir(out) / f"{rec['id']}.jpg").read_bytes() == (tmp_path / "job" / f"{rec['id']}.jpg").read_bytes()
        thumbnail_strip(rec, cfg.frames.positions, cfg.export.thumb_height, tmp_path, encode=False)
        decoded = np.asarray(Image.open(tmp_path / f"{rec['id']}.jpg"), np.float32)
        assert made.shape == decoded.shape
        assert np.abs(made - decoded).mean() < 6.0  # two resizes (JPEG, bicubic) of the same frames


def test_worker_processes_do_not_import_torch():
    """The workers' modules stay light (the forkserver starts in a fraction of a second and each
    worker's memory holds no torch): the model side is the calling process's."""
    import subprocess
    import sys

    from curation.workers import PRELOAD

    code = f"import importlib, sys\nfor m in {PRELOAD!r}: importlib.import_module(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _ThreadsSeen:
    """The real CLIP stage, noting the calling process's torch threads at each batch."""

    def __init__(self, stage):
        self.stage, self.threads = stage, set()

    def __getattr__(self, name):
        return getattr(self.stage, name)

    def __call__(self, records):
        import torch

        self.threads.add(torch.get_num_threads())
        return self.stage(records)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_clip_runs_with_the_same_threads_whatever_the_worker_count(tmp_path, samples, tiny_config, device):
    """A CPU matmul's last bits depend on its thread count, so CLIP's count must not follow ``workers``:
    on the CPU it keeps the process's count, next to a GPU's CLIP one thread (the CPU is the workers')."""
    import torch

    before = torch.get_num_threads()
    seen = {}
    for workers in (0, 2):
        cfg = tiny_config(f"workers={workers}", "caption.enabled=false", f"clip.device={device}")
        stage = _ThreadsSeen(ClipScores(cfg.clip))
        run(cfg, samples, tmp_path / f"w{workers}", {"clip": stage})
        seen[workers] = stage.threads
    assert seen[0] == seen[2] == ({before} if device == "cpu" else {1})
    assert torch.get_num_threads() == before  # restored after the stream


def test_the_first_rate_is_over_the_runs_age_not_over_one_event():
    """A file split 0.2 s into the run is 5 files/s or less, not 1000 (one event over a near-zero span)."""
    from curation.progress import Progress

    progress = Progress(3)
    time.sleep(0.2)
    progress.file_done(2, 2)
    rate = float(re.search(r"split ([\d.]+) files/s", progress.bar.postfix).group(1))
    progress.close()
    assert 0 < rate <= 5.0
