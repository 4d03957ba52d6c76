"""The cache stage: sources, frame selection, re-runs, bad input, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hv_tune.data.cache import read_index
from hv_tune.data.encode import build_cache, encode_items, load_pixels
from hv_tune.data.plan import model_identity, plan_items
from hv_tune.data.sources import scan_sources
from hv_tune.media.writer import frame_times, write_h264
from hv_tune.models import LoadOptions, get_spec

from .conftest import REPO, cache_config


def write_index_video(path: Path, n: int, fps: int, step: int = 6, size=(32, 48)) -> None:
    """A video whose frame i is uniformly grey at level i * step (lossless H.264, the project's writer)."""
    frames = np.stack([np.full((*size, 3), i * step, np.uint8) for i in range(n)])
    write_h264(path, [frames], frame_times(n, fps), crf=None, preset=None, options={"qp": "0"})


def _plan(tiny_model, folder, cache, *extra):
    cfg = cache_config(tiny_model, folder, cache, *extra)
    scan = scan_sources(cfg.data)
    return cfg, scan, plan_items(scan, cfg.data, model_identity(str(tiny_model)), get_spec(cfg.model.name).video)


RESAMPLED_30_TO_24 = [int(j * 1.25 + 1e-9) for j in range(32)]  # floor(j * 30 / 24)


@pytest.mark.parametrize("mode, samples, starts", [("head", 1, [0]), ("chunks", 1, [0, 9, 18]),
                                                   ("uniform", 3, [0, 12, 23])])
def test_frame_selection_after_fps_resampling(tiny_model, tmp_path, mode, samples, starts):
    folder = tmp_path / "v"
    folder.mkdir()
    write_index_video(folder / "count.mp4", 40, fps=30)
    (folder / "count.txt").write_text("a grey frame")
    _, scan, planned = _plan(tiny_model, folder, tmp_path / "c", "data.frame_buckets=[5,9]",
                             f"data.frame_extraction={mode}", f"data.frame_samples={samples}")
    assert not scan.skipped
    assert [p.frames for p in planned] == [9] * len(starts)
    for item, start in zip(planned, starts):
        expected = RESAMPLED_30_TO_24[start : start + 9]
        assert item.indices == expected
        pixels = load_pixels(item)  # [3, F, H, W] in [-1, 1]
        levels = ((pixels[0, :, 8, 8] + 1) * 127.5 / 6).round().long().tolist()
        assert levels == expected  # the decoded frames really are those source frames


def test_manifest_jsonl_and_csv_sources(tiny_model, tmp_path, demo_folder):
    clip = demo_folder / "clip001.mp4"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "source": str(clip), "start_frame": 2, "end_frame": 8, "status": "accepted", "caption": "kept"},
        {"id": "b", "source": str(clip), "start_frame": 0, "end_frame": 8, "status": "rejected", "caption": "no"},
    ]))
    musubi = tmp_path / "musubi.jsonl"
    musubi.write_text(json.dumps({"video_path": str(clip), "caption": "from musubi"}) + "\n"
                      + json.dumps({"image_path": str(demo_folder / "still.png"), "caption": "an image"}) + "\n")
    table = tmp_path / "ft.csv"
    table.write_text(f"path,caption\n{clip},from csv\n")
    cfg = cache_config(tiny_model, demo_folder, tmp_path / "c")
    from hv_tune.config import SourceConfig

    cfg.data.sources = [SourceConfig(path=str(manifest), repeats=3, trigger_word="sks"),
                        SourceConfig(path=str(musubi)), SourceConfig(path=str(table))]
    scan = scan_sources(cfg.data)
    assert [m.captions for m in scan.items] == [["sks, kept"], ["from musubi"], ["an image"], ["from csv"]]
    assert scan.items[0].span == (2, 8) and scan.items[0].settings.repeats == 3
    planned = plan_items(scan, cfg.data, "m", get_spec(cfg.model.name).video)
    assert planned[0].indices == [2, 3, 4, 5, 6]  # within the manifest span
    assert [p.template for p in planned] == ["video", "video", "image", "video"]


