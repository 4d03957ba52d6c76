"""What produced a cache: model encoders, data settings, source files. Stored in the index header.

``cache_fingerprint`` describes the inputs of a cache; ``fingerprint_changes`` compares a
stored one with the current config and says, per difference, what it invalidates. Cache
files are content-addressed (``hv_tune.data.plan``), so a rebuild encodes exactly the files
whose inputs changed; this module only decides *whether* to rebuild and explains *why*.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from hv_tune.config import Config, DataConfig
from hv_tune.data.plan import model_identity
from hv_tune.data.sources import Scan, expand_sources, item_key

# data settings and what a change of each one invalidates
LATENT_SETTINGS = ("resolution", "frame_buckets", "frame_bucket_choice", "allow_upscale", "fps", "frame_extraction",
                   "frame_samples", "type")
TEXT_SETTINGS = ("trigger_word", "missing_caption", "caption_lines")
NOT_RECORDED = ("sources", "cache_dir", "num_workers", "vae_tiling", "vae_slicing")  # no effect on the items


def _files(folder: Path) -> list[list[Any]]:
    out = []
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        st = p.stat()
        out.append([str(p.relative_to(folder)), st.st_size, st.st_mtime_ns])
    return out


def encoders_identity(model_path: str, transformer_subfolder: str) -> str:
    """Hash of every file of a local model folder except the transformer (name, size, mtime)."""
    root = Path(model_path)
    if not root.is_dir():
        return "hub"  # a hub id: its identity is the id and revision
    parts = [_files(d) for d in sorted(root.iterdir()) if d.is_dir() and d.name != transformer_subfolder]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def model_fingerprint(
    cfg: Config, spec_name: str, transformer_subfolder: str, conditions: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The model part of a fingerprint; ``conditions``: the spec's per-item condition fields (recorded
    when there are some, so a spec that changes them gets its condition files rebuilt)."""
    m = cfg.model
    out = {"name": spec_name, "path": model_identity(m.path), "revision": m.revision,
           "text_encoder_dtype": m.text_encoder_dtype, "encoders": encoders_identity(m.path, transformer_subfolder),
           "vae_file": _file_identity(m.vae_path)}
    return out | ({"conditions": list(conditions)} if conditions else {})


def _file_identity(path: str | None) -> str | None:
    """A single-file component's identity (resolved path, size, mtime), or None when unset."""
    if not path:
        return None
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def model_key(model: dict[str, Any]) -> str:
    """The model part of every content key: files re-encode when any of it changes."""
    key = f"{model['name']}:{model['path']}:{model['revision']}:{model['encoders']}:{model['text_encoder_dtype']}"
    return key + (f":vae={model['vae_file']}" if model.get("vae_file") else "")  # same keys as before without one


