"""Every verb has --help; the entry point exits non-zero with a readable message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

VERBS = ["tiny-model", "train", "sample", "demo"]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "finetune.py"), *args], capture_output=True, text=True)


def test_help_lists_verbs():
    out = _run("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    out = _run(verb, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_bad_config_exits_2_without_traceback(tmp_path):
    out = _run("train", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert "missing.yaml" in out.stderr and "Traceback" not in out.stderr


def test_sample_writes_a_playable_mp4(tiny_model, tmp_path):
    import av

    out = tmp_path / "preview.mp4"
    res = _run("sample", "--model", str(tiny_model), "--prompt", "a red circle", "--frames", "9",
               "--height", "32", "--width", "48", "--steps", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (32, 48, 3)
    bad = _run("sample", "--model", str(tiny_model), "--prompt", "x", "--frames", "8", "--out", str(out))
    assert bad.returncode == 2 and "4k+1" in bad.stderr
