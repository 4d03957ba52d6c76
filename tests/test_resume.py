"""Exact resume after SIGKILL, atomic checkpoints, and NaN stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hv_tune.cli import main
from hv_tune.io import atomic_directory
from hv_tune.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

from .conftest import REPO, train_overrides, write_fixed_latent_cache

STEPS = 40


def _cmd(tiny_model, cache, out, *extra):
    overrides = train_overrides(tiny_model, cache, out, **{
        "training.max_steps": STEPS, "training.checkpoint_every": 3, "training.gradient_accumulation_steps": 2,
        "lora.dropout": 0.1, "training.lr_scheduler": "cosine", "training.lr_warmup_steps": 4,
        "training.batch_size": 2, "data.num_workers": 0})
    return [sys.executable, str(REPO / "finetune.py"), "train", "--config", str(REPO / "configs" / "demo_tiny.yaml"),
            *overrides, *extra]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_is_bit_identical(tiny_model, demo_cache, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(tiny_model, demo_cache, ref), check=True, env=_env(), capture_output=True)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny_model, demo_cache, run), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # right after the first checkpoint was renamed into place
    proc.wait()
    assert not (run / "pytorch_lora_weights.safetensors").exists(), "run finished before the kill"
    killed_at = load_checkpoint(latest_checkpoint(run / "checkpoints")).state.step
    assert 0 < killed_at < STEPS

    resumed = subprocess.run(_cmd(tiny_model, demo_cache, run, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = (ref / "pytorch_lora_weights.safetensors").read_bytes()
    b = (run / "pytorch_lora_weights.safetensors").read_bytes()
    assert a == b
    assert len(list_checkpoints(run / "checkpoints")) <= 2  # checkpoints_to_keep from the demo config


def test_half_written_checkpoint_is_never_picked(tmp_path):
    root = tmp_path / "checkpoints"

    def fill_ok(d: Path):
        (d / "trainer_state.json").write_text("{}")

    def fill_dies(d: Path):
        (d / "adapter.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # the process is interrupted mid-save

    atomic_directory(root / "step_00000003", fill_ok)
    with pytest.raises(KeyboardInterrupt):
        atomic_directory(root / "step_00000006", fill_dies)
    # a SIGKILL leaves the temporary folder behind: it must be ignored too
    (root / ".tmp-step_00000009.abc").mkdir()
    (root / ".tmp-step_00000009.abc" / "trainer_state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(root)] == ["step_00000003"]
    assert latest_checkpoint(root).name == "step_00000003"


def test_resume_from_missing_path_names_it(tiny_model, demo_cache, tmp_path, capsys):
    code = main(["train", "--config", str(REPO / "configs" / "demo_tiny.yaml"),
                 *train_overrides(tiny_model, demo_cache, tmp_path / "run"), "--resume", str(tmp_path / "nope")])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(spec, tiny_model, tmp_path, capsys):
    good = [torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    bad = torch.full((4, 2, 4, 4), float("nan"))
    cache = write_fixed_latent_cache(spec, tiny_model, tmp_path / "cache", [*good, bad], ["a red ball"] * 4)
    out = tmp_path / "run"
    code = main(["train", "--config", str(REPO / "configs" / "demo_tiny.yaml"), *train_overrides(
        tiny_model, cache, out, **{"training.batch_size": 1, "training.checkpoint_every": 1, "training.max_steps": 8})])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite loss" in err and "item3" in err and "--resume" in err
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    step = int(err.split("at step ")[1].split()[0])
    last = latest_checkpoint(out / "checkpoints")
    if step == 1:
        assert last is None and "none yet" in err
    else:
        ckpt = load_checkpoint(last)  # intact and loadable
        assert ckpt.state.step == step - 1 and str(last) in err
        assert all(torch.isfinite(v).all() for v in ckpt.adapter.values())
