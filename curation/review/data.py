"""What the review page shows: the manifest's clips with the person's decisions folded in.

A clip's status on the page is the person's decision when there is one (``decided_by: human``),
else the thresholds' (``decided_by: thresholds``). The caption shown is the person's text as
written; beside it, the caption training will see (``hv_tune.media``'s caption rule with the
run's trigger word). Previews are found by clip id in the manifest, never by a path from a request.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from curation.config import CurationConfig, load_config
from curation.errors import InputError
from curation.filters import reason_kind, score_reasons
from curation.review_log import read_reviews
from hv_tune.data.manifest import read_manifest
from hv_tune.media import apply_caption_rule

#: clip ids as ``curation.manifest.clip_id`` makes them: nothing that could name a path
CLIP_ID = re.compile(r"^[0-9a-f]{12}-\d{6}-\d{6}$")
PREVIEW_FRAMES = 48  # frames in a looping preview, spread over the clip at their real times
PREVIEW_SHORT_SIDE = 180
_previews = threading.BoundedSemaphore(2)  # previews are made on demand; two at a time


def stored_config(out_dir: Path, overrides: list[str] = ()) -> CurationConfig:
    """The config of the run that made ``out_dir`` (``state/config.yaml``), with ``overrides``."""
    path = Path(out_dir) / "state" / "config.yaml"
    if not path.is_file():
        raise InputError(f"{path} not found: {out_dir} is not the output of `python -m curation run`")
    return load_config(path, list(overrides))


def thresholds(cfg: CurationConfig) -> list[dict[str, Any]]:
    """Every threshold the page can move: score key, config key, ``min``/``max`` and its value."""
    f = cfg.filters
    out = [("aesthetic", "filters.aesthetic_min", "min", f.aesthetic_min),
           ("motion", "filters.motion_min", "min", f.motion_min),
           ("motion", "filters.motion_max", "max", f.motion_max),
           ("frame_diff", "filters.frame_diff_min", "min", f.frame_diff_min),
           ("clip_sim_first_last", "filters.first_last_sim_min", "min", f.first_last_sim_min)]
    out += [(f"zs_{k}", f"filters.zero_shot_max.{k}", "max", v) for k, v in sorted(f.zero_shot_max.items())]
    return [{"score": s, "key": k, "side": side, "value": v} for s, k, side, v in out]


def threshold_status(row: dict[str, Any], cfg: CurationConfig) -> str:
    """The thresholds' decision for a manifest row (its stored status unless a person decided it)."""
    if row.get("decided_by") != "human" or row.get("status") == "error":
        return row["status"]
    scored = bool(row.get("scores"))
    return "rejected" if (not scored or score_reasons(row["scores"], cfg.filters)) else "accepted"


def training_caption(caption: str | None, trigger: str) -> str | None:
    """The caption the cache trains on: ``hv_tune.media``'s caption rule (the one curation and the
    cache apply) with the run's trigger word; None for a clip without a caption."""
    if caption is None:
        return None
    captions, _ = apply_caption_rule(caption, trigger)
    return captions[0] if captions else (" ".join(trigger.split()) or None)


def clip_view(row: dict[str, Any], review: Any, cfg: CurationConfig) -> dict[str, Any]:
    """One card's data: scores, reasons, both statuses, who decided, both captions."""
    by_rules = threshold_status(row, cfg)
    status = review.status if review and review.status and by_rules != "error" else by_rules
    human_caption = review.caption if review and review.caption is not None else None
    caption = human_caption if human_caption is not None else row.get("caption")
    trigger = cfg.caption.trigger_word
    return {
        "id": row["id"], "kind": row.get("kind"), "name": Path(str(row.get("source", ""))).name,
        "start_time": row.get("start_time"), "end_time": row.get("end_time"),
        "start_frame": row.get("start_frame"), "end_frame": row.get("end_frame"),
        "width": row.get("width"), "height": row.get("height"),
        "status": status, "threshold_status": by_rules,
        "decided_by": "human" if (review and review.status and by_rules != "error") else "thresholds",
        "reasons": list(row.get("reasons") or []),
        "reason_kinds": sorted({reason_kind(r) for r in row.get("reasons") or []}),
        "scores": dict(row.get("scores") or {}),
        "caption": caption, "caption_source": "human" if human_caption is not None else row.get("caption_source"),
        "training_caption": training_caption(caption, trigger),
        "decided_at": review.decided_at if review else None,
        "captioned_at": review.captioned_at if review else None,
        "preview": row.get("status") != "error",
    }


