"""SIGKILL mid-run, run again: the same manifest as an uninterrupted run, finished clips not rescored."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from curation.pipeline import run
from curation.samples import moving_shape, write_video
from curation.stages.caption import Captioner
from curation.stages.clip_scores import ClipScores

from .conftest import TINY_CONFIG, model_overrides

# More frames per clip than the defaults, so scoring takes long enough to be killed in the middle.
SLOW = ["batch_size=1", "workers=0", "frames.positions=[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1]",
        "motion.fps=12", "caption.batch_size=2"]


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_rerun_gives_identical_manifest_without_rescoring(tmp_path, samples, tiny_models, tiny_config):
    inp = tmp_path / "in"
    shutil.copytree(samples, inp)
    for i in range(4):
        write_video(inp / f"extra{i}.mp4", moving_shape(30, 64, 96, color=i, background=i, texture_seed=10 + i), 12)
    overrides = model_overrides(tiny_models) + SLOW
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "curation", "run", str(inp), "--out", str(killed), "--config", str(TINY_CONFIG), *overrides]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scores = killed / "state" / "scores.jsonl"
    deadline = time.monotonic() + 120
    while _lines(scores) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored_before = scores.read_bytes()
    done = _lines(scores)
    assert proc.returncode == -signal.SIGKILL and not (killed / "manifest.jsonl").exists()

    cfg = tiny_config(*SLOW)
    resumed_stages = {"clip": ClipScores(cfg.clip), "caption": Captioner(cfg.caption)}
    resumed = run(cfg, inp, killed, resumed_stages)
    pending = sum(1 for r in resumed.records if r.get("scores"))  # clips that needed scoring
    assert 1 <= done < pending, f"the kill landed outside scoring ({done} of {pending} stored)"
    assert resumed.clips_scored == pending - done  # finished clips were not scored again
    assert resumed_stages["clip"].images_encoded == (pending - done) * len(cfg.frames.positions)
    assert scores.read_bytes().startswith(stored_before)  # nothing computed before the kill was lost

    fresh = run(cfg, inp, tmp_path / "fresh")
    assert (killed / "manifest.jsonl").read_text() == (tmp_path / "fresh" / "manifest.jsonl").read_text()
    assert resumed.captions_generated == fresh.captions_generated > 0

    again_stages = {"clip": ClipScores(cfg.clip), "caption": Captioner(cfg.caption)}
    again = run(cfg, inp, killed, again_stages)  # everything stored: no model work at all
    assert again.clips_scored == 0 and again_stages["clip"].images_encoded == 0
    assert again.captions_generated == 0 and again_stages["caption"].model is None
    assert [r["scores"] for r in again.records] == [r["scores"] for r in fresh.records]
    assert np.isfinite([r["scores"]["motion"] for r in again.records if r["kind"] == "video" and r["scores"]]).all()


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (Linux /proc): the workers, the forkserver, the probe processes."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
                out.update(kids)
                todo += kids
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_while_cutting_with_workers_then_rerun_gives_identical_manifest(tmp_path, samples, tiny_models,
                                                                                 tiny_config):
    """Worker processes cut clips while others are scored: killed then, no worker is left behind
    and a re-run gives the manifest of an uninterrupted run."""
    inp = tmp_path / "in"
    shutil.copytree(samples, inp)
    for i in range(4):
        write_video(inp / f"extra{i}.mp4", moving_shape(30, 64, 96, color=i, background=i, texture_seed=10 + i), 12)
    over = ["workers=2", "batch_size=1", "caption.enabled=false"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "curation", "run", str(inp), "--out", str(killed), "--config", str(TINY_CONFIG),
           *model_overrides(tiny_models), *over]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clips, workers = killed / "clips", set()
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        workers |= _descendants(proc.pid)
        if clips.is_dir() and any(clips.iterdir()):  # a cut started (its temporary file) or landed
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "manifest.jsonl").exists()
    assert len(workers) >= 2
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the killed run"

    cfg = tiny_config(*over)
    run(cfg, inp, killed)
    fresh = run(tiny_config("workers=0", "batch_size=1", "caption.enabled=false"), inp, tmp_path / "fresh")
    assert (killed / "manifest.jsonl").read_text() == (tmp_path / "fresh" / "manifest.jsonl").read_text()
    assert sorted(p.name for p in clips.iterdir()) == sorted(p.name for p in (tmp_path / "fresh" / "clips").iterdir())
    assert sum(r["status"] == "accepted" for r in fresh.records) >= 3
