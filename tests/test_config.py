"""Config loading, overrides and validation: bad values fail before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hv_tune.cli import main
from hv_tune.config import Config, load_config
from hv_tune.errors import ConfigError
from hv_tune.typed_config import field_docs

REPO = Path(__file__).resolve().parent.parent
# curation*.yaml are curation configs (another loader): tests/curation/test_config.py loads them
SHIPPED = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("curation"))


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"  # a model folder by its index only: loading weights would fail differently
    d.mkdir()
    (d / "model_index.json").write_text("{}")
    return d


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path, model_dir):
    cfg = load_config(path, [f"model.path={model_dir}"])
    assert isinstance(cfg, Config)
    assert cfg.training.guidance_scale == 1.0


def test_every_shipped_config_is_commented_key_by_key():
    for path in SHIPPED:
        for line in path.read_text().splitlines():
            if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_required_keys_exist_with_their_names():
    docs = field_docs(Config)
    for key in [
        "model.path", "output_dir", "lora.rank", "lora.alpha", "lora.targets", "training.max_steps",
        "training.learning_rate", "training.seed", "training.checkpoint_every", "training.guidance_scale",
    ]:
        assert key in docs and docs[key], key


def test_overrides_are_typed(model_dir):
    cfg = load_config(None, [f"model.path={model_dir}", "lora.rank=8", "lora.alpha=4", "lora.targets=[a.*]",
                             "training.learning_rate=3e-4", "data.frame_buckets=[1,33,65]"])
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets) == (8, 4.0, ["a.*"])
    assert cfg.training.learning_rate == pytest.approx(3e-4)
    assert cfg.data.frame_buckets == [1, 33, 65]


@pytest.mark.parametrize(
    "override, key",
    [
        ("lora.rank=0", "lora.rank"),
        ("training.learning_rate=0", "training.learning_rate"),
        ("training.learning_rate=-1e-4", "training.learning_rate"),
        ("data.frame_buckets=[1,32]", "data.frame_buckets[1]"),
        ("lora.targets=everything", "lora.targets"),
        ("training.max_steps=abc", "training.max_steps"),
        ("objective.loss_weighting=huber", "objective.loss_weighting"),
    ],
)
def test_bad_values_name_the_key(override, key, model_dir):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [f"model.path={model_dir}", override])


def test_unknown_key_suggests_closest(model_dir):
    with pytest.raises(ConfigError, match=r"'lora.rnak'.*did you mean 'lora.rank'"):
        load_config(None, [f"model.path={model_dir}", "lora.rnak=4"])
    with pytest.raises(ConfigError, match=r"'trainig'.*did you mean 'training'"):
        load_config(None, [f"model.path={model_dir}", "trainig.max_steps=4"])


def test_model_path_missing_or_absent(monkeypatch):
    with pytest.raises(ConfigError, match="'model.path' is required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="'model.path'.*does not exist"):
        load_config(None, ["model.path=./no/such/model"])
    # a hub id is accepted here (online) and resolved when loading; offline it must be in the hub cache
    with pytest.raises(ConfigError, match="not in the local hub cache while HF_HUB_OFFLINE"):
        load_config(None, ["model.path=hunyuanvideo-community/HunyuanVideo"])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert load_config(None, ["model.path=hunyuanvideo-community/HunyuanVideo"]).model.path


@pytest.mark.parametrize("override, key", [("lora.rank=0", "lora.rank"), ("data.frame_buckets=[16]", "frame_buckets"),
                                           ("training.learning_rate=0", "learning_rate"), ("lora.rnak=4", "lora.rank")])
def test_cli_fails_before_loading_models(override, key, model_dir, capsys):
    # model.path is an empty folder: had the trainer tried to load it, the error would be a load error
    cfg = REPO / "configs" / "demo_tiny.yaml"
    code = main(["train", "--config", str(cfg), f"model.path={model_dir}", override])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and "config key" in err


def test_cli_missing_cache_names_the_folder(model_dir, tmp_path, capsys):
    cfg = REPO / "configs" / "demo_tiny.yaml"
    code = main(["train", "--config", str(cfg), f"model.path={model_dir}", f"data.cache_dir={tmp_path / 'nocache'}"])
    assert code == 2
    assert "nocache" in capsys.readouterr().err


def test_adamw8bit_without_bitsandbytes_says_what_to_do(model_dir):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ConfigError, match=r"training.optimizer.*bitsandbytes.*optimizer=adamw"):
        load_config(None, [f"model.path={model_dir}", "training.optimizer=adamw8bit"])


@pytest.mark.parametrize("preset", ["24gb", "12gb", "none"])
def test_a_model_name_typo_is_reported_as_such_whatever_the_preset(preset):
    """A misspelt model.name is the error, not the preset (a preset used to say 'no presets for model')."""
    with pytest.raises(ConfigError, match=r"config key 'model.name': unknown model 'hunyuan-video-i2v'; known: "):
        load_config(None, ["model.name=hunyuan-video-i2v", f"memory.preset={preset}"])


@pytest.mark.parametrize("verb", [["tiny-model", "OUT"], ["sample", "--prompt", "x", "--model", "M", "--out", "o.mp4"],
                                  ["convert", "in.safetensors", "out.safetensors", "--to", "comfyui"]])
def test_a_model_name_option_typo_names_the_option(verb, tmp_path, capsys):
    args = [a if a not in ("OUT", "M") else str(tmp_path / a) for a in verb]
    assert main([*args, "--model-name", "hunyuan-video-15"]) == 2
    assert "--model-name: unknown model 'hunyuan-video-15'; known: hunyuan-video" in capsys.readouterr().err


def test_convert_names_a_missing_input(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "gone.safetensors"), str(tmp_path / "out.safetensors"), "--to", "comfyui"]) == 2
    assert f"input {tmp_path / 'gone.safetensors'}: file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["data.frame_buckets=[1,5", "data.sources=[{path:", "lora.targets={a: [b"])
def test_an_override_that_is_not_yaml_is_named(override, capsys):
    """A malformed override value (an unclosed list, a shell-split map) used to end in yaml's traceback."""
    assert main(["train", "--config", str(SHIPPED[0]), override]) == 2
    err = capsys.readouterr().err
    assert f"override {override!r}: the value is not valid YAML" in err and "Traceback" not in err


def test_a_model_subfolder_is_named_with_its_model_folder(tmp_path, capsys):
    (tmp_path / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "model" / "model_index.json").write_text("{}")
    sub = tmp_path / "model" / "transformer"
    assert main(["sample", "--model", str(sub), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]) == 2
    assert f"--model: '{sub}' is the 'transformer' part of the model folder '{tmp_path / 'model'}'" in capsys.readouterr().err


def test_a_bad_lora_scale_is_named_as_such(tmp_path, capsys):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    assert main(["sample", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o.mp4"),
                 "--lora", f"{lora}:abc"]) == 2
    assert f"--lora {lora}:abc: the scale after ':' must be a number, e.g. {lora}:0.8" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["clip.gif", "clip.webm", "clip"])
def test_sample_output_must_be_mp4_or_png(name, tmp_path, capsys):
    """It used to write H.264 into a file named .gif."""
    (tmp_path / "model_index.json").write_text("{}")
    assert main(["sample", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / name)]) == 2
    assert "write an .mp4 (H.264 video) or a .png (one frame)" in capsys.readouterr().err
