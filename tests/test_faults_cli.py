"""The sweep: every verb on bad paths, unreadable files and bad values exits 2 with a message naming it.

The documented exit code for an error the user can fix is 2 (``finetune.py --help`` / README).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hv_tune.cli import main

from .conftest import REPO

DEMO = str(REPO / "configs" / "demo_tiny.yaml")


@pytest.fixture
def bad(tmp_path, tiny_model) -> dict[str, str]:
    """Named bad inputs: a missing path, a folder, a file in the way, garbage bytes, a broken index."""
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x89PNG\r\n not safetensors at all \xff\xfe")
    binary_yaml = tmp_path / "binary.yaml"
    binary_yaml.write_bytes(b"\xff\xfe\x00\x81 model: [")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    broken_cache = tmp_path / "brokencache"
    broken_cache.mkdir()
    (broken_cache / "index.jsonl").write_text('{"cache_version": 1}\n{"id": 3, "oops": true}\n')
    (tmp_path / "folder.yaml").mkdir()
    return {"missing": str(tmp_path / "nope" / "thing"), "folder": str(tmp_path / "folder.yaml"),
            "garbage": str(garbage), "binary_yaml": str(binary_yaml), "blocker": str(blocker),
            "broken_cache": str(broken_cache), "model": str(tiny_model), "tmp": str(tmp_path)}


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
]


@pytest.mark.parametrize("verb, args, named", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_exits_2_naming_it_without_traceback(verb, args, named, bad, capsys):
    code = main([verb, *(a.format(**bad) for a in args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert named.format(**bad) in err, err


def test_convert_output_under_a_file_is_named(spec, tiny_model, bad, capsys, tmp_path):
    from .lora_utils import random_lora

    lora = random_lora(spec, tiny_model, tmp_path / "l.safetensors", rank=2, alpha=2.0)
    out = Path(bad["blocker"]) / "o.safetensors"
    assert main(["convert", str(lora), str(out), "--to", "kohya"]) == 2
    assert bad["blocker"] in capsys.readouterr().err
    assert main(["merge", "--model", bad["model"], "--lora", str(lora), "--out", f"{bad['blocker']}/m"]) == 2
    assert bad["blocker"] in capsys.readouterr().err
