"""The versioned curation manifest (hv_tune.data.manifest): written with its version in every row,
checked on read (an unknown version is an error naming file, line and version), recognised by
its name or its version mark, never by sniffing other keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hv_tune.config import SourceConfig
from hv_tune.data.manifest import (
    MANIFEST_FIELDS,
    MANIFEST_VERSION,
    ManifestVersionError,
    is_manifest,
    read_manifest,
    write_manifest,
)
from hv_tune.data.sources import scan_sources, source_type
from hv_tune.errors import DataError

from .conftest import REPO, cache_config


def record(clip, **kw):
    return {"id": "a-000000-000008", "source": str(clip), "kind": "video", "start_frame": 0, "end_frame": 8,
            "status": "accepted", "reasons": [], "scores": {"motion": 0.1}, "metrics": {}, "caption": "kept",
            "caption_source": "model", **kw}


def test_every_row_carries_the_version_and_reads_back(tmp_path, demo_folder):
    clip = demo_folder / "clip001.mp4"
    write_manifest(tmp_path, [record(clip), record(clip, id="b", status="rejected", decided_by="human")])
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [list(r) for r in lines] == [list(MANIFEST_FIELDS)] * 2
    assert [r["manifest_version"] for r in lines] == [MANIFEST_VERSION] * 2 == [2, 2]
    assert [r["decided_by"] for r in read_manifest(tmp_path)] == ["thresholds", "human"]


@pytest.mark.parametrize("version", [3, 99, "2", None, True, 1.5])
def test_an_unknown_version_names_file_line_and_version(tmp_path, demo_folder, tiny_model, version):
    clip = demo_folder / "clip001.mp4"
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record(clip, manifest_version=2)) + "\n\n"
                    + json.dumps(record(clip, id="b", manifest_version=version)) + "\n")
    with pytest.raises(ManifestVersionError, match=rf"manifest.jsonl:3: manifest_version {version!r} is not one "):
        read_manifest(path)
    cfg = cache_config(tiny_model, path, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"{path}:3: manifest_version {version!r} .*update hv-tune"):
        scan_sources(cfg.data)


def test_a_version_1_row_reads_as_decided_by_thresholds(tmp_path, demo_folder):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record(demo_folder / "clip001.mp4")) + "\n")  # written before the version was stored
    (row,) = read_manifest(path)
    assert (row["manifest_version"], row["decided_by"]) == (MANIFEST_VERSION, "thresholds")


def test_recognised_by_its_version_mark_not_by_other_keys(tmp_path, demo_folder):
    clip = demo_folder / "clip001.mp4"
    marked, unmarked = tmp_path / "curated.jsonl", tmp_path / "musubi.jsonl"
    marked.write_text(json.dumps(record(clip, manifest_version=2)) + "\n")
    # a musubi list that happens to carry 'status' and 'start_frame' is not a manifest
    unmarked.write_text(json.dumps({"video_path": str(clip), "caption": "x", "status": "accepted",
                                    "start_frame": 0}) + "\n")
    assert (is_manifest(marked), is_manifest(unmarked)) == (True, False)
    assert source_type(SourceConfig(path=str(marked))) == "manifest"
    assert source_type(SourceConfig(path=str(unmarked))) == "jsonl"
    assert source_type(SourceConfig(path=str(tmp_path / "manifest.jsonl"))) == "manifest"  # by name (v1 files too)


def test_cli_prints_the_version_error_in_one_line(tmp_path, demo_folder, tiny_model):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(record(demo_folder / "clip001.mp4", manifest_version=7)) + "\n")
    config = tmp_path / "cache.yaml"
    config.write_text(f"model: {{path: {tiny_model}}}\ndata:\n  cache_dir: {tmp_path / 'cache'}\n"
                      f"  sources: [{{path: {path}}}]\n  frame_buckets: [1, 5]\n  resolution: 32\n")
    p = subprocess.run([sys.executable, str(REPO / "finetune.py"), "cache", "--config", str(config)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert f"{path}:1: manifest_version 7 is not one this hv-tune reads" in p.stderr