def test_lists_written_on_windows_resolve_or_say_why(tiny_model, tmp_path, demo_folder):
    """musubi .jsonl, finetrainers .csv and curation manifests with '\' separators: a relative path is read with '/'
    when the literal name does not exist (a literal name with '\' still wins); a drive-letter or UNC path, or a
    relative one that is missing either way, is skipped at its line with the reason (not "file vanished")."""
    import shutil

    from hv_tune.config import SourceConfig

    root = tmp_path / "lists"
    (root / "videos").mkdir(parents=True)
    (root / "stills").mkdir()
    shutil.copy(demo_folder / "clip001.mp4", root / "videos" / "bunny.mp4")
    shutil.copy(demo_folder / "still.png", root / "stills" / "cat.png")
    shutil.copy(demo_folder / "clip002.mp4", root / "both\\x.mp4")  # a POSIX name holding a backslash
    (root / "both").mkdir()
    shutil.copy(demo_folder / "clip003.mp4", root / "both" / "x.mp4")
    musubi = root / "musubi.jsonl"
    musubi.write_text("\n".join(json.dumps(r) for r in [
        {"video_path": "videos\\bunny.mp4", "caption": "relative"},
        {"image_path": "stills\\cat.png", "caption": "an image"},
        {"video_path": "both\\x.mp4", "caption": "literal"},
        {"video_path": "C:\\data\\videos\\bunny.mp4", "caption": "drive"},
        {"video_path": "\\\\nas\\clips\\bunny.mp4", "caption": "unc"},
        {"video_path": "videos\\gone.mp4", "caption": "missing"},
        {"video_path": "videos/gone.mp4", "caption": "missing, posix"},
    ]) + "\n")
    table = root / "ft.csv"
    table.write_text("path,caption\nvideos\\bunny.mp4,from csv\nD:\\videos\\bunny.mp4,drive\n")
    manifest = root / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "source": "videos\\bunny.mp4", "start_frame": 0, "end_frame": 8,
                                    "status": "accepted", "caption": "manifest"}) + "\n")
    cfg = cache_config(tiny_model, demo_folder, tmp_path / "c")
    cfg.data.sources = [SourceConfig(path=str(f)) for f in (musubi, table, manifest)]
    scan = scan_sources(cfg.data)
    assert [(m.path, m.captions) for m in scan.items] == [
        (root / "videos" / "bunny.mp4", ["relative"]), (root / "stills" / "cat.png", ["an image"]),
        (root / "both\\x.mp4", ["literal"]), (root / "videos" / "bunny.mp4", ["from csv"]),
        (root / "videos" / "bunny.mp4", ["manifest"])]
    skipped = {s.path: s.reason for s in scan.skipped}
    assert set(skipped) == {f"{musubi}:4", f"{musubi}:5", f"{musubi}:6", f"{musubi}:7", f"{table}:3"}
    assert "'C:\\data\\videos\\bunny.mp4' is a Windows path (starts with C:)" in skipped[f"{musubi}:4"]
    assert "Windows path (starts with \\\\nas)" in skipped[f"{musubi}:5"]
    assert "'D:\\videos\\bunny.mp4' is a Windows path (starts with D:)" in skipped[f"{table}:3"]
    assert "uses Windows separators" in skipped[f"{musubi}:6"] and "'videos/gone.mp4'" in skipped[f"{musubi}:6"]
    assert skipped[f"{musubi}:7"] == f"file not found: {root / 'videos' / 'gone.mp4'}"
    assert all("relative to the folder of" in skipped[k] for k in skipped if k != f"{musubi}:7")
    planned = plan_items(scan, cfg.data, "m", get_spec(cfg.model.name).video)
    assert [p.frames for p in planned] == [5, 1, 5, 5, 5]  # the converted paths decode


def test_kept_fraction_of_the_centre_crop():
    """An 8:1 panorama (512x4096) at 512 px goes to the widest bucket (2.29:1) and keeps ~29 % of its picture."""
    from hv_tune.data.buckets import choose_bucket, kept_fraction, resolution_buckets

    buckets = resolution_buckets(512, 16)
    bucket = choose_bucket(512, 4096, buckets, 16)
    widest = max(w / h for h, w in buckets)  # 768 / 336 = 2.29: sides are multiples of 16 near 512^2 in area
    assert bucket[1] / bucket[0] == widest
    assert kept_fraction(512, 4096, bucket) == pytest.approx(widest / 8, rel=0.01)  # 0.29
    assert kept_fraction(4096, 512, bucket[::-1]) == pytest.approx(kept_fraction(512, 4096, bucket))  # 1:8
    assert kept_fraction(480, 848, choose_bucket(480, 848, buckets, 16)) > 0.95  # 16:9 has a bucket near it


