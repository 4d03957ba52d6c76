"""Shipped curation configs load; bad keys and values give errors that name the key."""

from __future__ import annotations

import pytest

from curation.cli import main
from curation.config import DEFAULT_PROMPT, CurationConfig, load_config
from curation.errors import ConfigError
from hv_tune.typed_config import field_docs

from .conftest import REPO, TINY_CONFIG, model_overrides

SHIPPED = sorted(REPO.glob("configs/curation*.yaml"))


def test_every_shipped_curation_config_loads(tiny_models):
    assert {p.name for p in SHIPPED} == {"curation.yaml", "curation_tiny.yaml"}
    real = load_config(REPO / "configs" / "curation.yaml", [f"clip.aesthetic_head={tiny_models['aesthetic']}"])
    assert (real.clip.model, real.clip.pretrained) == ("ViT-L-14", "openai")
    assert real.caption.model.startswith("Qwen/Qwen2.5-VL") and real.caption.prompt == DEFAULT_PROMPT
    assert real.filters.duplicate_cosine == 0.98 and real.filters.aesthetic_min == 4.5
    assert [z.name for z in real.clip.zero_shot] == ["watermark", "text_overlay", "blurry", "letterbox"]
    tiny = load_config(TINY_CONFIG, model_overrides(tiny_models))
    assert tiny.clip.model.startswith("local-dir:") and tiny.caption.trigger_word == "sks"


def test_every_shipped_curation_config_is_commented_key_by_key():
    for path in SHIPPED:
        for line in path.read_text().splitlines():
            if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_real_config_without_the_head_file_names_the_key():
    with pytest.raises(ConfigError, match=r"'clip.aesthetic_head'.*does not exist"):
        load_config(REPO / "configs" / "curation.yaml")


@pytest.mark.parametrize(("override", "message"), [
    ("filters.aesthetic_mn=5", "unknown config key 'filters.aesthetic_mn'; did you mean 'filters.aesthetic_min'"),
    ("executor=spark", "'executor': 'spark' is not one of local | ray"),
    ("scenes.min_clip_s=abc", "'scenes.min_clip_s': expected float, got 'abc'"),
    ("filters.zero_shot_max.watermrk=0.5", "'filters.zero_shot_max.watermrk': no zero-shot prompt named 'watermrk'"),
    ("scenes.detect_width=100", "'scenes.detect_width' must be a positive multiple of 32"),
    ("caption.enabled=yes-please", "'caption.enabled'"),
    ("frames.positions=[0.5,1.5]", "'frames.positions' must be fractions"),
])
def test_bad_values_name_the_key(tiny_models, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY_CONFIG, model_overrides(tiny_models) + [override])
    assert message in str(err.value)


def test_every_field_has_a_doc():
    docs = field_docs(CurationConfig)
    assert len(docs) > 50 and all(docs.values())


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--config", str(TINY_CONFIG),
                 "clip.model=local-dir:" + str(tmp_path / "none")]) == 2
    assert "clip.model" in capsys.readouterr().err
    assert main(["filter", str(tmp_path), "scenes.min_clip_s=1"]) == 2
    assert "needs a new `python -m curation run`" in capsys.readouterr().err
    assert main(["filter", str(tmp_path), "filters.motion_min=1"]) == 2
    assert "is not the output of" in capsys.readouterr().err


def test_errors_are_hv_tunes_and_a_folder_as_config_is_named(tmp_path, capsys):
    """One error tree (no translation) and one YAML reader: a folder given as the config is a
    ConfigError naming it, as in hv_tune (curation's own reader raised IsADirectoryError)."""
    import hv_tune.errors as hv
    from curation.errors import CurationError, InputError

    assert ConfigError is hv.ConfigError and CurationError is hv.HvTuneError and issubclass(InputError, hv.DataError)
    with pytest.raises(hv.ConfigError, match=rf"config file {tmp_path} cannot be read as UTF-8 YAML"):
        load_config(tmp_path)
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config file {tmp_path} cannot be read") and "Traceback" not in err
