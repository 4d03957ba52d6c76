"""Outputs of a run: cut clips + captions, manifest (jsonl + parquet), report, summary.

Clips are cut frame-accurately: frames ``[start_frame, end_frame)`` are decoded with decord
(the decoder whose indices the scores and the manifest use) and encoded with PyAV (H.264,
the source's average frame rate). Every file is written atomically.
"""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import CurationConfig
from curation.filters import reason_kind
from curation.manifest import write_manifest
from curation.media import open_video, read_frames, read_image
from hv_tune.io import atomic_write, atomic_write_text

CUT_CHUNK = 8  # frames decoded at a time while cutting: bounds memory on long 4K clips


def write_clip(rec: dict[str, Any], path: Path, crf: int) -> Path:
    """Cut the span of ``rec`` to an H.264 mp4 (a PNG for images), atomically."""
    if rec["kind"] == "image":
        from PIL import Image

        img = read_image(rec["source"], 10**9)[0]
        return atomic_write(path.with_suffix(".png"), lambda p: Image.fromarray(img).save(p, format="PNG"))
    return atomic_write(path, lambda p: _encode(rec, p, crf))


def _encode(rec: dict[str, Any], out: Path, crf: int) -> None:
    import av

    w, h = rec["width"] - rec["width"] % 2, rec["height"] - rec["height"] % 2  # yuv420p needs even sizes
    reader = open_video(rec["source"], rec["width"], rec["height"], None)
    rate = Fraction(rec["fps"]).limit_denominator(1001) if rec["fps"] > 0 else Fraction(24)
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for s in range(rec["start_frame"], rec["end_frame"], CUT_CHUNK):
            frames = read_frames(reader, range(s, min(rec["end_frame"], s + CUT_CHUNK)))
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def export_clips(cfg: CurationConfig, records: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Write clips/ID.mp4 + ID.txt for accepted clips; remove clips that are no longer accepted.

    A clip file already there is kept (ids encode the span). ``.txt`` files that differ from
    the caption we would write are the user's and are never deleted.
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
                    rec.update(status="error", reasons=[f"unreadable while cutting: {' '.join(str(e).split())[:200]}"])
                    out.append(rec)
                    continue
            rec["clip_path"] = f"clips/{path.name}"
            keep.add(rec["id"])
            if rec.get("caption") is not None:
                atomic_write_text(clips_dir / f"{rec['id']}.txt", rec["caption"] + "\n")
        out.append(rec)
    if clips_dir.is_dir():
        _remove_stale(clips_dir, keep, {r["id"]: r.get("caption") for r in records})
    return out


def _remove_stale(clips_dir: Path, keep: set[str], captions: dict[str, str | None]) -> None:
    for path in clips_dir.iterdir():
        cid = path.stem
        if cid in keep or path.name.startswith("."):
            continue
        if path.suffix in (".mp4", ".png"):
            path.unlink()
        elif path.suffix == ".txt" and cid in captions:
            text = path.read_text(encoding="utf-8").strip()
            if not text or text == (captions[cid] or "").strip():
                path.unlink()


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts: accepted, rejected by reason kind, errors."""
    status = Counter(r["status"] for r in records)
    by_reason = Counter(reason_kind(reason) for r in records if r["status"] == "rejected" for reason in r["reasons"])
    errors = Counter(reason_kind(reason) for r in records if r["status"] == "error" for reason in r["reasons"])
    return {"clips": len(records), "accepted": status.get("accepted", 0), "rejected": status.get("rejected", 0),
            "error": status.get("error", 0), "rejected_by_reason": dict(sorted(by_reason.items())),
            "errors_by_reason": dict(sorted(errors.items()))}


def format_summary(s: dict[str, Any]) -> str:
    """The end-of-run table."""
    lines = [f"{'clips':<32}{s['clips']:>8}", f"{'accepted':<32}{s['accepted']:>8}", f"{'rejected':<32}{s['rejected']:>8}"]
    lines += [f"  {k:<30}{v:>8}" for k, v in s["rejected_by_reason"].items()]
    lines += [f"{'errors':<32}{s['error']:>8}"]
    lines += [f"  {k:<30}{v:>8}" for k, v in s["errors_by_reason"].items()]
    rule = "-" * 40
    return "\n".join([rule, *lines, rule])


def export_all(cfg: CurationConfig, records: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Clips, manifest, report and summary for the final records (sorted by source, span)."""
    from curation.report import write_report

    records = sorted(records, key=lambda r: (r["source"], r["start_frame"], r["end_frame"], r["id"]))
    records = export_clips(cfg, records, out_dir)
    write_manifest(out_dir, records)
    write_report(cfg, records, out_dir)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary(records), indent=2) + "\n")
    return records