def test_summary_lists_sources_that_lost_most_of_their_picture(spec, tiny_model, tmp_path, capsys):
    """At 32 px the only bucket is 32x32: an 8:1 image keeps 12.5 % of its area, 2:1 keeps 50 %, a 2:3 video
    67 %; 4:3 (75 %) and square ones stay off the list. Table and summary.json list path and fraction."""
    from hv_tune.cli import main

    folder = tmp_path / "crops"
    folder.mkdir()
    for name, (h, w) in {"pano": (32, 256), "wide": (32, 64), "photo": (48, 64), "square": (32, 32)}.items():
        Image.new("RGB", (w, h), "red").save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(name)
    write_index_video(folder / "tall.mp4", 8, fps=24, size=(48, 32))
    (folder / "tall.txt").write_text("tall")
    cache = tmp_path / "cache"
    assert main(["cache", "--config", str(REPO / "configs" / "demo_tiny.yaml"), f"model.path={tiny_model}",
                 f"data.cache_dir={cache}", f"data.sources=[{{path: {folder}}}]", "data.frame_buckets=[1,5]",
                 "data.resolution=32"]) == 0
    out = capsys.readouterr().out
    cropped = json.loads((cache / "summary.json").read_text())["cropped"]
    assert [(Path(c["path"]).name, c["kept"]) for c in cropped] == [
        ("pano.png", 0.125), ("wide.png", 0.5), ("tall.mp4", pytest.approx(0.667, abs=1e-3))]
    assert cropped[0]["source"] == "32x256" and cropped[0]["bucket"] == "32x32"
    assert "centre crop keeps under 70% of the picture (3 sources" in out
    assert f"{folder / 'pano.png'}: 12% of the area kept (32x256 -> bucket 32x32" in out
    assert "photo.png" not in out and "square.png" not in out


def test_rerun_reuses_everything_and_caption_change_reencodes_only_text(spec, tiny_model, tmp_path, demo_folder):
    import shutil

    folder = tmp_path / "clips"
    shutil.copytree(demo_folder, folder)
    cache = tmp_path / "cache"
    first = build_cache(spec, cache_config(tiny_model, folder, cache), "cpu")
    assert (first.latents_encoded, first.latents_reused) == (7, 0)
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}
    again = build_cache(spec, cache_config(tiny_model, folder, cache), "cpu")
    assert (again.latents_encoded, again.texts_encoded) == (0, 0)
    assert again.latents_reused == 7
    (folder / "clip003.txt").write_text("a new caption\nand a second one\n")
    third = build_cache(spec, cache_config(tiny_model, folder, cache), "cpu")
    assert (third.latents_encoded, third.texts_encoded) == (0, 1)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing rewritten
    entry = next(e for e in read_index(cache) if e.id.startswith("clip003"))
    assert entry.captions == ["a new caption and a second one"] and len(entry.caption_files["text"]) == 1  # one caption per file


