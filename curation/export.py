"""Outputs of a run: cut clips + captions, manifest (jsonl + parquet), report, summary.

Clips are cut frame-accurately by ``curation.stages.cut.write_clip`` (the worker processes cut
accepted clips ahead, while others are scored; what is left is cut here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.config import CurationConfig
from curation.errors import out_of_space
from curation.report import write_report
from curation.stages.cut import write_clip
from curation.summary import summary
from hv_tune.data.manifest import write_manifest
from hv_tune.io import atomic_write_text
from hv_tune.media import read_caption_file


def export_clips(cfg: CurationConfig, records: list[dict[str, Any]], out_dir: Path,
                 stored_captions: dict[str, str | set[str] | None] | None = None) -> list[dict[str, Any]]:
    """Write clips/ID.mp4 + ID.txt for accepted clips; remove clips that are no longer accepted.

    A clip file already there is kept: ids encode the source's content hash and the span, so a
    source whose bytes changed has new ids and its old clips are removed here. ``.txt`` files
    that differ from the caption we wrote (this run's or a stored one, ``stored_captions``) are
    the user's and are never deleted.
    """
    clips_dir = out_dir / "clips"
    out = []
    keep: set[str] = set()
    for rec in records:
        rec = dict(rec, clip_path=None)
        if rec["status"] == "accepted" and cfg.export.copy_clips:
            clips_dir.mkdir(parents=True, exist_ok=True)
            path = clips_dir / f"{rec['id']}{'.png' if rec['kind'] == 'image' else '.mp4'}"
            if not path.exists():
                try:
                    write_clip(rec, path, cfg.export.crf)
                except Exception as e:  # the source changed or vanished since scoring
                    if out_of_space(e):  # not the clip's fault: the run stops (the CLI says so)
                        raise
                    rec.update(status="error", reasons=[f"unreadable while cutting: {' '.join(str(e).split())[:200]}"])
                    out.append(rec)
                    continue
            rec["clip_path"] = f"clips/{path.name}"
            keep.add(rec["id"])
            if rec.get("caption") is not None:
                atomic_write_text(clips_dir / f"{rec['id']}.txt", rec["caption"] + "\n")
        out.append(rec)
    if clips_dir.is_dir():
        ours: dict[str, set[str]] = {}
        for cid, texts in (stored_captions or {}).items():
            ours.setdefault(cid, set()).update([texts] if isinstance(texts, str) else texts or ())
        for r in records:
            if r.get("caption"):
                ours.setdefault(r["id"], set()).add(r["caption"])
        _remove_stale(clips_dir, keep, ours)
    return out


def _remove_stale(clips_dir: Path, keep: set[str], captions: dict[str, set[str]]) -> None:
    for path in clips_dir.iterdir():
        cid = path.stem
        if cid in keep or path.name.startswith("."):
            continue
        if path.suffix in (".mp4", ".png"):
            path.unlink()
        elif path.suffix == ".txt" and cid in captions:
            text = read_caption_file(path)[0].strip()
            if not text or text in {c.strip() for c in captions[cid]}:
                path.unlink()


def export_all(cfg: CurationConfig, records: list[dict[str, Any]], out_dir: Path,
               skipped: list[dict[str, str]] = (), stored_captions: dict[str, str | set[str] | None] | None = None,
               orphaned: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Clips, manifest, report and summary for the final records (sorted by source, span).

    ``skipped``: walked files that are not used, ``{"rel", "reason"}`` (summary and report).
    ``stored_captions``: captions we wrote or stored, by clip id (``clips/ID.txt`` equal to one is ours).
    ``orphaned``: review decisions whose clip no longer exists (summary).
    """
    records = sorted(records, key=lambda r: (r["source"], r["start_frame"], r["end_frame"], r["id"]))
    records = export_clips(cfg, records, out_dir, stored_captions)
    write_manifest(out_dir, records)
    write_report(cfg, records, out_dir, skipped)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary(records, skipped, orphaned), indent=2, ensure_ascii=False) + "\n")
    return records
