"""The one caption rule (hv_tune.media.apply_caption_rule) in the cache's sources and previews."""

from __future__ import annotations

import json
import shutil

import pytest

from hv_tune.config import SourceConfig
from hv_tune.data.cache import read_index
from hv_tune.data.encode import build_cache
from hv_tune.data.sources import scan_sources
from hv_tune.media import apply_caption_rule
from hv_tune.training.validation import preview_prompts

from .conftest import cache_config


@pytest.mark.parametrize("value, trigger, per_line, captions, edits", [
    ("sks, a bike race in sks style", "sks", False, ["sks, a bike race in sks style"], []),
    ("a bike race in sks style", "sks", False, ["sks, a bike race in sks style"], ["prefixed"]),
    ("sksboard trick", "sks", False, ["sks, sksboard trick"], ["prefixed"]),  # a longer word is not the trigger
    ("[trigger] rides a bike", "sks", False, ["sks rides a bike"], ["placeholder"]),
    ("[Trigger], a dog", "", False, ["a dog"], ["placeholder"]),  # no trigger word: the placeholder goes
    ("A cat.\n\nIt runs.\r\nFast\x1b\x00", "", False, ["A cat. It runs. Fast"], ["cleaned", "joined"]),
    ("one\ntwo\n", "ohwx", True, ["ohwx, one", "ohwx, two"], ["prefixed", "split"]),
    (["x", "ohwx y"], "ohwx", False, ["ohwx, x", "ohwx y"], ["prefixed"]),  # a list: alternatives
    ("tab\there\u200bzero\u200dwidth", "", False, ["tab herezero\u200dwidth"], ["cleaned"]),
])
def test_caption_rule_examples_and_idempotent(value, trigger, per_line, captions, edits):
    got, done = apply_caption_rule(value, trigger, per_line)
    assert (got, done) == (captions, edits)
    assert apply_caption_rule(got, trigger, per_line) == (captions, [])  # its own output is left alone


def _folder(root, demo_folder):
    """Videos with captions of every kind the rule handles (copies of one demo clip)."""
    root.mkdir()
    captions = {
        "upper.TXT": "a bike race seen from the side",
        "twice.txt": "sks, a bike race in sks style",
        "paragraphs.txt": "A rider climbs a hill.\n\nThe camera follows her from behind.\n",
        "placeholder.txt": "[trigger] riding\x1b a bike\x00",
    }
    for name, text in captions.items():
        shutil.copy(demo_folder / "clip001.mp4", root / (name.split(".")[0] + ".mp4"))
        (root / name).write_bytes(text.encode("utf-8"))
    return root


def test_folder_captions_follow_the_rule(tiny_model, tmp_path, demo_folder):
    folder = _folder(tmp_path / "v", demo_folder)
    scan = scan_sources(cache_config(tiny_model, folder, tmp_path / "c", "data.trigger_word=sks").data)
    assert not scan.skipped  # clip.TXT is the caption of clip.mp4, not a skipped file
    got = {m.path.stem: m.captions for m in scan.items}
    assert got == {"upper": ["sks, a bike race seen from the side"],
                   "twice": ["sks, a bike race in sks style"],
                   "paragraphs": ["sks, A rider climbs a hill. The camera follows her from behind."],
                   "placeholder": ["sks riding a bike"]}
    assert dict(scan.caption_edits) == {"prefixed": 2, "joined": 1, "placeholder": 1, "cleaned": 1}
    # a source that asks for one caption per line gets them as alternatives (the former default)
    split = cache_config(tiny_model, folder, tmp_path / "c", "data.trigger_word=sks")
    split.data.sources = [SourceConfig(path=str(folder), caption_lines="split")]
    items = {m.path.stem: m.captions for m in scan_sources(split.data).items}
    assert items["paragraphs"] == ["sks, A rider climbs a hill.", "sks, The camera follows her from behind."]


def test_jsonl_csv_and_manifest_captions_follow_the_rule(tiny_model, tmp_path, demo_folder):
    clip = demo_folder / "clip001.mp4"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "source": str(clip), "start_frame": 0, "end_frame": 8,
                                    "status": "accepted", "caption": "ohwx, a red circle"}) + "\n")
    musubi = tmp_path / "musubi.jsonl"
    musubi.write_text(json.dumps({"video_path": str(clip), "caption": "line one\nline two"}) + "\n")
    table = tmp_path / "ft.csv"
    table.write_text(f'path,caption\n{clip},"a photo of [trigger]"\n')
    cfg = cache_config(tiny_model, demo_folder, tmp_path / "c", "data.trigger_word=ohwx")
    cfg.data.sources = [SourceConfig(path=str(p)) for p in (manifest, musubi, table)]
    scan = scan_sources(cfg.data)
    assert [m.captions for m in scan.items] == [["ohwx, a red circle"], ["ohwx, line one line two"],
                                                ["ohwx, a photo of ohwx"]]


def test_validation_prompts_replace_the_placeholder(tiny_model, tmp_path, demo_folder):
    cfg = cache_config(tiny_model, demo_folder, tmp_path / "c", "data.trigger_word=sks",
                       'validation.prompts=["[trigger] on a bike", "a plain prompt"]')
    assert preview_prompts(cfg) == ["sks on a bike", "a plain prompt"]


def test_rule_change_rebuilds_only_the_text(spec, tiny_model, tmp_path, demo_folder):
    folder = tmp_path / "clips"
    shutil.copytree(demo_folder, folder)
    (folder / "clip003.txt").write_text("a new caption\nand a second one\n")
    cache = tmp_path / "cache"
    split = cache_config(tiny_model, folder, cache, "data.caption_lines=split")
    first = build_cache(spec, split, "cpu")
    entry = next(e for e in read_index(cache) if e.id.startswith("clip003"))
    assert entry.captions == ["a new caption", "and a second one"] and "1 split into one caption" in first.table()
    joined = build_cache(spec, cache_config(tiny_model, folder, cache), "cpu")  # the default: one caption
    assert (joined.latents_encoded, joined.texts_encoded) == (0, 1)
    assert any("data.caption_lines: 'split' -> 'join': text embeddings are re-encoded" in c for c in joined.changes)
    assert any("captions of 1 file(s) changed (clip003.mp4)" in c for c in joined.changes)
    assert "captions: 1 joined from several lines" in joined.table()
    entry = next(e for e in read_index(cache) if e.id.startswith("clip003"))
    assert entry.captions == ["a new caption and a second one"] and len(entry.caption_files["text"]) == 1
