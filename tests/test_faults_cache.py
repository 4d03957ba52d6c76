"""Cache faults: stale caches are rebuilt (exactly what changed), empty caches say why, broken files are named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from hv_tune.cli import main
from hv_tune.data.cache import CachedDataset, read_index
from hv_tune.data.demo import write_demo_folder
from hv_tune.data.encode import build_cache
from hv_tune.errors import DataError

from .conftest import REPO, cache_config


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """2 clips (8 frames, 32x32) + 1 still image, with captions."""
    folder = tmp_path_factory.mktemp("small") / "clips"
    write_demo_folder(folder, 2, 8, 32, 32)
    return folder


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, spec, tiny_model, small_folder) -> Path:
    out = tmp_path_factory.mktemp("smallcache") / "cache"
    summary = build_cache(spec, cache_config(tiny_model, small_folder, out), "cpu")
    assert summary.items == 3 and not summary.skipped
    return out


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _train_cache(spec, cfg, capsys):
    """What `train` does before it trains: the cache it would read, and what it printed."""
    from hv_tune.training.setup import ensure_cache

    dataset = ensure_cache(spec, cfg, _accelerator())
    return dataset, capsys.readouterr().out


def _summary(cache: Path) -> dict:
    return json.loads((cache / "summary.json").read_text())


def test_train_rebuilds_a_stale_cache_and_says_why(spec, tiny_model, small_folder, small_cache, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    # resolution 32 -> 16: latents re-encoded at the new size, texts reused
    ds, out = _train_cache(spec, cache_config(tiny_model, small_folder, cache, "data.resolution=16"), capsys)
    assert {(e.height, e.width) for e in ds.entries} == {(16, 16)}
    assert "data.resolution: 32 -> 16: latents are re-encoded" in out
    s = _summary(cache)
    assert (s["latents_encoded"], s["latents_reused"], s["texts_encoded"]) == (3, 0, 0)
    # trigger word: only text is re-encoded, and the captions carry it
    ds, out = _train_cache(spec, cache_config(tiny_model, small_folder, cache, "data.resolution=16",
                                              "data.trigger_word=sks"), capsys)
    assert all(c.startswith("sks, ") for e in ds.entries for c in e.captions)
    assert "data.trigger_word: '' -> 'sks': text embeddings are re-encoded" in out
    s = _summary(cache)
    assert s["latents_encoded"] == 0 and s["texts_encoded"] == 3  # the 3 captions; the empty prompts are unchanged
    # repeats / caption dropout: the index only
    cfg = cache_config(tiny_model, small_folder, cache, "data.resolution=16", "data.trigger_word=sks",
                       f"data.sources=[{{path: {small_folder}, repeats: 3}}]", "data.caption_dropout=0.2")
    ds, out = _train_cache(spec, cfg, capsys)
    assert {(e.repeats, e.caption_dropout) for e in ds.entries} == {(3, 0.2)}
    assert "data.sources changed" in out and "data.caption_dropout: 0.0 -> 0.2" in out
    assert _summary(cache)["latents_encoded"] == _summary(cache)["texts_encoded"] == 0
    # unchanged: nothing rebuilt, nothing printed about the cache
    _, out = _train_cache(spec, cfg, capsys)
    assert "out of date" not in out
    # the cache verb says the same; back at 32 px the earlier latents are still there (content-addressed)
    assert main(["cache", "--config", str(REPO / "configs" / "demo_tiny.yaml"), f"model.path={tiny_model}",
                 f"data.cache_dir={cache}", f"data.sources=[{{path: {small_folder}, repeats: 3}}]",
                 "data.frame_buckets=[1,5]", "data.resolution=32", "data.trigger_word=sks",
                 "data.caption_dropout=0.2"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt because:" in out and "data.resolution: 16 -> 32: latents are re-encoded" in out
    assert "latents: 0 encoded, 3 reused" in out


def test_changed_model_or_source_file_reencodes_what_it_feeds(spec, tiny_model, small_folder, small_cache, tmp_path,
                                                              capsys):
    cache, folder = tmp_path / "cache", tmp_path / "clips"
    shutil.copytree(small_cache, cache)
    shutil.copytree(small_folder, folder)
    other_model = tmp_path / "model2"
    shutil.copytree(tiny_model, other_model)
    cfg = cache_config(other_model, folder, cache)
    _, out = _train_cache(spec, cfg, capsys)
    assert "model.path" in out and "everything is re-encoded" in out
    s = _summary(cache)
    assert (s["latents_encoded"], s["texts_encoded"]) == (3, 5)  # 3 captions + 2 empty prompts (video, image)
    clip = folder / "clip001.mp4"
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    _, out = _train_cache(spec, cfg, capsys)
    assert "1 source file(s) changed on disk" in out and "clip001.mp4" in out
    s = _summary(cache)
    assert (s["latents_encoded"], s["latents_reused"], s["texts_encoded"]) == (1, 2, 0)


def test_every_item_skipped_empties_the_cache_and_says_why(spec, tiny_model, small_cache, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video at all")
    (bad / "broken.txt").write_text("a caption")
    Image.new("RGB", (32, 32), "red").save(bad / "nocaption.png")  # fine, but no caption (missing_caption=error)
    code = main(["cache", "--config", str(REPO / "configs" / "demo_tiny.yaml"), f"model.path={tiny_model}",
                 f"data.cache_dir={cache}", f"data.sources=[{{path: {bad}}}]", "data.frame_buckets=[1,5]",
                 "data.resolution=32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "broken.mp4" in err and "nocaption.png" in err and "missing caption" in err
    with pytest.raises(DataError, match="has no items: all 2 source items were skipped.*broken.mp4"):
        read_index(cache)  # the old index is gone, not silently reused
    # train says the same (not "no data.sources to build it from")
    with pytest.raises(DataError, match="skipped.*broken.mp4") as info:
        CachedDataset(cache)
    assert "no data.sources" not in str(info.value)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_broken_cache_file_is_named_and_reencoded_from_its_source(spec, tiny_model, small_folder, small_cache,
                                                                   tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    entry = next(e for e in read_index(cache) if e.id.startswith("clip000"))
    _truncate(cache / entry.files["latents"])
    code = main(["cache", "--verify", "--config", str(REPO / "configs" / "demo_tiny.yaml"), f"model.path={tiny_model}",
                 f"data.cache_dir={cache}"])
    err = capsys.readouterr().err
    assert code == 2 and entry.id in err and entry.files["latents"] in err and "clip000.mp4" in err
    assert "finetune.py cache --config" in err
    # train without sources cannot re-encode it: named, with the fix
    with pytest.raises(DataError, match=f"item {entry.id}.*{entry.files['latents']}.*clip000.mp4.*finetune.py cache"):
        _train_cache(spec, cache_config(tiny_model, small_folder, cache, "data.sources=[]"), capsys)
    # a read during training names it the same way (no raw SafetensorError)
    with pytest.raises(DataError, match=f"item {entry.id}.*clip000.mp4"):
        CachedDataset(cache)[(read_index(cache).index(entry), 0)]
    # with the source at hand, train re-encodes it and says so
    ds, out = _train_cache(spec, cache_config(tiny_model, small_folder, cache), capsys)
    assert f"item {entry.id}" in out and "re-encoding it" in out
    assert _summary(cache)["latents_encoded"] == 1
    assert ds[(0, 0)]["latent_mean"].isfinite().all()
    assert main(["cache", "--verify", "--config", str(REPO / "configs" / "demo_tiny.yaml"),
                 f"model.path={tiny_model}", f"data.cache_dir={cache}"]) == 0
