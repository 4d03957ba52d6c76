"""A person's review decisions: ``OUT/review.jsonl``, append-only, one JSON object per line.

Each line is one action, appended with one ``write`` and fsync the moment it is taken (so a
server killed right after an action has lost nothing):

- ``id``: the clip id (``curation.manifest.clip_id``);
- ``action``: ``accept`` | ``reject`` | ``reset`` (back to the thresholds' decision) | ``caption``;
- ``caption``: the person's caption (``caption`` actions only; the text as written);
- ``time``: ISO 8601 UTC (``2026-12-05T20:41:07.123456+00:00``).

Folding the log (``read_reviews``): for each clip the last of its accept/reject/reset lines is
its decision and the last ``caption`` line its caption; later lines win, so two writers lose
nothing (every action stays in the log; for one clip the last write wins). A decision whose clip
no longer exists (a re-run with other scene settings) stays in the log and is reported by the
caller. The format is documented in docs/manifest.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curation.errors import InputError
from curation.manifest import append_line, cut_partial_line

REVIEW_FILE = "review.jsonl"
ACTIONS = ("accept", "reject", "reset", "caption")
#: the status a decision action sets (``reset`` gives the clip back to the thresholds)
STATUS_OF = {"accept": "accepted", "reject": "rejected", "reset": None}


@dataclass(frozen=True)
class Review:
    """What a person decided for one clip (None: nothing of that kind)."""

    status: str | None = None  # "accepted" | "rejected"; None: the thresholds decide
    caption: str | None = None  # the person's caption, as written
    decided_at: str | None = None
    captioned_at: str | None = None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def append_action(out_dir: Path, clip_id: str, action: str, caption: str | None = None,
                  time: str | None = None) -> dict[str, Any]:
    """Append one action to ``out_dir/review.jsonl`` durably and return the stored line.

    Raises:
        InputError: an unknown action, an empty clip id, or a ``caption`` action without text.
    """
    if action not in ACTIONS:
        raise InputError(f"review action {action!r}: use one of {', '.join(ACTIONS)}")
    if not clip_id:
        raise InputError("review action without a clip id")
    if action == "caption" and not isinstance(caption, str):
        raise InputError(f"review action 'caption' for clip {clip_id} needs the caption text")
    row: dict[str, Any] = {"id": clip_id, "action": action, "time": time or utc_now()}
    if action == "caption":
        row["caption"] = caption
    append_line(Path(out_dir) / REVIEW_FILE, row)
    return row


def read_reviews(out_dir: Path) -> dict[str, Review]:
    """Fold ``out_dir/review.jsonl`` into one ``Review`` per clip id (no file: no reviews).

    Raises:
        InputError: a line that is not a JSON action, naming the file and line.
    """
    path = Path(out_dir) / REVIEW_FILE
    cut_partial_line(path)
    if not path.exists():
        return {}
    reviews: dict[str, Review] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            clip, action = row["id"], row["action"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n} is not a review action ({e}); fix or delete that line") from e
        if action not in ACTIONS:
            raise InputError(f"{path}:{n}: unknown review action {action!r} (use one of {', '.join(ACTIONS)})")
        old = reviews.get(clip, Review())
        if action == "caption":
            reviews[clip] = Review(old.status, str(row.get("caption", "")), old.decided_at, row.get("time"))
        else:
            reviews[clip] = Review(STATUS_OF[action], old.caption, row.get("time"), old.captioned_at)
    return reviews
