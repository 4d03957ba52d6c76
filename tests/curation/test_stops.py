"""A run stopped by Ctrl-C or by a full output volume: one line saying what happened and the fix,
exit 130 / 2, no traceback, nothing half-written; the same command then resumes."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.cli import main
from curation.pipeline import run
from curation.samples import moving_shape, write_video
from curation.stages.clip_scores import ClipScores
from hv_tune.data.manifest import read_manifest

from .conftest import TINY_CONFIG, model_overrides

# More frames per clip than the defaults, so a stop can land in the middle of scoring.
SLOW = ["batch_size=1", "workers=0", "frames.positions=[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1]",
        "motion.fps=12", "caption.enabled=false"]
TRACEBACK = re.compile(r"Traceback|KeyboardInterrupt|^\s+File \"", re.M)


def _input(tmp_path: Path, samples: Path) -> Path:
    inp = tmp_path / "in"
    shutil.copytree(samples, inp)
    for i in range(3):
        write_video(inp / f"extra{i}.mp4", moving_shape(30, 64, 96, color=i, background=i, texture_seed=20 + i), 12)
    return inp


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _last_line(stderr: str) -> str:
    """The last line of stderr (progress bars redraw with carriage returns)."""
    return [ln for ln in re.split(r"[\r\n]", stderr) if ln.strip()][-1]


def _assert_complete(out: Path) -> None:
    """Nothing half-written: no temporary files, every state line complete JSON."""
    assert not [p for p in out.rglob(".tmp-*")]
    for log in (out / "state").glob("*.jsonl"):
        data = log.read_text(encoding="utf-8")
        assert not data or data.endswith("\n"), log
        for line in data.splitlines():
            json.loads(line)


@pytest.mark.parametrize("phase,workers", [("split", 0), ("score", 0), ("score", 2)])
def test_ctrl_c_ends_in_one_line_and_exit_130_then_resumes(tmp_path, samples, tiny_models, tiny_config, phase,
                                                           workers):
    inp, out = _input(tmp_path, samples), tmp_path / "out"
    cmd = [sys.executable, "-m", "curation", "run", str(inp), "--out", str(out), "--config", str(TINY_CONFIG),
           *model_overrides(tiny_models), *SLOW, f"workers={workers}"]
    # its own process group, as a terminal's: Ctrl-C reaches the run and its worker processes alike; SIGINT
    # at its default as in a terminal's foreground job (a test run started in the background, e.g. `make test &`
    # from a script, ignores SIGINT, and children inherit that)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watched = out / "state" / ("files.jsonl" if phase == "split" else "scores.jsonl")
    deadline = time.monotonic() + 120
    while _lines(watched) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert not TRACEBACK.search(stderr), stderr[-2000:]
    assert _last_line(stderr) == (f"interrupted (Ctrl-C): every finished result is stored in {out / 'state'}; "
                                  "run the same command again to continue where it stopped")
    assert not (out / "manifest.jsonl").exists()
    _assert_complete(out)

    cfg = tiny_config(*SLOW)
    done = _lines(out / "state" / "scores.jsonl")
    stages = {"clip": ClipScores(cfg.clip)}
    resumed = run(cfg, inp, out, stages)
    scored = sum(1 for r in resumed.records if r.get("scores"))
    assert resumed.clips_scored == scored - done and (phase == "split" or done >= 1)  # nothing stored is redone
    assert stages["clip"].images_encoded == (scored - done) * len(cfg.frames.positions)


@pytest.fixture
def small_volume(tmp_path):
    """``small_volume(size)``: a tmpfs of ``size`` mounted in tmp_path (root only; skipped elsewhere)."""
    mounts = []

    def mount(size: str) -> Path:
        vol = tmp_path / f"vol{len(mounts)}"
        vol.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(vol)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip() or 'not root'})")
        mounts.append(vol)
        return vol

    yield mount
    for vol in mounts:
        subprocess.run(["umount", "-l", str(vol)], check=False)


@pytest.fixture(scope="module")
def fresh_manifest(tmp_path_factory, samples, tiny_config):
    """(id, status, caption) of every clip of an uninterrupted run on the samples."""
    out = tmp_path_factory.mktemp("fresh")
    run(tiny_config(), samples, out)
    return [(r["id"], r["status"], r["caption"]) for r in read_manifest(out)]


# Full (measured on the samples) while splitting (files.jsonl), captioning (captions.jsonl),
# cutting clips (clips/*.png) and writing the manifest (manifest.parquet).
@pytest.mark.parametrize("size", ["8k", "28k", "48k", "96k"])
def test_full_output_volume_ends_in_one_line_and_exit_2_then_resumes(tmp_path, samples, tiny_models, tiny_config,
                                                                     small_volume, capsys, fresh_manifest, size):
    inp = tmp_path / "in"
    shutil.copytree(samples, inp)
    vol = small_volume(size)
    out = vol / "curated"
    args = ["run", str(inp), "--out", str(out), "--config", str(TINY_CONFIG), *model_overrides(tiny_models)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert not TRACEBACK.search(err), err[-2000:]
    line = _last_line(err)
    assert re.fullmatch(r"error: cannot write \S.*: no space left on the device; free space there \(or pass an "
                        r"--out on another volume\) and run the same command again \(finished results are kept; "
                        r"nothing was left half-written\)", line), line
    assert "/.tmp-" not in line  # the file meant, not its temporary name
    _assert_complete(out)
    stored = {p.name: p.read_bytes() for p in (out / "state").glob("*.jsonl")}

    subprocess.run(["mount", "-o", "remount,size=64m", str(vol)], check=True)  # space freed
    cfg = tiny_config()
    stages = {"clip": ClipScores(cfg.clip)}
    resumed = run(cfg, inp, out, stages)
    for name, data in stored.items():  # what was stored before the volume filled up is kept, not redone
        assert (out / "state" / name).read_bytes().startswith(data)
    assert [(r["id"], r["status"], r["caption"]) for r in read_manifest(out)] == fresh_manifest
    before = stored.get("scores.jsonl", b"").count(b"\n")
    assert resumed.clips_scored == _lines(out / "state" / "scores.jsonl") - before  # only what was missing


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_file_size_limit_ends_in_one_line_and_exit_2(tmp_path, samples, tiny_models):
    """``ulimit -f``: the same kind of stop, without root (each file is limited to 16 KB)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "curation", "run", str(samples), "--out", str(out), "--config", str(TINY_CONFIG),
           *model_overrides(tiny_models)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, preexec_fn=lambda: _limit_file_size(16_000))
    assert res.returncode == 2, res.stderr[-2000:]
    assert not TRACEBACK.search(res.stderr), res.stderr[-2000:]
    line = _last_line(res.stderr)
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/\S+: the file size limit \(ulimit -f\) was "
                        r"reached; raise the limit and run the same command again \(finished results are kept; "
                        r"nothing was left half-written\)", line), line
    _assert_complete(out)
