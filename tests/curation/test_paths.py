"""Paths: a config's paths are relative to the config file, stored absolute; manifest sources are
resolved; a missing aesthetic head names where to get it."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from curation.cli import main
from curation.config import AESTHETIC_FILE, load_config
from curation.errors import ConfigError
from curation.pipeline import run
from curation.samples import moving_shape, write_video
from hv_tune.data.manifest import read_manifest

from .conftest import REPO, TINY_CONFIG


@pytest.fixture
def own_config(tmp_path, tiny_models):
    """A copy of the tiny config in its own folder, naming its models relative to itself."""
    folder = tmp_path / "project"
    shutil.copytree(tiny_models["clip"].parent, folder / "models")
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["clip"].update(model="local-dir:../models/clip", aesthetic_head="../models/aesthetic.pth")
    raw["caption"].update(model="../models/vlm", enabled=False)
    path = folder / "conf" / "curation.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_paths_are_relative_to_the_config_file_and_stored_absolute(tmp_path, own_config, monkeypatch, capsys):
    models = (tmp_path / "project" / "models").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the repository nor the config's folder
    cfg = load_config(own_config)
    assert cfg.clip.model == f"local-dir:{models / 'clip'}"
    assert cfg.clip.aesthetic_head == str(models / "aesthetic.pth") and cfg.caption.model == str(models / "vlm")

    write_video(tmp_path / "videos" / "trip.mp4", moving_shape(36, 64, 96, texture_seed=3), fps=12)
    assert main(["run", "../videos", "--out", "../out", "--config", os.path.relpath(own_config)]) == 0
    stored = yaml.safe_load((tmp_path / "out" / "state" / "config.yaml").read_text())
    assert stored["clip"]["model"] == f"local-dir:{models / 'clip'}"
    assert stored["clip"]["aesthetic_head"] == str(models / "aesthetic.pth")
    assert stored["caption"]["model"] == str(models / "vlm")
    monkeypatch.chdir(tmp_path / "out" / "state")  # `filter` reloads the stored config from anywhere
    assert main(["filter", str(tmp_path / "out"), "filters.motion_min=0.5"]) == 0
    assert "accepted" in capsys.readouterr().out


def test_override_paths_are_relative_to_the_working_directory(tmp_path, own_config, monkeypatch):
    monkeypatch.chdir(tmp_path / "project")
    cfg = load_config(own_config, ["clip.aesthetic_head=models/aesthetic.pth", "caption.model=models/vlm"])
    assert cfg.clip.aesthetic_head == str((tmp_path / "project" / "models" / "aesthetic.pth").resolve())
    assert cfg.caption.model == str((tmp_path / "project" / "models" / "vlm").resolve())


def test_hub_ids_and_tags_are_not_paths(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "curation.yaml", [f"clip.aesthetic_head={tiny_models['aesthetic']}"])
    assert (cfg.clip.model, cfg.clip.pretrained) == ("ViT-L-14", "openai")
    assert cfg.caption.model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_shipped_tiny_config_names_the_repositorys_models_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = REPO / "runs" / "tiny-models" / "clip"
    if expected.exists():
        assert load_config(TINY_CONFIG).clip.model == f"local-dir:{expected}"
    else:  # the error names the folder next to the repository's configs/, not one under the cwd
        with pytest.raises(ConfigError, match=f"'clip.model': '{expected}' does not exist"):
            load_config(TINY_CONFIG)


def test_manifest_source_is_resolved(tmp_path, tiny_config, monkeypatch):
    clone, videos = tmp_path / "clone", tmp_path / "myvids"
    clone.mkdir()
    write_video(videos / "x.mp4", moving_shape(36, 64, 96, texture_seed=5), fps=12)
    cfg = tiny_config("caption.enabled=false")
    run(cfg, clone / ".." / "myvids", tmp_path / "out")  # as in `<clone>/../myvids`
    monkeypatch.chdir(clone)
    run(cfg, "../myvids", tmp_path / "out2")  # relative to the working directory
    for out in ("out", "out2"):
        (row,) = read_manifest(tmp_path / out)
        assert row["source"] == str((videos / "x.mp4").resolve())


@pytest.mark.parametrize("where", ["shipped", "own folder"])
def test_missing_aesthetic_head_names_its_source_and_the_fetch_command(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    if where == "shipped":
        path, overrides = REPO / "models" / AESTHETIC_FILE, []
        if path.exists():
            pytest.skip(f"{path} is there")
    else:
        path, overrides = tmp_path / "heads" / "laion.pth", ["clip.aesthetic_head=heads/laion.pth"]
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "curation.yaml", overrides)
    msg = str(err.value)
    assert f"'clip.aesthetic_head': '{path}' does not exist" in msg
    assert "https://github.com/christophschuhmann/improved-aesthetic-predictor" in msg
    assert (f"wget -O '{path}' 'https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            f"{AESTHETIC_FILE}'") in msg
    assert f"hf download camenduru/improved-aesthetic-predictor '{AESTHETIC_FILE}' --local-dir '{path.parent}'" in msg


def test_shipped_config_comment_names_the_heads_source():
    text = (REPO / "configs" / "curation.yaml").read_text()
    assert "https://github.com/christophschuhmann/improved-aesthetic-predictor" in text
    assert "camenduru/improved-aesthetic-predictor" in text and "wget -P models '" in text
