"""A person's decisions (``OUT/review.jsonl``, ``curation.review_log``) over the thresholds' ones.

Used by every step that writes outputs (``pipeline.finish``: ``run``, ``filter`` and the review
page's "apply"): a clip a person accepted or rejected keeps that status whatever the thresholds
say (``decided_by: human``); a caption a person wrote is the clip's caption (``caption_source:
human``) unless ``clips/<id>.txt`` was edited after it (the newest edit, page or file, wins).
Decisions whose clip no longer exists (a re-run with other scene settings) are listed, never
dropped: they stay in the log.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curation.review_log import Review

HUMAN_REJECT = "human: rejected in review"  # the reason of a clip a person rejected (summary kind "human")


def apply_decisions(records: list[dict[str, Any]], reviews: dict[str, Review]) -> list[dict[str, Any]]:
    """Set ``status``, ``reasons`` and ``decided_by`` of each record from the reviews.

    A clip that cannot be read (``error``) keeps its status: there is nothing to cut.
    """
    out = []
    for rec in records:
        rec = dict(rec, decided_by="thresholds")
        status = reviews[rec["id"]].status if rec["id"] in reviews else None
        if status is not None and rec["status"] in ("accepted", "rejected"):
            rec.update(status=status, reasons=[] if status == "accepted" else [HUMAN_REJECT], decided_by="human")
        out.append(rec)
    return out


def orphaned(records: list[dict[str, Any]], reviews: dict[str, Review]) -> list[dict[str, Any]]:
    """Reviews whose clip is not among ``records`` (kept in the log; listed in the summary)."""
    ids = {r["id"] for r in records}
    return [{"id": cid, "decision": r.status, "caption": r.caption, "time": max(filter(None, (r.decided_at, r.captioned_at)),
                                                                                  default=None)}
            for cid, r in sorted(reviews.items()) if cid not in ids and (r.status or r.caption is not None)]


def _when(stamp: str | None) -> datetime:
    """An ISO 8601 time as an aware datetime (none or unreadable: the earliest time)."""
    try:
        t = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        t = None
    if t is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def file_time(path: Path) -> str:
    """The modification time of ``path`` as ISO 8601 UTC (when a hand edit of it happened)."""
    return datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc).isoformat()


def page_caption_wins(review: Review | None, file_edit_time: str | None) -> bool:
    """True when the page's caption is the newest edit: there is one, and no file edit is newer."""
    if review is None or review.caption is None:
        return False
    return file_edit_time is None or _when(review.captioned_at) >= _when(file_edit_time)
