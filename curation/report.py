"""``report.html``: one self-contained page to review a run in a browser.

One card per clip (thumbnail strip, scores, caption, status and reasons), accepted on the left,
rejected and errors on the right; sortable by any score and filterable by status, score and
text. Cards are plain HTML (readable without JavaScript); a small script reorders and hides
them. The initial sort and filter can come from the URL (``report.html?sort=aesthetic&dir=desc``).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import CurationConfig
from curation.media import positions_to_indices, read_clip_frames
from curation.summary import summary
from hv_tune.io import atomic_write, atomic_write_text, count
from hv_tune.media import resize_to, scaled_size

STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem;background:#f4f4f6;color:#222}
header{position:sticky;top:0;background:#f4f4f6;padding:.5rem 0;z-index:1;border-bottom:1px solid #ccc}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.col h2{font-size:1.1rem}
.card{background:#fff;border-radius:6px;padding:.5rem;margin:.5rem 0;box-shadow:0 1px 2px #0002}
.card img{max-width:100%;display:block;border-radius:3px}
.status{font-weight:bold;text-transform:uppercase;font-size:.8rem}
.accepted .status{color:#176d2c}.rejected .status{color:#a33}.error .status{color:#a60}
.reasons{color:#a33;font-size:.85rem}.caption{font-style:italic;font-size:.9rem}
table{font-size:.8rem;border-collapse:collapse}td{padding:0 .6rem 0 0}
.id{font-family:monospace;font-size:.75rem;color:#555}
"""

SCRIPT = """
const q = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
function val(card, key) {
  if (key === 'id') return card.dataset.id;
  const v = card.dataset['s_' + key];
  return v === undefined || v === '' ? null : parseFloat(v);
}
function apply() {
  const key = $('sort').value, dir = $('dir').value === 'asc' ? 1 : -1;
  const fkey = $('fkey').value, fmin = $('fmin').value === '' ? null : parseFloat($('fmin').value);
  const text = $('text').value.toLowerCase();
  const show = {accepted: $('st_accepted').checked, rejected: $('st_rejected').checked, error: $('st_error').checked};
  for (const col of document.querySelectorAll('.col .cards')) {
    const cards = Array.from(col.children);
    cards.sort((a, b) => {
      const x = val(a, key), y = val(b, key);
      if (x === y) return a.dataset.id < b.dataset.id ? -1 : 1;
      if (x === null) return 1; if (y === null) return -1;
      return (x < y ? -1 : 1) * dir;
    });
    let shown = 0;
    for (const c of cards) {
      const v = fmin === null ? null : val(c, fkey);
      const ok = show[c.dataset.status] && (fmin === null || (v !== null && v >= fmin))
        && (!text || c.textContent.toLowerCase().includes(text));
      c.style.display = ok ? '' : 'none'; shown += ok ? 1 : 0;
      col.appendChild(c);
    }
    col.parentElement.querySelector('.count').textContent = shown;
  }
}
for (const [k, v] of q) { const el = $(k); if (el) { if (el.type === 'checkbox') el.checked = v !== '0'; else el.value = v; } }
for (const el of document.querySelectorAll('header select, header input')) el.addEventListener('input', apply);
apply();
document.body.dataset.ready = '1';
"""


def thumbs_dir(out_dir: Path) -> Path:
    """Where a run keeps its report's thumbnail strips (``strip_path``)."""
    return Path(out_dir) / "state" / "thumbs"


def strip_path(cache: Path, rec: dict[str, Any]) -> Path:
    """A clip's cached thumbnail strip in ``cache`` (``thumbs_dir``): ``CLIP_ID.jpg``."""
    return Path(cache) / f"{rec['id']}.jpg"


def thumbnail_strip(rec: dict[str, Any], positions: list[float], height: int, cache: Path,
                    encode: bool = True) -> str | None:
    """A JPEG strip of the clip's frames as a data URI (cached in ``state/thumbs``); with
    ``encode=False`` only the cache file is written (worker processes make them ahead)."""
    path = strip_path(cache, rec)
    if not path.is_file():
        if rec["status"] == "error" or rec["end_frame"] <= rec["start_frame"]:
            return None
        try:
            idx = positions_to_indices(rec["start_frame"], rec["end_frame"], positions)
            frames = read_clip_frames(rec, idx if rec["kind"] == "video" else [0], height)
        except Exception:  # a thumbnail is a convenience: the card shows without one
            return None
        _write_strip(path, frames)
    if not encode:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def thumbnail_from_frames(rec: dict[str, Any], frames: np.ndarray, height: int, cache: Path) -> None:
    """The clip's cached strip (``thumbnail_strip``'s file) made from frames already decoded at the
    same positions (the scoring frames ``[K, H, W, 3]``, larger than a thumbnail): resized to the
    thumbnail's size instead of decoding the clip again. An existing strip is kept."""
    path = strip_path(cache, rec)
    if path.is_file():
        return
    w, h = scaled_size(rec["width"], rec["height"], height)  # the size read_clip_frames decodes at
    _write_strip(path, np.stack([resize_to(f, w, h) for f in frames]))


