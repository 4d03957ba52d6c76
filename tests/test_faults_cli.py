"""The sweep: every verb on bad paths, unreadable files and bad values exits 2 with a message naming it.

The documented exit code for an error the user can fix is 2 (``finetune.py --help`` / README).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hv_tune.cli import main
from hv_tune.data.cache import CACHE_VERSION

from .conftest import REPO

DEMO = str(REPO / "configs" / "demo_tiny.yaml")


@pytest.fixture(scope="module")
def lora_file(spec, tiny_model, tmp_path_factory) -> Path:
    from .lora_utils import random_lora

    return random_lora(spec, tiny_model, tmp_path_factory.mktemp("faults") / "l.safetensors", rank=2, alpha=2.0)


@pytest.fixture
def bad(tmp_path, tiny_model, lora_file) -> dict[str, str]:
    """Named bad inputs: a missing path, a folder, a file in the way, garbage bytes, a broken index."""
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x89PNG\r\n not safetensors at all \xff\xfe")
    binary_yaml = tmp_path / "binary.yaml"
    binary_yaml.write_bytes(b"\xff\xfe\x00\x81 model: [")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    broken_cache = tmp_path / "brokencache"
    broken_cache.mkdir()
    (broken_cache / "index.jsonl").write_text(f'{{"cache_version": {CACHE_VERSION}}}\n{{"id": 3, "oops": true}}\n')
    (tmp_path / "folder.yaml").mkdir()
    return {"missing": str(tmp_path / "nope" / "thing"), "folder": str(tmp_path / "folder.yaml"),
            "garbage": str(garbage), "binary_yaml": str(binary_yaml), "blocker": str(blocker),
            "broken_cache": str(broken_cache), "model": str(tiny_model), "tmp": str(tmp_path), "lora": str(lora_file)}


SAMPLE = ["--model", "{model}", "--prompt", "x", "--out", "{tmp}/a.mp4", "--frames", "1", "--height", "16",
          "--width", "16", "--steps", "1"]
MERGE = ["--model", "{model}", "--out", "{tmp}/m"]


CASES = [
    # verb, arguments ({name} = a path from the `bad` fixture), what the message must name
    ("cache", ["--config", "{folder}"], "{folder}"),
    ("cache", ["--config", "{binary_yaml}"], "{binary_yaml}"),
    ("cache", ["--config", DEMO, "model.path={model}", "data.sources=[{{path: {missing}}}]"], "data.sources[0].path"),
    ("cache", ["--config", DEMO, "model.path={model}", "data.resolution=33"], "data.resolution"),
    ("cache", ["--config", DEMO, "model.path={model}", "data.cache_dir={blocker}/c"], "data.cache_dir"),
    ("cache", ["--verify", "--config", DEMO, "model.path={model}", "data.cache_dir={broken_cache}"], "index.jsonl"),
    ("train", ["--config", DEMO, "model.path={missing}"], "model.path"),
    ("train", ["--config", DEMO, "model.path={garbage}"], "{garbage}"),
    ("train", ["--config", DEMO, "model.path={model}", "training.max_steps=abc"], "training.max_steps"),
    ("train", ["--config", DEMO, "model.path={model}", "output_dir={tmp}/r", "--resume", "{missing}"], "{missing}"),
    ("train", ["--config", DEMO, "model.path={model}", "output_dir={tmp}/r", "data.cache_dir={broken_cache}"],
     "index.jsonl"),
    ("train", ["--config", DEMO, "model.path={model}", "output_dir={blocker}"], "output_dir"),
    ("sample", ["--model", "{missing}", "--prompt", "x", "--out", "{tmp}/a.mp4"], "{missing}"),
    ("sample", ["--model", "{model}", "--lora", "{missing}", "--prompt", "x", "--out", "{tmp}/a.mp4"], "{missing}"),
    ("sample", ["--model", "{model}", "--lora", "{garbage}", "--prompt", "x", "--out", "{tmp}/a.mp4"], "{garbage}"),
    ("sample", ["--model", "{model}", "--prompt", "x", "--out", "{blocker}/a.mp4"], "{blocker}"),
    ("sample", ["--model", "{model}", "--prompt", "x", "--height", "30", "--out", "{tmp}/a.mp4"], "--height"),
    ("merge", ["--model", "{missing}", "--lora", "{garbage}", "--out", "{tmp}/m"], "{missing}"),
    ("merge", ["--model", "{model}", "--lora", "{garbage}", "--out", "{tmp}/m"], "{garbage}"),
    ("merge", ["--model", "{model}", "--lora", "{missing}", "--out", "{tmp}/m"], "{missing}"),
    ("convert", ["{missing}", "{tmp}/o.safetensors", "--to", "kohya"], "{missing}"),
    ("convert", ["{garbage}", "{tmp}/o.safetensors", "--to", "kohya"], "{garbage}"),
    ("convert", ["{folder}", "{tmp}/o.safetensors", "--to", "kohya"], "{folder}"),
    # numbers, checked before any model loads (each of these ran, or crashed after loading, before)
    ("sample", [*SAMPLE, "--steps", "-3"], "--steps -3"),
    ("sample", [*SAMPLE, "--steps", "0"], "--steps 0"),
    ("sample", [*SAMPLE, "--height", "0"], "--height 0"),
    ("sample", [*SAMPLE, "--width", "0"], "--width 0"),
    ("sample", [*SAMPLE, "--guidance", "nan"], "--guidance nan"),
    ("sample", [*SAMPLE, "--guidance", "-2"], "--guidance -2"),
    ("sample", [*SAMPLE, "--shift", "0"], "--shift 0"),
    ("sample", [*SAMPLE, "--shift", "inf"], "--shift inf"),
    ("sample", [*SAMPLE, "--fps", "0"], "--fps 0"),
    ("sample", [*SAMPLE, "--fps", "-5"], "--fps -5"),
    ("sample", [*SAMPLE, "--seed", str(2**64)], "--seed"),
    ("sample", [*SAMPLE, "--lora", "{lora}:nan"], "{lora}:nan"),
    ("sample", [*SAMPLE, "--lora", "{lora}:-inf"], "{lora}:-inf"),
    ("merge", [*MERGE, "--lora", "{lora}:inf"], "{lora}:inf"),
    ("merge", [*MERGE, "--lora", "{lora}", "--scale", "nan"], "--scale nan"),
    ("merge", [*MERGE, "--lora", "{lora}", "--max-shard-size", "0GB"], "--max-shard-size 0GB"),
    ("merge", [*MERGE, "--lora", "{lora}", "--max-shard-size", "0.4B"], "--max-shard-size 0.4B"),
]


@pytest.mark.parametrize("verb, args, named", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_exits_2_naming_it_without_traceback(verb, args, named, bad, capsys):
    code = main([verb, *(a.format(**bad) for a in args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert named.format(**bad) in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line
    assert not Path(bad["tmp"], "a.mp4").exists() and not Path(bad["tmp"], "m").exists()


def test_sample_numbers_are_checked_before_the_model_is_read(tmp_path, capsys):
    """A bad number is reported even when --model does not exist: nothing is loaded first."""
    assert main(["sample", "--model", str(tmp_path / "no-model"), "--prompt", "x", "--steps", "0",
                 "--out", str(tmp_path / "a.mp4")]) == 2
    assert "--steps 0: must be a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("frames, want", [(8, "use 5 or 9"), (0, "use 1 or 5"), (-3, "use 1 or 5"), (2, "use 1 or 5")])
def test_bad_frame_count_names_the_nearest_valid_ones(tiny_model, tmp_path, capsys, frames, want):
    assert main(["sample", "--model", str(tiny_model), "--prompt", "x", "--frames", str(frames),
                 "--out", str(tmp_path / "a.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"--frames {frames}: hunyuan-video takes 4k+1 frames" in err and want in err, err


def test_convert_output_under_a_file_is_named(spec, tiny_model, bad, capsys, tmp_path):
    from .lora_utils import random_lora

    lora = random_lora(spec, tiny_model, tmp_path / "l.safetensors", rank=2, alpha=2.0)
    out = Path(bad["blocker"]) / "o.safetensors"
    assert main(["convert", str(lora), str(out), "--to", "kohya"]) == 2
    assert bad["blocker"] in capsys.readouterr().err
    assert main(["merge", "--model", bad["model"], "--lora", str(lora), "--out", f"{bad['blocker']}/m"]) == 2
    assert bad["blocker"] in capsys.readouterr().err


def test_convert_never_overwrites_its_input_and_asks_before_replacing_a_file(tiny_model, lora_file, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src = Path("in.safetensors")
    src.write_bytes(lora_file.read_bytes())
    before = src.read_bytes()
    other = Path("other.safetensors")
    other.write_bytes(b"another LoRA")
    convert = ["--to", "kohya", "--model", str(tiny_model)]
    # an existing, different file: refused, untouched, the fix named
    assert main(["convert", str(src), str(other), *convert]) == 2
    err = capsys.readouterr().err
    assert "other.safetensors already exists" in err and "--overwrite" in err, err
    assert other.read_bytes() == b"another LoRA"
    # the input itself, however spelled: never, not even with --overwrite
    Path("sub").mkdir()
    os.link(src, "hard.safetensors")
    os.symlink(src.resolve(), "sub/link.safetensors")
    for out in ("in.safetensors", "./in.safetensors", "sub/../in.safetensors", str(src.resolve()),
                "hard.safetensors", "sub/link.safetensors"):
        for extra in ([], ["--overwrite"]):
            assert main(["convert", str(src), out, *convert, *extra]) == 2, out
            assert "is the same file as input" in capsys.readouterr().err, out
    assert main(["convert", "sub/link.safetensors", str(src), *convert, "--overwrite"]) == 2
    assert "is the same file as input" in capsys.readouterr().err
    assert src.read_bytes() == before and Path("hard.safetensors").read_bytes() == before
    # a folder is not a file to write
    assert main(["convert", str(src), "sub", *convert, "--overwrite"]) == 2
    assert "sub is a folder" in capsys.readouterr().err
    # --overwrite replaces another file (atomically: nothing left over)
    assert main(["convert", str(src), str(other), *convert, "--overwrite"]) == 0
    from safetensors.torch import load_file

    assert any(k.startswith("lora_unet_") for k in load_file(str(other)))
    assert not list(Path().glob(".tmp-*")) and src.read_bytes() == before


def test_sample_out_is_never_the_input_image(hv15_i2v_tiny, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    before = image.read_bytes()
    os.link(image, tmp_path / "linked.png")
    for out in (image, tmp_path / "linked.png", tmp_path / "." / "first.png"):
        assert main(["sample", "--model", str(hv15_i2v_tiny), "--prompt", "x", "--image", str(image), "--frames", "1",
                     "--steps", "1", "--out", str(out)]) == 2
        assert "is the same file as --image" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_convert_lora_refuses_a_hard_link_to_its_input(spec, tiny_model, lora_file, tmp_path):
    from hv_tune.errors import HvTuneError
    from hv_tune.export.convert import convert_lora

    os.link(lora_file, tmp_path / "hard.safetensors")
    with pytest.raises(HvTuneError, match="input and output are the same file"):
        convert_lora(spec, lora_file, tmp_path / "hard.safetensors", "kohya", spec.linear_shapes(str(tiny_model)))
