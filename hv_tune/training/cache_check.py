"""Before training: make sure the cache matches the config, rebuilding what a change invalidates."""

from __future__ import annotations

from pathlib import Path

from hv_tune.config import Config
from hv_tune.data.cache import (
    CACHE_VERSION,
    INDEX_FILE,
    broken_files,
    describe_broken,
    read_header,
    read_index,
)
from hv_tune.data.encode import build_cache, i2v_stills_note
from hv_tune.data.fingerprint import stale_reasons
from hv_tune.errors import DataError
from hv_tune.models import ModelSpec
from hv_tune.models.base import condition_fields

FIX = "`finetune.py cache --config YOUR_CONFIG`"


def prepare_cache(spec: ModelSpec, cfg: Config, device: str) -> None:
    """Build the cache when it is missing, stale (fingerprint) or has broken files (main process only).

    Raises:
        DataError: broken cache files that cannot be re-encoded (no source), naming the item,
            the file, the source and the command that fixes it.
    """
    root = Path(cfg.data.cache_dir)
    head = read_header(root)
    if head is None:
        if cfg.data.sources:
            print(f"no cache at {root}: running the cache step first")
            print(build_cache(spec, cfg, device).table())
        return  # without sources, reading the index names the problem
    reasons = stale_reasons(cfg, spec.name, spec.transformer_subfolder, head.get("fingerprint"), condition_fields(spec))
    if head.get("cache_version") != CACHE_VERSION:  # reading the index names the rebuild when there are no sources
        reasons.insert(0, f"cache format {head.get('cache_version')} -> {CACHE_VERSION} (one folder per item encoder)")
    if not cfg.data.sources:
        for r in reasons:
            print(f"warning: cache {root}: {r} (no data.sources to rebuild it from)")
        reasons = []
    reasons += _repairable(root, cfg)
    if reasons:
        print(f"the cache at {root} is out of date; rebuilding (files whose inputs did not change are reused):")
        print("\n".join(f"  {r}" for r in reasons))
        print(build_cache(spec, cfg, device).table())
    else:
        _note_i2v_stills(spec, root)


def _note_i2v_stills(spec: ModelSpec, root: Path) -> None:
    """Repeat the cache summary's note on image-to-video stills when a cache is used as it is."""
    try:
        entries = read_index(root)
    except DataError:
        return
    conditions = {enc.name for enc in spec.item_encoders if enc.role == "condition"}
    stills = sum(1 for e in entries if conditions & set(e.files) and e.frames == 1)
    if stills:
        print(f"note: cache {root}: {i2v_stills_note(stills, len(entries))}")


def _repairable(root: Path, cfg: Config) -> list[str]:
    """Broken files whose source is there to re-encode them; raises for the others."""
    try:
        entries = read_index(root)
    except DataError:
        return []  # empty or malformed: rebuilt or reported elsewhere
    broken = broken_files(root, entries)
    lost = [b for b in broken if not cfg.data.sources or not b[0].source or not Path(b[0].source).is_file()]
    if lost:
        listing = "; ".join(describe_broken(root, *b) for b in lost)
        raise DataError(
            f"{listing}. The source is not available to re-encode it: restore it (listed in data.sources) and run "
            f"{FIX}, or delete {root / INDEX_FILE} and rebuild the cache from the sources you have"
        )
    return [describe_broken(root, *b) + ": re-encoding it" for b in broken]
