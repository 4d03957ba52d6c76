"""Files and processes at the edges: paths, a file in the way, a full disk, Ctrl-C / SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from hv_tune.cli import main
from hv_tune.config import load_config
from hv_tune.errors import ConfigError, DiskFullError
from hv_tune.training.checkpoint import TrainerState, list_checkpoints, load_checkpoint, save_checkpoint

from .conftest import REPO, train_overrides

DEMO = str(REPO / "configs" / "demo_tiny.yaml")


# ----------------------------------------------------------------------------- paths


def test_home_and_env_vars_are_expanded_once_at_load(tiny_model, demo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HV_DATA", str(tmp_path / "data"))
    (tmp_path / "model").symlink_to(tiny_model)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clips").symlink_to(demo_folder)
    cfg = load_config(None, ["model.path=~/model", "output_dir=~/runs/a", "data.sources=[{path: $HV_DATA/clips}]",
                             "data.cache_dir=${HV_DATA}/cache"])
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.output_dir == str(tmp_path / "runs" / "a")
    assert cfg.data.sources[0].path == str(tmp_path / "data" / "clips")
    assert cfg.data.cache_dir == str(tmp_path / "data" / "cache")
    from hv_tune.data.sources import scan_sources

    assert len(scan_sources(cfg.data).items) == 7  # the folder is read as a folder, not as a .jsonl
    with pytest.raises(ConfigError, match=r"'output_dir'.*variable NOT_SET_ANYWHERE in"):
        load_config(None, [f"model.path={tiny_model}", "output_dir=$NOT_SET_ANYWHERE/run"])


def test_a_missing_local_model_folder_fails_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE")  # even online: models/ is a local folder, so this is no hub id
    t0 = time.time()
    code = main(["train", "--config", DEMO, "model.path=models/hunyuan"])
    err = capsys.readouterr().err
    assert code == 2 and "models/hunyuan" in err and "does not exist" in err
    assert time.time() - t0 < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "--model", "someone/no-such-model", "--prompt", "x", "--out", str(tmp_path / "a.mp4")]) == 2
    err = capsys.readouterr().err
    assert "someone/no-such-model" in err and "HF_HUB_OFFLINE" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", ["train", "cache"])
def test_output_folder_under_a_file_is_named(verb, tiny_model, demo_folder, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    key = "output_dir" if verb == "train" else "data.cache_dir"
    extra = [f"data.sources=[{{path: {demo_folder}}}]"] if verb == "cache" else []
    code = main([verb, "--config", DEMO, f"model.path={tiny_model}", f"{key}={blocker}/run", *extra])
    err = capsys.readouterr().err
    assert code == 2 and key in err and str(blocker) in err and "is a file" in err


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 KiB tmpfs (needs root to mount; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_train_checks_free_space_before_a_checkpoint(tiny_model, demo_cache, small_fs, capsys):
    out = small_fs / "run"
    code = main(["train", "--config", DEMO, *train_overrides(
        tiny_model, demo_cache, out, **{"training.max_steps": 4, "training.checkpoint_every": 2})])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"not enough free space in {out / 'checkpoints'}" in err and "MB" in err and "--resume" in err
    assert not list((out / "checkpoints").glob(".tmp-*")) if (out / "checkpoints").exists() else True


def test_train_checks_free_space_before_the_final_lora(tiny_model, demo_cache, small_fs, capsys):
    out = small_fs / "run"
    code = main(["train", "--config", DEMO, *train_overrides(tiny_model, demo_cache, out, **{"training.max_steps": 2})])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"not enough free space in {out} for the final LoRA" in err and "none yet" in err
    assert not (out / "pytorch_lora_weights.safetensors").exists() and not list(out.glob(".tmp-*"))


def test_disk_full_mid_checkpoint_keeps_the_last_good_one(small_fs):
    from hv_tune.config import TrainingConfig
    from hv_tune.data.sampler import DataState
    from hv_tune.training.optim import build_optimizer, build_scheduler

    root = small_fs / "checkpoints"
    p = torch.nn.Parameter(torch.zeros(8))
    opt = build_optimizer([p], TrainingConfig())
    sched = build_scheduler(opt, TrainingConfig())
    save_checkpoint(root, TrainerState(1, DataState(), 4, 4.0, 0), {"a": torch.ones(8)}, opt, sched, keep=2)
    big = {"a": torch.ones(40_000)}  # 160 KB: more than the disk holds
    with pytest.raises(DiskFullError, match=r"not enough free space in .*checkpoints.*step 2.*step_00000001"):
        save_checkpoint(root, TrainerState(2, DataState(), 4, 4.0, 0), big, opt, sched, keep=2)
    assert [c.name for c in list_checkpoints(root)] == ["step_00000001"]
    assert not list(root.glob(".tmp-*"))  # the half-written folder is gone: the space is free again
    assert load_checkpoint(root / "step_00000001").adapter["a"].sum() == 8


# ----------------------------------------------------------------------------- signals


def _start(tiny_model, demo_cache, out, accumulation=1):
    cmd = [sys.executable, str(REPO / "finetune.py"), "train", "--config", DEMO, *train_overrides(
        tiny_model, demo_cache, out, **{"training.max_steps": 500, "training.gradient_accumulation_steps": accumulation})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not re.search(r" [1-9]\d*/500", "".join(chunks)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "".join(chunks)[-2000:]
    return proc, chunks, reader


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_at_the_next_step_and_says_where(tiny_model, demo_cache, tmp_path, sig):
    out = tmp_path / "run"
    proc, chunks, reader = _start(tiny_model, demo_cache, out)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(chunks)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    # a stop the user asked for is no error, and Ctrl-C is called by its name
    assert "error:" not in err and ("stopped by Ctrl-C (SIGINT)" in err if sig == signal.SIGINT else "stopped by SIGTERM" in err)
    (ckpt,) = list_checkpoints(out / "checkpoints")
    assert f"checkpoint saved to {ckpt}" in err
    step = load_checkpoint(ckpt).state.step
    assert 0 < step < 500 and f"at step {step}" in err
    assert not (out / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tiny_model, demo_cache, tmp_path):
    proc, chunks, reader = _start(tiny_model, demo_cache, tmp_path / "run", accumulation=8)  # long steps
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two signals at once would reach Python as one
    proc.send_signal(signal.SIGINT)  # mid-step (or, rarely, while the first one's exit winds down)
    proc.wait(timeout=30)
    reader.join(timeout=10)
    err = "".join(chunks)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "interrupted" in err or "stopped by Ctrl-C (SIGINT)" in err


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_results_are_readable_by_other_users(tiny_model, demo_cache, tmp_path, umask_022):
    """Atomic writes (mkstemp 0600, mkdtemp 0700) end with the permissions of a plain write under the
    umask: the LoRA, config, checkpoint folder and its files, and a converted file are 0644 / 0755, so a
    ComfyUI service account can read them (all 0600 / 0700 on bd490ca)."""
    import stat

    out = tmp_path / "run"
    assert main(["train", "--config", DEMO, *train_overrides(
        tiny_model, demo_cache, out, **{"training.max_steps": 2, "training.checkpoint_every": 2})]) == 0
    converted = tmp_path / "kohya.safetensors"
    assert main(["convert", str(out / "pytorch_lora_weights.safetensors"), str(converted), "--to", "kohya",
                 "--model", str(tiny_model)]) == 0
    merged = tmp_path / "merged"
    assert main(["merge", "--model", str(tiny_model), "--lora", str(converted), "--out", str(merged)]) == 0
    ckpt = next((out / "checkpoints").iterdir())
    files = [out / "pytorch_lora_weights.safetensors", out / "lora_comfyui.safetensors", out / "config.yaml",
             converted, *[p for p in ckpt.iterdir() if p.is_file()], *(merged / "transformer").iterdir()]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {str(p): "0o644" for p in files}
    folders = [ckpt, merged, merged / "transformer"]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {str(p): "0o755" for p in folders}
