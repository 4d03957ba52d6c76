"""Thresholds -> status and reasons, from stored scores only (pure; re-run by `curation filter`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.config import FilterConfig
from curation.decisions import apply_decisions
from curation.manifest import decode_b64
from curation.review_log import Review


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 0.01 else f"{x:.3f}".rstrip("0").rstrip(".")


def score_reasons(scores: dict[str, Any], f: FilterConfig) -> list[str]:
    """Why a clip fails the thresholds (empty when it passes). Missing scores never fail."""
    reasons = []

    def check(key: str, lo: float | None, hi: float | None, label: str) -> None:
        v = scores.get(key)
        if v is None:
            return
        if lo is not None and v < lo:
            reasons.append(f"{label}{key} {_fmt(v)} < {_fmt(lo)}")
        if hi is not None and v > hi:
            reasons.append(f"{label}{key} {_fmt(v)} > {_fmt(hi)}")

    check("aesthetic", f.aesthetic_min, None, "")
    check("motion", f.motion_min, None, "static: ")
    check("motion", None, f.motion_max, "shaky: ")
    check("frame_diff", f.frame_diff_min, None, "static: ")
    check("clip_sim_first_last", f.first_last_sim_min, None, "transition: ")
    for name, limit in sorted(f.zero_shot_max.items()):
        check(f"zs_{name}", None, limit, f"{name}: ")
    return reasons


def decide(records: list[dict[str, Any]], f: FilterConfig, reviews: dict[str, Review] | None = None,
           ) -> list[dict[str, Any]]:
    """Status, reasons and ``decided_by`` for every clip record, then near-duplicate removal.

    Records whose status was fixed before scoring (``error``, ``too short``) keep it. Then a
    person's decisions (``reviews``, ``curation.decisions.apply_decisions``) replace the
    thresholds'. Among accepted clips, a clip whose embedding has cosine >= ``duplicate_cosine``
    with a better one (accepted by a person, then higher aesthetic, then lower id) is rejected as
    its near-duplicate; a clip a person accepted is never rejected as one.
    """
    out = []
    for rec in records:
        rec = dict(rec)
        if rec.get("scored"):
            reasons = score_reasons(rec["scores"], f)
            rec["status"], rec["reasons"] = ("rejected", reasons) if reasons else ("accepted", [])
        out.append(rec)
    out = apply_decisions(out, reviews or {})
    if f.duplicate_cosine is not None:
        _mark_duplicates([r for r in out if r["status"] == "accepted" and r.get("embedding")], f.duplicate_cosine)
    return out


def _mark_duplicates(candidates: list[dict[str, Any]], threshold: float) -> None:
    if len(candidates) < 2:
        return
    order = sorted(candidates, key=lambda r: (r.get("decided_by") != "human", -(r["scores"].get("aesthetic") or 0.0),
                                              r["id"]))
    emb = np.stack([decode_b64(r["embedding"]) for r in order])  # [N, D], unit rows
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    sims = emb @ emb.T  # [N, N]
    kept: list[int] = []
    for i, rec in enumerate(order):
        dup = next((k for k in kept if sims[i, k] >= threshold), None)
        if dup is None or rec.get("decided_by") == "human":
            kept.append(i)
            continue
        rec["status"] = "rejected"
        rec["reasons"] = [f"near-duplicate: cosine {sims[i, dup]:.4f} >= {threshold:g} with {order[dup]['id']}"]


def reason_kind(reason: str) -> str:
    """The category of a reason for the summary table: the text before ':', else the first word."""
    return (reason.split(":", 1)[0] if ":" in reason else reason.split(" ", 1)[0]).strip()
