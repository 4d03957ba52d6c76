"""The counts of a curation run (summary.json, the end-of-run table, the report's header)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from curation.filters import reason_kind
from hv_tune.media.captions import EDITS


def summary(records: list[dict[str, Any]], skipped: list[dict[str, str]] = (),
            orphaned: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Counts: accepted, rejected by reason kind, errors; how many a person decided and captioned;
    what the caption rule did to the captions (``captions_edited``: how many were prefixed, joined,
    had ``[trigger]`` replaced, ...); the walked files that were not used; and the review decisions
    whose clip no longer exists (``orphaned_reviews``: ``{"id", "decision", "caption", "time"}``)."""
    status = Counter(r["status"] for r in records)
    by_reason = Counter(reason_kind(reason) for r in records if r["status"] == "rejected" for reason in r["reasons"])
    errors = Counter(reason_kind(reason) for r in records if r["status"] == "error" for reason in r["reasons"])
    edits = Counter(e for r in records if r.get("caption") is not None for e in r.get("caption_edits") or [])
    return {"clips": len(records), "accepted": status.get("accepted", 0), "rejected": status.get("rejected", 0),
            "error": status.get("error", 0), "rejected_by_reason": dict(sorted(by_reason.items())),
            "errors_by_reason": dict(sorted(errors.items())),
            "captions": sum(r.get("caption") is not None for r in records),
            "captions_edited": {k: edits[k] for k in EDITS if edits[k]}, "skipped_files": list(skipped),
            "decided_by_human": sum(r.get("decided_by") == "human" for r in records),
            "captions_by_human": sum(r.get("caption_source") == "human" for r in records),
            "orphaned_reviews": list(orphaned)}


def format_summary(s: dict[str, Any]) -> str:
    """The end-of-run table: counts right-aligned in one column, however long a label is."""
    rows: list[tuple[str, Any]] = [("clips", s["clips"]), ("accepted", s["accepted"]), ("rejected", s["rejected"])]
    rows += [(f"  {k}", v) for k, v in s["rejected_by_reason"].items()]
    rows += [("errors", s["error"])]
    rows += [(f"  {k}", v) for k, v in s["errors_by_reason"].items()]
    if "captions" in s:
        rows += [("captions", s["captions"])]
        rows += [(f"  {EDITS[k]}", v) for k, v in s.get("captions_edited", {}).items()]
    skipped = s.get("skipped_files", [])
    rows += [("skipped files", len(skipped))]
    rows += [(f"  {f['rel']}: {f['reason']}", None) for f in skipped]
    if "decided_by_human" in s:
        rows += [("decided in review", s["decided_by_human"]), ("captions written in review", s["captions_by_human"])]
    orphans = s.get("orphaned_reviews", [])
    if orphans:  # kept in review.jsonl; their clips are gone (e.g. a re-run with other scene settings)
        rows += [("review decisions, clip gone", len(orphans))]
        rows += [(f"  {o['id']}: {o['decision'] or 'caption only'}", None) for o in orphans]
    width = max([32, *(len(label) + 1 for label, value in rows if value is not None)])
    lines = [label if value is None else f"{label:<{width}}{value:>8}" for label, value in rows]
    rule = "-" * (width + 8)
    return "\n".join([rule, *lines, rule])