def _bad_folder(root: Path, good: Path) -> Path:
    root.mkdir()
    import shutil

    for name in ("clip000.mp4", "clip000.txt", "clip001.mp4"):
        shutil.copy(good / name, root / name)
    (root / "zero.mp4").write_bytes(b"")
    (root / "zero.txt").write_text("zero")
    data = (good / "clip002.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "truncated.txt").write_text("truncated")
    (root / "notes.mp4").write_text("this is a text file named .mp4")
    (root / "notes.txt").write_text("text")
    rgb = np.asarray(Image.open(good / "still.png").convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(root / "alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "deep.png")  # 16-bit grey
    for name, text in [("cmyk", "caf\xe9 in cmyk"), ("alpha", "with alpha")]:
        (root / f"{name}.txt").write_bytes(text.encode("cp1252"))
    (root / "deep.txt").write_bytes("sixteen bit ☃".encode("utf-16"))
    (root / "readme.md").write_text("not media")
    (root / "orphan.txt").write_text("a caption whose clip was deleted")
    return root


@pytest.mark.parametrize("policy, kept", [("error", 4), ("empty", 5), ("filename", 5)])
def test_bad_inputs_are_reported_and_the_run_goes_on(spec, tiny_model, tmp_path, demo_folder, policy, kept):
    folder = _bad_folder(tmp_path / "bad", demo_folder)  # clip001 has no caption
    summary = build_cache(spec, cache_config(tiny_model, folder, tmp_path / "cache",
                                             f"data.missing_caption={policy}"), "cpu")
    reasons = {Path(s.path).name: s.reason for s in summary.skipped}
    assert "zero-byte" in reasons["zero.mp4"]
    assert "unreadable" in reasons["notes.mp4"]
    assert "truncated.mp4" in reasons  # either unreadable or too few frames
    assert ("clip001.mp4" in reasons) == (policy == "error")
    assert "unsupported extension '.md'" in reasons["readme.md"]  # every walked file is used or reported
    assert "no video or image" in reasons["orphan.txt"] and "cmyk.txt" not in reasons
    assert summary.items == kept, summary.table()
    entries = {e.id.split("-")[0]: e for e in read_index(tmp_path / "cache")}
    assert entries["cmyk"].captions == ["café in cmyk"] and entries["deep"].captions == ["sixteen bit ☃"]
    if policy == "filename":
        assert entries["clip001"].captions == ["clip001"]
    assert any("cp1252" in n.reason for n in summary.notes)
    for name in ("cmyk", "alpha", "deep"):
        pixels = load_pixels(next(p for p in plan_items(scan_sources(cache_config(
            tiny_model, folder, tmp_path / "c2", f"data.missing_caption={policy}").data), cache_config(
            tiny_model, folder, tmp_path / "c2").data, "m", get_spec("hunyuan-video").video) if p.media.path.stem == name))
        assert pixels.shape == (3, 1, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    text = summary.table()
    assert "zero.mp4" in text and "skipped" in text


def test_file_vanishing_mid_run_is_skipped(spec, tiny_model, tmp_path, demo_folder):
    import shutil

    from hv_tune.data.encode import CacheSummary
    from hv_tune.models import LoadOptions
    from hv_tune.models.base import EncodeSetup

    folder = tmp_path / "clips"
    shutil.copytree(demo_folder, folder)
    cfg, scan, planned = _plan(tiny_model, folder, tmp_path / "cache")
    (folder / "clip004.mp4").unlink()  # after planning, before decoding
    summary = CacheSummary()
    latents = next(enc for enc in spec.item_encoders if enc.role == "latents")
    done = encode_items(latents, EncodeSetup(LoadOptions(str(tiny_model))), tmp_path / "cache", planned, summary)
    assert len(done) == len(planned) - 1
    assert [(Path(s.path).name, s.reason) for s in summary.skipped] == [("clip004.mp4", "file vanished")]


def test_image_modes_convert_without_clipping():
    from hv_tune.data.decode import image_to_rgb

    deep = Image.fromarray(np.full((4, 4), 128 * 257, np.uint16))  # 16-bit 128/255
    assert image_to_rgb(deep)[0, 0].tolist() == [128, 128, 128]
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert image_to_rgb(rgba)[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert image_to_rgb(cmyk)[0, 0].tolist() == [255, 255, 255]


@pytest.mark.slow
def test_sigkill_mid_cache_then_rerun_encodes_only_missing(tiny_model, tmp_path):
    from hv_tune.data.cache import is_valid
    from hv_tune.data.demo import write_demo_folder
    from hv_tune.models.base import LATENT_FIELDS as LATENT_KEYS

    folder = tmp_path / "clips"
    write_demo_folder(folder, 24, 17, 64, 64)
    cache = tmp_path / "cache"
    args = [sys.executable, str(REPO / "finetune.py"), "cache", "--config", str(REPO / "configs" / "demo_tiny.yaml"),
            f"model.path={tiny_model}", f"data.cache_dir={cache}", f"data.sources=[{{path: {folder}}}]",
            "data.frame_buckets=[1,17]", "data.resolution=64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latents = cache / "latents"
    deadline = time.time() + 120
    while (not latents.is_dir() or len(list(latents.glob("*.safetensors"))) < 3) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [p for p in latents.glob("*.safetensors")]
    assert 3 <= len(before) < 25, "the cache finished before the kill"
    assert not (cache / "index.jsonl").exists()
    assert all(is_valid(p, LATENT_KEYS) for p in before)  # no corrupt file left behind
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((cache / "summary.json").read_text())
    assert summary["latents_reused"] == len(before)
    assert summary["latents_encoded"] == 25 - len(before)
    assert summary["items"] == 25


def test_train_builds_the_cache_when_missing(tiny_model, demo_folder, tmp_path):
    from hv_tune.config import load_config
    from hv_tune.training.trainer import train

    cache = tmp_path / "cache"
    cfg = load_config(None, [f"model.path={tiny_model}", f"data.cache_dir={cache}", f"output_dir={tmp_path / 'run'}",
                             f"data.sources=[{{path: {demo_folder}}}]", "data.frame_buckets=[1,5]",
                             "data.resolution=32", "training.max_steps=2", "lora.rank=4"])
    result = train(cfg)
    assert (cache / "index.jsonl").is_file() and result.lora_path.is_file()


def test_repeats_and_caption_dropout_in_the_batch_order():
    from hv_tune.data.sampler import epoch_batches

    batches = epoch_batches([(1, 16, 16)] * 2, [1, 1], 1, seed=0, epoch=0, repeats=[3, 1], caption_dropout=[0.0, 0.0])
    assert sorted(i for b in batches for i, _ in b) == [0, 0, 0, 1]
    many = epoch_batches([(1, 16, 16)] * 1000, [2] * 1000, 10, seed=1, epoch=0, caption_dropout=[0.3] * 1000)
    caps = [c for b in many for _, c in b]
    assert abs(caps.count(-1) / len(caps) - 0.3) < 0.05
    assert set(caps) == {-1, 0, 1}


def test_dataset_serves_the_empty_prompt_for_dropout(demo_cache):
    from hv_tune.data.cache import CachedDataset

    ds = CachedDataset(demo_cache)
    normal, dropped = ds[(0, 0)], ds[(0, -1)]
    assert torch.equal(normal["latent_mean"], dropped["latent_mean"])
    assert not torch.equal(normal["prompt_embeds"], dropped["prompt_embeds"])
    assert dropped["prompt_attention_mask"].sum() == 1  # "" leaves only the template's closing <|eot_id|>


def test_clips_rejected_after_curation_filter_are_named_not_gone(spec, tiny_model, tmp_path):
    """`curation filter` rejecting clips: the cache names them as having left the manifest, not as gone files."""
    manifest = tmp_path / "curated" / "manifest.jsonl"
    manifest.parent.mkdir()
    long, short = tmp_path / "long.mp4", tmp_path / "short.mp4"
    write_index_video(long, 12, fps=24, size=(32, 32))
    write_index_video(short, 6, fps=24, size=(32, 32))
    recs = [{"id": "long-aaaa-000000-000006", "source": str(long), "start_frame": 0, "end_frame": 6, "caption": "one"},
            {"id": "long-aaaa-000006-000012", "source": str(long), "start_frame": 6, "end_frame": 12, "caption": "two"},
            {"id": "short-bbbb-000000-000006", "source": str(short), "start_frame": 0, "end_frame": 6, "caption": "all"}]

    def write(rejected: set[str]) -> None:
        manifest.write_text("".join(json.dumps({**r, "status": "rejected" if r["id"] in rejected else "accepted"})
                                    + "\n" for r in recs))

    write(set())
    cache = tmp_path / "cache"
    cfg = cache_config(tiny_model, manifest, cache)
    assert build_cache(spec, cfg, "cpu").items == 3
    write({"long-aaaa-000006-000012", "short-bbbb-000000-000006"})  # what `curation filter` writes
    again = build_cache(spec, cfg, "cpu")
    assert again.items == 1 and (again.latents_encoded, again.texts_encoded) == (0, 0)
    assert again.changes == ["2 clip(s) left the manifest as rejected (e.g. by `curation filter`: "
                             "long-aaaa-000006-000012, short-bbbb-000000-000006): dropped from the index"]
    assert "gone" not in again.table()


def test_index_changes_name_each_way_an_item_left():
    from hv_tune.data.fingerprint import fingerprint_changes

    base = {"model": {}, "data": {}, "sources": []}
    old = {**base, "files": {"/m/a.mp4#a-1": [1, 1, "c"], "/m/a.mp4#a-2": [1, 1, "c"], "/m/b.mp4#b-1": [1, 1, "c"],
                             "/f/x.mp4": [1, 1, "c"]}}
    new = {**base, "files": {"/m/a.mp4#a-1": [1, 1, "c"]}}
    assert fingerprint_changes(old, new, {"/m/a.mp4#a-2": "error"}) == [
        "1 clip(s) left the manifest as error (e.g. by `curation filter`: a-2): dropped from the index",
        "2 source file(s) gone (b-1, x.mp4): dropped from the index"]
    del old["files"]["/f/x.mp4"]
    assert fingerprint_changes(old, new, {})[-1] == "2 clip(s) no longer in the manifest (a-2, b-1): dropped from the index"


def test_old_cache_format_names_the_rebuild_and_train_rebuilds_it(spec, tiny_model, demo_folder, tmp_path, capsys):
    """A cache of format 1 (fixed latents/, text/, cond/ folders, before one group per item encoder) is
    refused with the rebuild command; with sources, the training's cache check rebuilds it and reuses the
    files whose inputs did not change (the latents and text keep their content keys)."""
    from hv_tune.data.cache import INDEX_FILE
    from hv_tune.errors import DataError
    from hv_tune.training.cache_check import prepare_cache

    cache = tmp_path / "cache"
    cfg = cache_config(tiny_model, demo_folder, cache)
    build_cache(spec, cfg, "cpu")
    lines = (cache / INDEX_FILE).read_text().splitlines()
    head = json.loads(lines[0])
    old = [json.dumps({"cache_version": 1, "fingerprint": head["fingerprint"]})]
    for line in lines[1:]:  # the format-1 entry: latent, texts, empty_text, condition
        e = json.loads(line)
        old.append(json.dumps({"id": e["id"], "latent": e["files"]["latents"], "texts": e["caption_files"]["text"],
                               "frames": e["frames"], "height": e["height"], "width": e["width"],
                               "captions": e["captions"], "empty_text": e["empty_files"]["text"], "condition": None}))
    (cache / INDEX_FILE).write_text("\n".join(old) + "\n")
    with pytest.raises(DataError, match=r"index.jsonl: the cache is in format 1, this hv-tune reads format 2 .*"
                                        r"rebuild it with `finetune.py cache --config YOUR_CONFIG`"):
        read_index(cache)
    prepare_cache(spec, cfg, "cpu")
    out = capsys.readouterr().out
    assert "cache format 1 -> 2" in out
    summary = json.loads((cache / "summary.json").read_text())
    assert (summary["latents_encoded"], summary["texts_encoded"], summary["latents_reused"]) == (0, 0, 7)
    assert len(read_index(cache)) == 7


def test_models_are_released_after_their_group_even_when_a_cycle_holds_them(spec, tiny_model):
    """The cache stage frees a group's models before the next group loads its own: by reference
    counting when nothing else holds them, by a garbage collection when a cycle does."""
    import gc

    from hv_tune.data.encode import _free, _weak_refs

    enc = spec.text.load(LoadOptions(str(tiny_model)))
    refs = _weak_refs(enc)
    assert len(refs) == len(enc) >= 1  # every text encoder's module, found through TextEncoders
    vae = spec.load_vae(LoadOptions(str(tiny_model)))
    vae.held_by = [vae]  # a reference cycle: reference counting alone never frees it
    refs += _weak_refs(vae)
    gc.disable()
    try:
        del enc, vae
        _free(refs)
    finally:
        gc.enable()
    assert [r() for r in refs] == [None] * len(refs)
