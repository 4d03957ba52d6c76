"""A LoRA for one registered model family is refused by every verb on another family's model, naming
both: by the family our files record, else by keys or layer shapes only the other family has.
Text-to-video and image-to-video 1.5 LoRAs are compatible (docs/lora-formats.md, "Model families")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.errors import HvTuneError
from hv_tune.export.family import FAMILY_KEY
from hv_tune.export.lora_io import read_lora, write_lora
from hv_tune.models import get_spec

from .lora_utils import random_lora

V1, V15, I2V = "hunyuan-video", "hunyuan-video-1.5", "hunyuan-video-1.5-i2v"
MODELS = {V1: "tiny_model", V15: "hv15_tiny", I2V: "hv15_i2v_tiny"}


def _model(name: str, request) -> Path:
    return request.getfixturevalue(MODELS[name])


def _ours(name: str, model: Path, out: Path, layout: str) -> Path:
    """A rank 4 / alpha 2 LoRA of ``name`` (attention of every block) written by our writer in ``layout``."""
    spec = get_spec(name)
    shapes = spec.linear_shapes(str(model))
    raw = random_lora(spec, model, out.with_name(out.stem + "-raw.safetensors"), rank=4, alpha=2.0)
    return write_lora(spec, read_lora(spec, raw, shapes).modules, out, layout, shapes)


def _without_record(path: Path) -> Path:
    """The file as another tool (or hv-tune before the record) writes it: no family in the metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != FAMILY_KEY}
    out = path.with_name(path.stem + "-norecord.safetensors")
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


@pytest.mark.parametrize("theirs, ours, layout", [
    (V1, V15, "diffusers"), (V1, V15, "comfyui"), (V1, V15, "kohya"), (V1, V15, "comfyui-internal"),
    (V15, V1, "diffusers"), (V15, V1, "kohya"), (I2V, V1, "comfyui"),
])
def test_merge_refuses_a_lora_recorded_for_another_family_even_with_skip_unknown(theirs, ours, layout, request,
                                                                                 tmp_path, capsys):
    """The example: a v1 LoRA merged into a 1.5 model with --skip-unknown merged 16 double-block layers of the
    wrong model (code 0); a 1.5 LoRA's layers have v1's names, so on the tiny models (same widths) it merged
    into v1 without a word. Every layout we write records the family; merge refuses, naming both."""
    lora = _ours(theirs, _model(theirs, request), tmp_path / "theirs.safetensors", layout)
    with safe_open(str(lora), framework="pt") as f:
        assert f.metadata()[FAMILY_KEY] == theirs
    capsys.readouterr()
    code = main(["merge", "--model", str(_model(ours, request)), "--lora", str(lora), "--out", str(tmp_path / "m"),
                 "--skip-unknown"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"this is a {theirs} LoRA, not a {ours} one" in err and "--skip-unknown" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("verb", ["sample", "convert"])
def test_sample_and_convert_refuse_a_v1_lora_on_a_15_model(verb, tiny_model, hv15_tiny, tmp_path, capsys):
    """Same reader for every verb (before: a list of unknown single-block keys and the advice --skip-unknown)."""
    lora = _ours(V1, tiny_model, tmp_path / "v1.safetensors", "diffusers")
    args = {"sample": ["sample", "--model", str(hv15_tiny), "--lora", str(lora), "--prompt", "x", "--frames", "1",
                       "--height", "32", "--width", "32", "--steps", "1", "--out", str(tmp_path / "a.png")],
            "convert": ["convert", str(lora), str(tmp_path / "k.safetensors"), "--to", "kohya",
                        "--model", str(hv15_tiny)]}[verb]
    capsys.readouterr()
    assert main(args) == 2
    # the last line: diffusers' loggers may print a "--- Logging error ---" of an earlier test's closed capture
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"this is a {V1} LoRA, not a {V15} one" in error
    assert "--skip-unknown" not in error


@pytest.mark.parametrize("theirs, ours, layout, key", [
    (V1, V15, "diffusers", "single_transformer_blocks.0.attn.to_k"),  # 1.5 has no single-stream blocks
    (V1, V15, "kohya", "single_blocks_0_linear1"),
    (V1, V15, "comfyui", "single_blocks.0.linear1"),
    (V15, V1, "kohya", "img_attn_k"),  # musubi-tuner's separate q/k/v: v1's are fused
])
def test_a_lora_without_record_is_refused_by_keys_only_the_other_family_has(theirs, ours, layout, key, request,
                                                                            tmp_path):
    lora = _without_record(_ours(theirs, _model(theirs, request), tmp_path / "theirs.safetensors", layout))
    spec = get_spec(ours)
    named = theirs if theirs == V1 else f"{V15} or {I2V}"
    with pytest.raises(HvTuneError, match=rf"this is a {named} LoRA, not a {ours} one \(key '[^']*{key}"):
        read_lora(spec, lora, spec.linear_shapes(str(_model(ours, request))))


@pytest.mark.parametrize("theirs, ours, width, named", [(V1, V15, 3072, V1), (V15, V1, 2048, f"{V15} or {I2V}")])
def test_a_full_size_lora_is_refused_by_its_shapes_naming_its_family(theirs, ours, width, named, request, tmp_path):
    """Keys both families have (double-block attention) at the full-size width of one of them: before, only
    "made for a model of another size"."""
    path = tmp_path / "full.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(1, width),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(width, 1)}, str(path))
    spec = get_spec(ours)
    with pytest.raises(HvTuneError, match=rf"this is a {named} LoRA, not a {ours} one \(its layers have the full-size"
                                          rf".*another size"):
        read_lora(spec, path, spec.linear_shapes(str(_model(ours, request))))


@pytest.mark.parametrize("theirs, ours", [(V15, I2V), (I2V, V15)])
def test_t2v_and_i2v_loras_of_15_are_compatible(theirs, ours, request, tmp_path, capsys):
    """The same layers and sizes: a LoRA of either variant merges into the other, with a note (a guard for the
    decision, not a failing example: nothing refused it before)."""
    lora = _ours(theirs, _model(theirs, request), tmp_path / "theirs.safetensors", "kohya")
    capsys.readouterr()
    assert main(["merge", "--model", str(_model(ours, request)), "--lora", str(lora), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f"trained for {theirs}, used with {ours} (compatible" in out


def test_convert_keeps_the_family_the_file_records(request, tmp_path):
    """A 1.5 text-to-video LoRA converted with an image-to-video --model stays a text-to-video file (it was
    recorded as the --model's family)."""
    lora = _ours(V15, _model(V15, request), tmp_path / "t2v.safetensors", "diffusers")
    out = tmp_path / "t2v_kohya.safetensors"
    assert main(["convert", str(lora), str(out), "--to", "kohya", "--model", str(_model(I2V, request))]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()[FAMILY_KEY] == V15
