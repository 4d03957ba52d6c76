"""Every verb has --help; the entry point exits non-zero with a readable message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

VERBS = ["tiny-model", "train", "sample", "merge", "convert", "demo"]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "finetune.py"), *args], capture_output=True, text=True)


def test_help_lists_verbs():
    out = _run("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    out = _run(verb, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_bad_config_exits_2_without_traceback(tmp_path):
    out = _run("train", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert "missing.yaml" in out.stderr and "Traceback" not in out.stderr


def _decode(path):
    from tests.media_files import decode_pyav

    return decode_pyav(path)[0]  # [F, H, W, 3] uint8


def test_sample_writes_a_playable_mp4(tiny_model, tmp_path):
    out = tmp_path / "preview.mp4"
    res = _run("sample", "--model", str(tiny_model), "--prompt", "a red circle", "--frames", "9",
               "--height", "32", "--width", "64", "--steps", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    frames = _decode(out)
    assert frames.shape == (9, 32, 64, 3)
    bad = _run("sample", "--model", str(tiny_model), "--prompt", "x", "--frames", "8", "--out", str(out))
    assert bad.returncode == 2 and "4k+1" in bad.stderr


def test_sample_is_deterministic_and_memory_options_do_not_change_it(spec, tiny_model, tmp_path, capsys):
    from hv_tune.cli import main
    from hv_tune.export.convert import convert_lora

    from .lora_utils import random_lora

    args = ["sample", "--model", str(tiny_model), "--prompt", "a blue square slides left", "--frames", "5",
            "--height", "32", "--width", "32", "--steps", "2", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.mp4")]) == 0
    assert main([*args, "--out", str(tmp_path / "c.mp4"), "--vae-tiling", "--offload", "text-encoders"]) == 0
    assert main([*args[:-1], "4", "--out", str(tmp_path / "d.mp4")]) == 0
    a, b, c, d = (_decode(tmp_path / f"{n}.mp4") for n in "abcd")
    assert a.shape == (5, 32, 32, 3)
    assert (a == b).all() and (a == c).all()  # same seed, same video; offloading changes nothing
    assert (a != d).any()  # another seed, another video
    # a LoRA in kohya format (diffusers cannot load those) gives the same video as its diffusers file
    lora = random_lora(spec, tiny_model, tmp_path / "l.safetensors", rank=4, alpha=2.0)
    kohya = convert_lora(spec, lora, tmp_path / "k.safetensors", "kohya", spec.linear_shapes(str(tiny_model))).out
    assert main([*args, "--lora", f"{lora}:0.7", "--out", str(tmp_path / "e.mp4")]) == 0
    assert main([*args, "--lora", f"{kohya}:0.7", "--out", str(tmp_path / "f.mp4")]) == 0
    e, f = _decode(tmp_path / "e.mp4"), _decode(tmp_path / "f.mp4")
    assert (e != a).any() and (e == f).all()  # the recorded fused layout splits back exactly
    assert main(["sample", "--model", str(tiny_model), "--prompt", "a cat", "--height", "32", "--width", "32",
                 "--steps", "2", "--out", str(tmp_path / "x.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "x.png").size == (32, 32)
    assert main([*args, "--out", str(tmp_path / "y.png")]) == 2  # 5 frames do not fit a png
    assert "one frame" in capsys.readouterr().err