def cache_fingerprint(
    cfg: Config, spec_name: str, transformer_subfolder: str, scan: Scan, conditions: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Everything the items of a cache depend on (JSON-serialisable)."""
    data = {f.name: getattr(cfg.data, f.name) for f in fields(DataConfig) if f.name not in NOT_RECORDED}
    files = {}
    for item in scan.items:
        st = item.path.stat() if item.path.exists() else None
        captions = hashlib.sha256(json.dumps(item.captions).encode()).hexdigest()[:12]
        files[item_key(item.path, item.clip_id)] = [st.st_size if st else -1, st.st_mtime_ns if st else -1, captions]
    sources = [{"source": s.label} | asdict(s.config) for s in expand_sources(cfg.data)]
    return {"model": model_fingerprint(cfg, spec_name, transformer_subfolder, conditions), "data": data,
            "sources": sources, "files": files}


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any],
                        not_accepted: dict[str, str] | None = None) -> list[str]:
    """Human-readable differences, each with what it invalidates; empty when nothing changed.

    ``not_accepted``: item key -> status of the manifest clips that are not accepted now
    (``Scan.not_accepted``), so clips that left the index that way are named as such.
    """
    if not old:
        return ["the cache records no fingerprint (an older hv-tune wrote it): checking every file"]
    out: list[str] = []
    om, nm = old.get("model", {}), new["model"]
    for k in nm:
        if om.get(k) != nm[k]:
            if k == "conditions":
                out.append(f"condition fields {om.get(k)} -> {nm[k]}: the first-frame conditions are re-encoded")
                continue
            what = "encoder files changed" if k == "encoders" else f"model.{k}: {om.get(k)!r} -> {nm[k]!r}"
            out.append(f"{what}: everything is re-encoded (latents and text)")
    od, nd = old.get("data", {}), new["data"]
    for k in nd:
        if od.get(k) != nd[k]:
            effect = ("latents are re-encoded" if k in LATENT_SETTINGS else
                      "text embeddings are re-encoded" if k in TEXT_SETTINGS else "the index is rewritten")
            if new["sources"] and all(s.get(k) is not None for s in new["sources"]):
                effect = "no effect: every source sets its own"
            out.append(f"data.{k}: {od.get(k)!r} -> {nd[k]!r}: {effect}")
    out += _source_changes(old.get("sources"), new["sources"])
    out += _file_changes(old.get("files", {}), new["files"], not_accepted or {})
    return out


def _source_changes(old: list[dict] | None, new: list[dict]) -> list[str]:
    """Per-source setting changes, each naming its source and what it re-encodes (only that source's
    items: cache files are content-addressed); a changed list of sources as a whole otherwise."""
    if old == new:
        return []
    same_list = old is not None and [(o.get("source"), o.get("path")) for o in old] == [
        (n.get("source"), n.get("path")) for n in new]
    if not same_list:
        return [f"data.sources changed ({old} -> {new}): items are re-planned"]
    out = []
    for o, n in zip(old, new):
        for k in n:
            if o.get(k) != n[k]:
                effect = ("its latents are re-encoded" if k in LATENT_SETTINGS else
                          "its text embeddings are re-encoded" if k in TEXT_SETTINGS else "the index is rewritten")
                out.append(f"data.sources changed: {n['source']} {k}: {o.get(k)!r} -> {n[k]!r}: {effect} "
                           "(that source's items only)")
    return out


def _names(paths: list[str]) -> str:
    """File names, or the clip ids of manifest clips (``path#id``); five at most."""
    shown = ", ".join(p.rsplit("#", 1)[1] if "#" in p else Path(p).name for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _file_changes(old: dict[str, list], new: dict[str, list], not_accepted: dict[str, str]) -> list[str]:
    added = [p for p in new if p not in old]
    left = {}
    for p in old:
        if p not in new and p in not_accepted:
            left.setdefault(not_accepted[p], []).append(p)
    removed = [p for p in old if p not in new and p not in not_accepted]
    changed = [p for p in new if p in old and old[p][:2] != new[p][:2]]
    recaptioned = [p for p in new if p in old and old[p][:2] == new[p][:2] and old[p][2] != new[p][2]]
    out = []
    if added:
        out.append(f"{len(added)} new source file(s) ({_names(added)}): encoded")
    for status, clips in sorted(left.items()):
        out.append(f"{len(clips)} clip(s) left the manifest as {status} (e.g. by `curation filter`: "
                   f"{_names(clips)}): dropped from the index")
    if removed:
        what = "clip(s) no longer in the manifest" if all("#" in p for p in removed) else "source file(s) gone"
        out.append(f"{len(removed)} {what} ({_names(removed)}): dropped from the index")
    if changed:
        out.append(f"{len(changed)} source file(s) changed on disk (size or mtime: {_names(changed)}): "
                   "their latents are re-encoded")
    if recaptioned:
        out.append(f"captions of {len(recaptioned)} file(s) changed ({_names(recaptioned)}): their text is re-encoded")
    return out


def stale_reasons(
    cfg: Config, spec_name: str, transformer_subfolder: str, old: dict[str, Any] | None, conditions: tuple[str, ...] = ()
) -> list[str]:
    """Why the cache with stored fingerprint ``old`` no longer matches ``cfg`` (empty: it matches).

    Without ``data.sources`` the cache cannot be rebuilt; only its model is compared then.
    """
    from hv_tune.data.sources import scan_sources

    if not cfg.data.sources:
        if old and old.get("model") != model_fingerprint(cfg, spec_name, transformer_subfolder, conditions):
            return [f"the cache was encoded with model {old['model'].get('path')}, not {cfg.model.path}"]
        return []
    scan = scan_sources(cfg.data)
    new = cache_fingerprint(cfg, spec_name, transformer_subfolder, scan, conditions)
    return fingerprint_changes(old, new, scan.not_accepted)
