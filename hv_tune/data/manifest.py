"""The curation manifest: one versioned format, written by curation and read by training.

``OUT_DIR/manifest.jsonl`` holds one JSON object per clip; every row carries
``manifest_version`` (``MANIFEST_VERSION``). Curation writes it with ``write_manifest`` (plus
``manifest.parquet``, the same table); ``hv_tune.data.sources`` and curation read it with
``read_manifest`` / ``manifest_rows``, which check the version of every row: a version this
code does not know is an error naming the file, the line and the version, never a guess.
A file is a manifest when its name starts with ``manifest`` or its first row has
``manifest_version`` (``is_manifest``): the format says what it is, nothing sniffs other keys.

Versions (docs/manifest.md):

- 1: rows without ``manifest_version`` (written before it was stored); read as version 2 with
  ``decided_by: thresholds``.
- 2: ``manifest_version`` and ``decided_by`` (``thresholds`` | ``human``) in every row;
  ``caption_source`` may be ``human`` (a caption written in the review page).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hv_tune.errors import DataError
from hv_tune.io import atomic_write, atomic_write_text

MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.jsonl"
DECIDED_BY = ("thresholds", "human")
CAPTION_SOURCES = ("user", "model", "human")
MANIFEST_FIELDS = (
    "manifest_version", "id", "source", "kind", "start_frame", "end_frame", "start_time", "end_time", "fps", "width",
    "height", "num_frames", "status", "decided_by", "reasons", "scores", "metrics", "caption", "caption_source",
    "clip_path", "probe_notes",
)


class ManifestVersionError(DataError):
    """A manifest row of a version this code cannot read (written by a newer hv-tune, or damaged)."""


def manifest_row(record: dict[str, Any]) -> dict[str, Any]:
    """A clip record reduced to the manifest fields, in a fixed order, with this version."""
    row = {k: record.get(k) for k in MANIFEST_FIELDS}
    row["manifest_version"] = MANIFEST_VERSION
    row["decided_by"] = record.get("decided_by") or "thresholds"
    return row


def _uniform_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row the same score/metric keys (null where absent): parquet needs one schema."""
    score_keys = sorted({k for r in rows for k in (r["scores"] or {})})
    metric_keys = sorted({k for r in rows for k in (r["metrics"] or {})})
    out = []
    for r in rows:
        r = dict(r)
        r["scores"] = {k: (r["scores"] or {}).get(k) for k in score_keys}
        r["metrics"] = {k: (r["metrics"] or {}).get(k) for k in metric_keys}
        out.append(r)
    return out


def write_manifest(out_dir: Path, records: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``manifest.jsonl`` and ``manifest.parquet`` (via ``datasets``), each atomically."""
    from datasets import Dataset

    out_dir = Path(out_dir)
    rows = _uniform_scores([manifest_row(r) for r in records])
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    jsonl = atomic_write_text(out_dir / MANIFEST_NAME, text)
    # parquet cannot store a struct without fields: when no clip has any score (nothing was
    # scored), the columns hold nulls there; manifest.jsonl keeps its {}
    empty = [k for k in ("scores", "metrics") if not any(r[k] for r in rows)]
    prows = [{**r, **{k: None for k in empty}} for r in rows]
    table = Dataset.from_list(prows) if rows else Dataset.from_dict({k: [] for k in MANIFEST_FIELDS})
    parquet = atomic_write(out_dir / "manifest.parquet", lambda p: table.to_parquet(str(p)))
    return jsonl, parquet


def check_row(row: dict[str, Any], path: str | os.PathLike, line: int) -> dict[str, Any]:
    """``row`` in the current version (an older readable one is upgraded).

    Raises:
        ManifestVersionError: ``manifest_version`` is not one of ``READABLE_VERSIONS``, naming the
            file, the line and the version found.
    """
    version = row.get("manifest_version", 1)
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ManifestVersionError(
            f"{path}:{line}: manifest_version {version!r} is not one this hv-tune reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}); it was written by a newer hv-tune (update hv-tune) "
            "or edited by hand (rewrite it with `python -m curation filter OUT_DIR`)")
    if version == 1:
        row = {**row, "manifest_version": MANIFEST_VERSION, "decided_by": "thresholds"}
    return row


def manifest_rows(path: str | os.PathLike, text: str | None = None,
                  bad_line: Callable[[int, str], None] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every row of a manifest file, each checked by ``check_row``.

    Args:
        path: the manifest file (named in errors).
        text: its decoded text, when the caller has read it already.
        bad_line: called with ``(line, why)`` for a line that is not a JSON object; without it,
            such a line is an error.

    Raises:
        DataError: a line that is not a JSON object (without ``bad_line``).
        ManifestVersionError: a row of an unknown version.
    """
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            why = None if isinstance(row, dict) else "not a JSON object"
        except json.JSONDecodeError as e:
            why = f"not valid JSON ({e.msg})"
        if why is not None:
            if bad_line is None:
                raise DataError(f"{path}:{n} is {why}; a manifest has one JSON object per line")
            bad_line(n, why)
            continue
        out.append((n, check_row(row, path, n)))
    return out


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``manifest.jsonl`` (a file or its OUT_DIR), in the current version.

    Raises:
        DataError: the file is missing or a line is not a JSON object.
        ManifestVersionError: a row of an unknown version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found; run `python -m curation run INPUT_DIR --out OUT_DIR` first")
    return [row for _, row in manifest_rows(path)]


def is_manifest(path: str | os.PathLike) -> bool:
    """True when ``path`` is a curation manifest: named ``manifest*``, or its first row carries
    ``manifest_version`` (the format's own mark)."""
    path = Path(path)
    if path.name.startswith("manifest"):
        return True
    try:
        with open(path, encoding="utf-8-sig") as fh:
            first = next((line for line in fh if line.strip()), "")
        row = json.loads(first) if first else None
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(row, dict) and "manifest_version" in row
