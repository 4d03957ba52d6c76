"""Prompt files (musubi-tuner's line syntax): the parser, `sample --from-file`, and validation.prompts as a file."""

from __future__ import annotations

import pytest

from hv_tune.cli import main
from hv_tune.errors import ConfigError
from hv_tune.prompts import parse_prompt_line, read_prompt_file


def test_a_line_reads_as_musubi_tuner_reads_it():
    line = parse_prompt_line("a cat walks --w 832 --H 480 --f 33 --d 42 --s 20 --g 6.0 --fs 7 --i cat.png", "p:1")
    assert (line.prompt, line.width, line.height, line.frames, line.seed, line.steps) == ("a cat walks", 832, 480,
                                                                                         33, 42, 20)
    assert (line.guidance, line.shift, line.image) == (6.0, 7.0, "cat.png")
    assert parse_prompt_line("a dog--w 3").prompt == "a dog--w 3"  # options start at " --", as in musubi-tuner
    assert parse_prompt_line("just a prompt").settings() == {}


def test_negative_prompt_and_cfg_scale_read_as_musubi_tuner_reads_them():
    """--n keeps its text as written (spaces, commas, quotes) up to the next " --"; --l is a number."""
    line = parse_prompt_line('a cat --n blurry, low  quality "jpeg" --L 4.5 --w 32', "p:1")
    assert (line.prompt, line.negative_prompt, line.cfg_scale, line.width) == (
        "a cat", 'blurry, low  quality "jpeg"', 4.5, 32)
    assert line.settings() == {"width": 32, "negative_prompt": 'blurry, low  quality "jpeg"', "cfg_scale": 4.5}
    assert parse_prompt_line("a cat --N dark --l .5").settings() == {"negative_prompt": "dark", "cfg_scale": 0.5}


@pytest.mark.parametrize("text, message", [
    ("a cat --x 3", "unknown option --x"),
    ("a cat --l x", "--l 'x': must be a number"),
    ("a cat --l -2", "--l '-2': must be a number >= 0"),
    ("a cat --l", "--l: needs a value"),
    ("a cat --n", "--n: needs a value"),
    ("a cat --w", "--w: needs a value"),  # as for every option, not "'': must be a whole number"
    ("a cat --w 51.5", "--w '51.5': must be a whole number"),
    ("a cat --d -1", "--d '-1'"),
    ("a cat --g", "--g: needs a value"),
    ("a cat --i", "--i: needs a value"),
    (" --w 32", "no prompt"),
    ("a cat --w 64 --s 4 --w 96", "--w is given twice"),  # musubi-tuner keeps the last one silently
    ("a cat --n blurry --N dark --l 5", "--N is given twice"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path, text, message):
    f = tmp_path / "prompts.txt"
    f.write_text(f"# previews\n\nfirst prompt --w 64\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_prompt_file(f)
    assert f"{f}:4" in str(e.value) and message in str(e.value)


def test_comments_blank_lines_and_image_paths(tmp_path):
    f = tmp_path / "sub" / "prompts.txt"
    f.parent.mkdir()
    f.write_text("# a comment\n\n  \n a red circle --i first.png\n  # indented: a prompt (musubi's rule)\n")
    lines = read_prompt_file(f)
    assert [ln.prompt for ln in lines] == ["a red circle", "# indented: a prompt (musubi's rule)"]
    assert lines[0].image == str(f.parent / "first.png") and lines[0].where == f"{f}:4"
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no prompt"):
        read_prompt_file(tmp_path / "empty.txt")


def test_sample_from_file_renders_each_line_at_its_size_and_seed(tiny_model, tmp_path, capsys):
    """Two lines with their own sizes, frames and seeds (and a comment): each file has its line's size, and
    the second line's image is the one `sample --prompt` renders with the same settings (same code path, so
    the same bytes)."""
    from PIL import Image

    from .test_cli import _decode

    f = tmp_path / "prompts.txt"
    f.write_text("# two previews\na red circle --w 64 --h 32 --f 5 --d 3\n"
                 "a blue square --W 32 --H 64 --F 1 --D 7 --s 3\n")
    out = tmp_path / "previews"
    assert main(["sample", "--model", str(tiny_model), "--from-file", str(f), "--steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00.mp4", "01.png"]
    assert _decode(out / "00.mp4").shape == (5, 32, 64, 3)
    assert Image.open(out / "01.png").size == (32, 64)
    single = tmp_path / "single.png"
    assert main(["sample", "--model", str(tiny_model), "--prompt", "a blue square", "--width", "32", "--height",
                 "64", "--frames", "1", "--seed", "7", "--steps", "3", "--out", str(single)]) == 0
    assert single.read_bytes() == (out / "01.png").read_bytes()  # (another seed gives another image: test_cli)
    assert "note:" not in capsys.readouterr().err
    f.write_text("one line --w 32 --h 32 --f 1\n")  # the same --out again: 00.png; 00.mp4 and 01.png are older
    assert main(["sample", "--model", str(tiny_model), "--from-file", str(f), "--steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00.mp4", "00.png", "01.png"]
    assert f"{out} also holds 2 file(s) this run did not write (00.mp4, 01.png)" in capsys.readouterr().err


def test_sample_from_file_checks_every_line_before_loading(tiny_model, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("ok --w 32 --h 32\nbad --f 8\n")
    assert main(["sample", "--model", str(tiny_model), "--from-file", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and "--f 8" in err
    assert not (tmp_path / "o").exists()
    assert main(["sample", "--model", str(tiny_model), "--from-file", str(f), "--prompt", "x",
                 "--out", str(tmp_path / "o")]) == 2
    assert "either --prompt" in capsys.readouterr().err


def test_validation_prompts_as_a_file_render_each_line_at_its_size(tiny_model, demo_cache, tmp_path):
    """validation.prompts may name a prompt file: each preview gets its line's size and frames; the
    validation.* keys fill what a line leaves out (the second line's steps, seed, ...)."""
    from PIL import Image

    from hv_tune.config import load_config
    from hv_tune.training.trainer import train

    from .conftest import train_overrides
    from .test_cli import _decode

    f = tmp_path / "previews.txt"
    f.write_text("# previews\n[trigger] a red ball --w 64 --h 32 --f 5 --d 1\na blue square --F 1 --H 64 --W 32\n")
    out = tmp_path / "run"
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, out, **{
        "training.max_steps": 1, "validation.every": 1, "validation.prompts": str(f), "validation.steps": 2,
        "validation.eval_items": 0, "validation.frames": 9, "validation.height": 32, "validation.width": 32}))
    train(cfg)
    step = out / "samples" / "step_00000001"
    assert sorted(p.name for p in step.iterdir()) == ["00.mp4", "01.png"]
    assert _decode(step / "00.mp4").shape == (5, 32, 64, 3)
    assert Image.open(step / "01.png").size == (32, 64)
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nwrong size --w 33\n")
    with pytest.raises(ConfigError, match=f"{bad}:2.*--w 33"):
        load_config(None, train_overrides(tiny_model, demo_cache, out, **{"validation.every": 1,
                                                                            "validation.prompts": str(bad)}))
