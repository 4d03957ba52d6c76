"""Every file that probes and scores also cuts: the decoder chosen at probe time reads the file
in every access pattern (scene split, scoring seeks, a full-size cut), so a tiny clip and a
long-GOP AV1 clip end as accepted clips, not as ``unreadable while cutting``."""

from __future__ import annotations

import numpy as np
import pytest

from curation.pipeline import run
from tests.media_files import decode_pyav, marked_frames, vfr_times, write_video

KEEP_ALL = ("filters.motion_min=null", "filters.duplicate_cosine=null", "caption.enabled=false",
            "scenes.adaptive_threshold=1000")

CASES = {  # name: (frames [F, H, W, 3], write_video keywords)
    "h264_48x32": (marked_frames(24, 32, 48, seed=1), {}),  # decord 0.6.0: full-size decode fails
    "av1_long_gop": (marked_frames(96, 96, 128, seed=2), {"codec": "libsvtav1", "fps": 24}),  # 1 key frame in 4 s
    "av1_vfr": (marked_frames(112, 64, 96, seed=3), {"codec": "libsvtav1", "fps": 48, "pts_s": vfr_times()}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_clip_that_probes_and_scores_also_cuts(tmp_path, tiny_config, name):
    frames, kw = CASES[name]
    write_video(tmp_path / "in" / f"{name}.mp4", frames, **kw)
    (rec,) = run(tiny_config(*KEEP_ALL), tmp_path / "in", tmp_path / "out").records
    assert rec["status"] == "accepted", rec["reasons"]
    assert "aesthetic" in rec["scores"]
    cut, _, _ = decode_pyav(tmp_path / "out" / rec["clip_path"])
    assert len(cut) == rec["end_frame"] - rec["start_frame"] == len(frames)
    src = frames[rec["start_frame"] : rec["end_frame"]].astype(float)
    err = np.abs(cut.astype(float) - src).mean(axis=(1, 2, 3))  # two lossy encodes: a few levels
    shifted = np.abs(cut[1:].astype(float) - src[:-1]).mean()
    assert err.max() < 12 and err.mean() < shifted  # the same frames, not their neighbours
