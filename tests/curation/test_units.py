"""Pure pieces: span splitting, motion normalisation, thresholds, near-duplicates, state log, sizes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from curation.config import FilterConfig, MotionConfig, ScenesConfig
from curation.filters import decide, reason_kind, score_reasons
from curation.manifest import StateLog, clip_id, encode_b64
from curation.media import evenly_spaced, positions_to_indices, scaled_size
from curation.stages.frames import motion_indices
from curation.stages.motion import motion_scores
from curation.stages.scenes import split_spans


def test_split_spans_trims_cuts_and_splits_long_scenes():
    times = np.arange(100) / 10.0  # 10 fps, 10 s
    cfg = ScenesConfig(trim_frames=1, min_clip_s=1.0, max_clip_s=4.0)
    spans = split_spans(times, 10.0, [30, 35], cfg)
    # scene [0, 30) -> [0, 29); [30, 35) -> [31, 34) too short; [35, 100) -> [36, 100) split in 2 pieces
    assert spans[0] == (0, 29, None)
    assert spans[1][:2] == (31, 34) and spans[1][2].startswith("too short: 0.30 s < 1 s")
    assert [s[:2] for s in spans[2:]] == [(36, 68), (68, 100)]
    assert all(s[2] is None for s in spans[2:])


def test_split_spans_without_cuts_keeps_file_edges():
    times = np.arange(24) / 12.0
    assert split_spans(times, 2.0, [], ScenesConfig(min_clip_s=1.0)) == [(0, 24, None)]


def _shifted(shift_px: float, size: int, frames: int) -> np.ndarray:
    """A smooth random texture translated by ``shift_px`` pixels per frame: [F, size, size] uint8."""
    rng = np.random.default_rng(0)
    base = rng.random((size // 8 + 4, size // 8 + 4))
    import cv2

    big = cv2.resize(base, (size * 2, size * 2), interpolation=cv2.INTER_CUBIC)
    return np.stack([
        (255 * big[size // 2: size // 2 + size, int(size // 2 + f * shift_px): int(size // 2 + f * shift_px) + size])
        .clip(0, 255).astype(np.uint8) for f in range(frames)
    ])


def test_motion_is_normalised_by_diagonal_and_time():
    cfg = MotionConfig()
    small = motion_scores(_shifted(4, 128, 3), np.array([0.0, 0.5, 1.0]), cfg)
    big = motion_scores(_shifted(8, 256, 3), np.array([0.0, 0.5, 1.0]), cfg)
    expected = 4 / np.hypot(128, 128) / 0.5  # 4 px per 0.5 s on a 181 px diagonal
    assert small["motion"] == pytest.approx(expected, rel=0.25)
    assert big["motion"] == pytest.approx(small["motion"], rel=0.2)  # same motion at twice the resolution
    slow = motion_scores(_shifted(4, 128, 3), np.array([0.0, 1.0, 2.0]), cfg)  # same pixels, half the speed
    assert slow["motion"] == pytest.approx(small["motion"] / 2, rel=0.05)
    static = motion_scores(np.repeat(_shifted(0, 128, 1), 3, axis=0), np.array([0.0, 0.5, 1.0]), cfg)
    assert static["frame_diff"] == 0.0 and static["motion"] < 1e-4  # Farneback leaves ~1e-5 of noise
    assert motion_scores(_shifted(0, 64, 1), np.array([0.0]), cfg) == {"motion": None, "frame_diff": None}


def test_motion_indices_follow_time_not_frame_count():
    times = np.array([0.0, 0.1, 0.3, 0.4, 0.6, 0.7, 0.9, 1.0, 1.2, 1.3, 1.5])  # variable frame rate
    idx = motion_indices(10, 21, times, fps=2.0, max_pairs=16)
    assert idx[0] == 10 and idx[-1] == 20 and len(idx) == 4  # 1.5 s at 2 fps -> 4 frames
    assert motion_indices(5, 6, times[:1], 2.0, 16) == [5]
    assert len(motion_indices(0, 11, times, fps=100.0, max_pairs=3)) == 4


def test_score_reasons_name_metric_value_and_threshold():
    f = FilterConfig(aesthetic_min=4.5, motion_min=0.002, first_last_sim_min=0.6, zero_shot_max={"watermark": 0.8})
    scores = {"aesthetic": 3.9, "motion": 0.0004, "clip_sim_first_last": 0.9, "zs_watermark": 0.93}
    reasons = score_reasons(scores, f)
    assert reasons == ["aesthetic 3.9 < 4.5", "static: motion 0.0004 < 0.002", "watermark: zs_watermark 0.93 > 0.8"]
    assert [reason_kind(r) for r in reasons] == ["aesthetic", "static", "watermark"]
    assert score_reasons({"motion": None}, f) == []  # an image has no motion: never "static"


def _scored(cid: str, emb: np.ndarray, aesthetic: float) -> dict:
    return {"id": cid, "status": "pending", "reasons": [], "scored": True, "embedding": encode_b64(emb / np.linalg.norm(emb)),
            "scores": {"aesthetic": aesthetic, "motion": 0.1}}


def test_near_duplicates_keep_the_best_clip():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    recs = [_scored("a1", a, 5.0), _scored("a2", a + 0.01 * rng.normal(size=64), 6.0), _scored("b", b, 4.9)]
    out = {r["id"]: r for r in decide(recs, FilterConfig(aesthetic_min=None, zero_shot_max={}))}
    assert out["a2"]["status"] == "accepted" and out["b"]["status"] == "accepted"
    assert out["a1"]["status"] == "rejected"
    assert out["a1"]["reasons"][0].startswith("near-duplicate: cosine 0.99") and out["a1"]["reasons"][0].endswith("with a2")
    off = decide(recs, FilterConfig(aesthetic_min=None, zero_shot_max={}, duplicate_cosine=None))
    assert [r["status"] for r in off] == ["accepted"] * 3


def test_decide_keeps_statuses_fixed_before_scoring():
    recs = [{"id": "e", "status": "error", "reasons": ["unreadable: x"], "scores": {}},
            {"id": "s", "status": "rejected", "reasons": ["too short: 0.5 s < 2 s"], "scores": {}}]
    assert decide(recs, FilterConfig()) == [{**r, "decided_by": "thresholds"} for r in recs]


def test_human_decisions_override_thresholds_and_duplicates():
    from curation.decisions import HUMAN_REJECT
    from curation.review_log import Review

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    recs = [_scored("a1", a, 5.0), _scored("a2", a + 0.01 * rng.normal(size=64), 6.0), _scored("b", b, 4.9),
            {"id": "e", "status": "error", "reasons": ["unreadable: x"], "scores": {}},
            {"id": "s", "status": "rejected", "reasons": ["too short: 0.5 s < 2 s"], "scores": {}}]
    f = FilterConfig(aesthetic_min=5.0, zero_shot_max={})
    reviews = {"a1": Review("accepted"), "b": Review("accepted"), "e": Review("accepted"), "s": Review("accepted"),
               "gone": Review("rejected")}
    out = {r["id"]: (r["status"], r["decided_by"], r["reasons"]) for r in decide(recs, f, reviews)}
    # a1 (the lower aesthetic near-duplicate of a2) is a person's: kept, and it is the one a2 duplicates
    assert out["a1"] == ("accepted", "human", [])
    assert out["a2"][:2] == ("rejected", "thresholds") and out["a2"][2][0].endswith("with a1")
    assert out["b"] == ("accepted", "human", [])  # below aesthetic_min, accepted by a person
    assert out["e"] == ("error", "thresholds", ["unreadable: x"])  # nothing to cut: stays an error
    assert out["s"] == ("accepted", "human", [])  # too short by the rule, a person keeps it
    rejected = decide(recs, f, {"a2": Review("rejected"), "a1": Review(None)})
    got = {r["id"]: (r["status"], r["reasons"]) for r in rejected}
    assert got["a2"] == ("rejected", [HUMAN_REJECT]) and got["a1"] == ("accepted", [])  # a1 no longer a duplicate


def test_state_log_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    log = StateLog(path)
    log.append({"id": "a", "v": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"id": "b", "v"')  # a run killed mid-write
    log = StateLog(path)
    assert list(log.rows) == ["a"]
    log.append({"id": "b", "v": 2})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]
    assert StateLog(path).get("b") == {"id": "b", "v": 2}


def test_sizes_and_indices():
    assert scaled_size(3840, 2160, 256) == (448, 252)  # width a multiple of 32, short side ~256
    assert scaled_size(96, 64, 256) == (96, 64)  # never upscaled
    assert positions_to_indices(10, 20, [0.1, 0.5, 0.9]) == [11, 14, 18]
    assert evenly_spaced(0, 9, 4) == [0, 3, 5, 8]
    assert clip_id("a b/Ünïcode clip.mp4", 3, 40) != clip_id("a b/other.mp4", 3, 40)
    assert re.fullmatch(r"[0-9a-f]{12}-000003-000040", clip_id("0123abcd" * 4, 3, 40))  # short, file-name safe