def _write_strip(path: Path, frames: np.ndarray) -> None:
    from PIL import Image

    strip = np.concatenate(list(frames), axis=1)  # [K, H, W, 3] -> [H, K*W, 3]
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="JPEG", quality=80)
    atomic_write(path, lambda p: p.write_bytes(buf.getvalue()))


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def card(rec: dict[str, Any], thumb: str | None) -> str:
    """One clip card; ``data-s_<score>`` attributes carry the values the script sorts by."""
    e = html.escape
    scores = rec.get("scores") or {}
    attrs = " ".join(f'data-s_{e(k)}="{"" if v is None else v}"' for k, v in sorted(scores.items()))
    rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(scores.items()))
    span = f"frames {rec['start_frame']}–{rec['end_frame']} · {rec['start_time']:.2f}–{rec['end_time']:.2f} s"
    parts = [
        f'<div class="card {e(rec["status"])}" data-id="{e(rec["id"])}" data-status="{e(rec["status"])}" {attrs}>',
        f'<img alt="frames of {e(rec["id"])}" src="{thumb}">' if thumb else "",
        f'<div class="status">{e(rec["status"])}{" · by a person" if rec.get("decided_by") == "human" else ""}</div>',
        f'<div class="id">{e(rec["id"])}</div><div>{e(rec.get("rel", rec["source"]))} · {span}</div>',
        "".join(f'<div class="reasons">{e(r)}</div>' for r in rec["reasons"]),
        f'<div class="caption">{e(rec["caption"])}</div>' if rec.get("caption") else "",
        f"<table>{rows}</table></div>",
    ]
    return "".join(parts)


def skipped_section(skipped: list[dict[str, str]]) -> str:
    """The walked files that were not used, each with its reason (empty when none)."""
    if not skipped:
        return ""
    e = html.escape
    items = "".join(f"<li><code>{e(f['rel'])}</code>: {e(f['reason'])}</li>" for f in skipped)
    return f'<section id="skipped"><h2>Skipped files ({len(skipped)})</h2><ul>{items}</ul></section>'


def render(records: list[dict[str, Any]], thumbs: dict[str, str | None], title: str,
           skipped: list[dict[str, str]] = ()) -> str:
    """The whole page as a string."""
    e = html.escape
    keys = sorted({k for r in records for k in (r.get("scores") or {})})
    options = "".join(f'<option value="{e(k)}">{e(k)}</option>' for k in ["id", *keys])
    s = summary(records)
    left = "".join(card(r, thumbs.get(r["id"])) for r in records if r["status"] == "accepted")
    right = "".join(card(r, thumbs.get(r["id"])) for r in records if r["status"] != "accepted")
    controls = (
        f'<label>sort <select id="sort">{options}</select></label> '
        '<select id="dir"><option value="desc">high first</option><option value="asc">low first</option></select> '
        f'<label>min <select id="fkey">{options}</select></label> <input id="fmin" type="number" step="any" size="6"> '
        '<input id="text" type="search" placeholder="search"> '
        + "".join(f'<label><input type="checkbox" id="st_{k}" checked>{k}</label> ' for k in ("accepted", "rejected", "error"))
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{e(title)}</h1>"
        f"<div>{count(s['clips'], 'clip')}: {s['accepted']} accepted, {s['rejected']} rejected, "
        f"{count(s['error'], 'error')}, {count(len(skipped), 'file')} skipped</div>"
        f'{controls}</header><div class="cols">'
        f'<section class="col" id="accepted"><h2>Accepted (<span class="count"></span>)</h2><div class="cards">{left}</div></section>'
        f'<section class="col" id="rejected"><h2>Rejected and errors (<span class="count"></span>)</h2>'
        f'<div class="cards">{right}</div></section></div>{skipped_section(list(skipped))}'
        f'<script>{SCRIPT}</script></body></html>\n'
    )


def write_report(cfg: CurationConfig, records: list[dict[str, Any]], out_dir: Path,
                 skipped: list[dict[str, str]] = ()) -> Path:
    """Write ``OUT_DIR/report.html`` atomically (``skipped``: walked files not used, with reasons)."""
    cache = thumbs_dir(out_dir)
    thumbs = {r["id"]: thumbnail_strip(r, cfg.frames.positions, cfg.export.thumb_height, cache) for r in records}
    return atomic_write_text(out_dir / "report.html", render(records, thumbs, f"Curation report: {out_dir.name}", skipped))
