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
    """The end-of-run table."""
    lines = [f"{'clips':<32}{s['clips']:>8}", f"{'accepted':<32}{s['accepted']:>8}", f"{'rejected':<32}{s['rejected']:>8}"]
    lines += [f"  {k:<30}{v:>8}" for k, v in s["rejected_by_reason"].items()]
    lines += [f"{'errors':<32}{s['error']:>8}"]
    lines += [f"  {k:<30}{v:>8}" for k, v in s["errors_by_reason"].items()]
    if "captions" in s:
        lines += [f"{'captions':<32}{s['captions']:>8}"]
        lines += [f"  {EDITS[k]:<30}{v:>8}" for k, v in s.get("captions_edited", {}).items()]
    skipped = s.get("skipped_files", [])
    lines += [f"{'skipped files':<32}{len(skipped):>8}"]
    lines += [f"  {f['rel']}: {f['reason']}" for f in skipped]
    if "decided_by_human" in s:
        lines += [f"{'decided in review':<32}{s['decided_by_human']:>8}",
                  f"{'captions written in review':<32}{s['captions_by_human']:>8}"]
    orphans = s.get("orphaned_reviews", [])
    if orphans:  # kept in review.jsonl; their clips are gone (e.g. a re-run with other scene settings)
        lines += [f"{'review decisions, clip gone':<32}{len(orphans):>8}"]
        lines += [f"  {o['id']}: {o['decision'] or 'caption only'}" for o in orphans]
    rule = "-" * 40
    return "\n".join([rule, *lines, rule])
