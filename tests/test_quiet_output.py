"""What the verbs print is what a user can act on: no library notes they cannot act on, counts in words."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from hv_tune.library_logs import UNACTIONABLE, drop_unactionable_library_logs

from .conftest import REPO

FRAGMENTS = [f for fragments in UNACTIONABLE.values() for f in fragments]


def _sample(model: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "finetune.py"), "sample", "--model", str(model), "--prompt", "a red ball",
           "--frames", "5", "--height", "32", "--width", "32", "--steps", "1", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("family", ["hunyuan-video", "hunyuan-video-1.5"])
def test_sample_prints_no_library_notes_a_user_cannot_act_on(family, tiny_model, hv15_tiny, tmp_path):
    """On d45ebf6: v1 printed transformers' tokenizer-class advice, 1.5 diffusers' 'Guiders are experimental'."""
    model = tiny_model if family == "hunyuan-video" else hv15_tiny
    res = _sample(model, tmp_path / "s.mp4")
    assert res.returncode == 0, res.stderr[-2000:]
    shown = [f for f in FRAGMENTS if f in res.stderr + res.stdout]
    assert not shown, res.stderr[-2000:]


def test_only_the_listed_notes_are_dropped(caplog):
    drop_unactionable_library_logs()
    drop_unactionable_library_logs()  # idempotent: one filter per logger
    for name, fragments in UNACTIONABLE.items():
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropFragments" for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            logger.warning("x %s y", fragments[0])
            logger.warning("another warning from %s", name)
        assert [r.getMessage() for r in caplog.records] == [f"another warning from {name}"]


def test_tests_run_outside_the_working_tree():
    """Relative paths in a test (the shipped configs' `runs/...`) never reach the repository."""
    assert not Path.cwd().resolve().is_relative_to(REPO)


def test_counts_are_in_words_with_the_right_number():
    """On d45ebf6: 'cache: 1 items in 1 buckets' and the report's '1 errors, 1 files skipped'."""
    from curation.report import render
    from hv_tune.data.encode import CacheSummary

    assert CacheSummary(items=1, buckets={"1x32x32": 1}).table().startswith("cache: 1 item in 1 bucket (")
    assert CacheSummary(items=3, buckets={"1x32x32": 1, "5x32x32": 2}).table().startswith("cache: 3 items in 2 buckets")
    rec = {"id": "a", "status": "error", "reasons": ["unreadable"], "scores": {}, "start_frame": 0, "end_frame": 0,
           "start_time": 0.0, "end_time": 0.0, "source": "a.mp4"}
    page = render([rec], {"a": None}, "run", [{"rel": "notes.md", "reason": "not a media file"}])
    assert "1 clip: 0 accepted, 0 rejected, 1 error, 1 file skipped" in page