def page_data(out_dir: Path) -> dict[str, Any]:
    """Everything the page draws: clips, score names, thresholds, trigger word, counts, orphans."""
    cfg = stored_config(out_dir)
    rows = read_manifest(out_dir)
    reviews = read_reviews(out_dir)
    clips = [clip_view(r, reviews.get(r["id"]), cfg) for r in rows]
    ids = {c["id"] for c in clips}
    counts: dict[str, int] = {}
    for c in clips:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return {
        "out_dir": Path(out_dir).name, "clips": clips, "counts": counts,
        "scores": sorted({k for c in clips for k in c["scores"]}),
        "thresholds": thresholds(cfg), "trigger_word": cfg.caption.trigger_word,
        "orphans": [{"id": i, "status": r.status, "caption": r.caption} for i, r in sorted(reviews.items())
                    if i not in ids],
    }


def manifest_rows(out_dir: Path, ids: list[str]) -> list[dict[str, Any] | None]:
    """The manifest rows of clip ids ``ids`` (None: no such clip; a path-like id is never one)."""
    by_id = {r.get("id"): r for r in read_manifest(out_dir)}
    return [by_id.get(i) if isinstance(i, str) and CLIP_ID.match(i) else None for i in ids]


def manifest_row(out_dir: Path, clip: str) -> dict[str, Any] | None:
    """The manifest row of clip id ``clip`` (None: no such clip; a path-like id is never one)."""
    return manifest_rows(out_dir, [clip])[0]


def _source_clip(out_dir: Path, clip: str) -> dict[str, Any] | None:
    """The full clip record (probe facts included) from the run's stored split (read only: a
    run writing the state at the same time is never cut short by this reader)."""
    from curation.content import relocate

    state = Path(out_dir) / "state"
    if not (state / "inputs.json").is_file() or not (state / "files.jsonl").is_file():
        return None
    rows: dict[str, dict[str, Any]] = {}
    for line in (state / "files.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        if any(c.get("id") == clip for c in row.get("clips", [])):
            rows[row["content"]] = row  # later lines win
    for f in json.loads((state / "inputs.json").read_text(encoding="utf-8")):
        if f["content"] in rows:
            return next(c for c in relocate(rows[f["content"]], f)["clips"] if c.get("id") == clip)
    return None


def preview_path(out_dir: Path, clip: str) -> Path | None:
    """A short looping preview of clip ``clip`` (mp4, png for images), made once into state/previews.

    Rejected clips get one too (a person may rescue them); error clips and unknown ids get None.
    """
    row = manifest_row(out_dir, clip)
    if row is None or row.get("status") == "error":
        return None
    image = row.get("kind") == "image"
    path = Path(out_dir) / "state" / "previews" / f"{row['id']}{'.png' if image else '.mp4'}"
    if path.is_file():
        return path
    rec = _source_clip(out_dir, row["id"])
    if rec is None:
        return None
    with _previews:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _write_preview(rec, path)
            except Exception:  # a source gone or changed since the run: the card shows without one
                return None
    return path


def _write_preview(rec: dict[str, Any], path: Path) -> None:
    from PIL import Image

    from curation.media import evenly_spaced, image_frames, open_video
    from hv_tune.io import atomic_write
    from hv_tune.media import write_h264

    if rec["kind"] == "image":
        img = image_frames(rec["source"], PREVIEW_SHORT_SIDE)[0]
        atomic_write(path, lambda p: Image.fromarray(img).save(p, format="PNG"))
        return
    s, e = rec["start_frame"], rec["end_frame"]
    idx = sorted(set(evenly_spaced(s, e, min(PREVIEW_FRAMES, e - s))))
    reader = open_video(rec, PREVIEW_SHORT_SIDE)
    frames = reader.get(idx)
    times = [reader.times[i] for i in idx]
    atomic_write(path, lambda p: write_h264(p, [frames], times, crf=28, preset="veryfast"))
