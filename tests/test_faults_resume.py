"""Runs and resumes at the edges: one run per folder, config changes on resume, broken checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hv_tune.cli import main
from hv_tune.training.checkpoint import TrainerState, list_checkpoints, load_checkpoint, save_checkpoint
from hv_tune.training.optim import build_optimizer, build_scheduler

from .conftest import REPO, train_overrides

LORA = "pytorch_lora_weights.safetensors"


def _args(tiny_model, cache, out, **extra):
    base = {"training.max_steps": 4, "training.checkpoint_every": 2, **extra}
    return ["train", "--config", str(REPO / "configs" / "demo_tiny.yaml"),
            *train_overrides(tiny_model, cache, out, **base)]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_model, demo_cache) -> Path:
    """A finished run: 4 steps, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("run_a") / "run"
    assert main(_args(tiny_model, demo_cache, out)) == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002", "step_00000004"]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_a_second_run_into_a_used_output_dir_is_refused_or_moved_aside(tiny_model, demo_cache, run_a, tmp_path,
                                                                       capsys):
    out = _copy(run_a, tmp_path)
    lora_a = (out / LORA).read_bytes()
    b = _args(tiny_model, demo_cache, out, **{"training.max_steps": 2, "training.checkpoint_every": 1})
    assert main(b) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err and "step_00000004" in err
    assert (out / LORA).read_bytes() == lora_a  # nothing of run A was touched
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert main([*b, "--overwrite"]) == 0
    (aside,) = list((out / "previous-runs").iterdir())
    assert (aside / LORA).read_bytes() == lora_a
    assert [p.name for p in list_checkpoints(aside / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000001", "step_00000002"]
    assert load_checkpoint(out / "checkpoints" / "step_00000002").state.step == 2
    assert (out / LORA).read_bytes() != lora_a


@pytest.mark.parametrize("change, listed", [
    ({"training.seed": 7}, "training.seed: 0 -> 7"),
    ({"training.learning_rate": 5e-4}, "training.learning_rate: 0.001 -> 0.0005"),
    ({"objective.shift": 3.0}, "objective.shift: 1.0 -> 3.0"),
    ({"training.batch_size": 1}, "training.batch_size: 2 -> 1"),
])
def test_resume_with_trajectory_changes_is_refused_with_the_list(tiny_model, demo_cache, run_a, tmp_path, capsys,
                                                                  change, listed):
    out = _copy(run_a, tmp_path)
    code = main([*_args(tiny_model, demo_cache, out, **{"training.max_steps": 6, **change}), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and listed in err and "--resume-anyway" in err and "Traceback" not in err
    assert not (out / "checkpoints" / "step_00000006").exists()


def test_resume_anyway_really_uses_the_new_learning_rate_and_marks_the_run(tiny_model, demo_cache, run_a, tmp_path,
                                                                           capsys):
    out = _copy(run_a, tmp_path)
    args = _args(tiny_model, demo_cache, out, **{"training.max_steps": 6, "training.learning_rate": 5e-4})
    assert main([*args, "--resume", "--resume-anyway"]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000006")
    assert [g["lr"] for g in ckpt.optimizer["param_groups"]] == [5e-4]
    assert [g["initial_lr"] for g in ckpt.optimizer["param_groups"]] == [5e-4]
    assert ckpt.scheduler["base_lrs"] == [5e-4]
    assert ckpt.state.exact is False and "training.learning_rate 0.001 -> 0.0005" in ckpt.state.changes[0]
    saved = (out / "config.yaml").read_text()
    assert saved.startswith("# NOT EXACT") and "learning_rate: 0.0005" in saved
    # a later resume with the same new values is accepted, and the mark stays
    assert main([*_args(tiny_model, demo_cache, out, **{"training.max_steps": 8, "training.learning_rate": 5e-4}),
                 "--resume"]) == 0
    assert (out / "config.yaml").read_text().startswith("# NOT EXACT")


def test_resume_with_safe_changes_is_accepted(tiny_model, demo_cache, run_a, tmp_path, capsys):
    out = _copy(run_a, tmp_path)
    args = _args(tiny_model, demo_cache, out, **{"training.max_steps": 5, "training.checkpoint_every": 1,
                                                 "training.log_every": 2, "training.checkpoints_to_keep": 3})
    assert main([*args, "--resume"]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000005")
    assert ckpt.state.exact is True and not (out / "config.yaml").read_text().startswith("#")


def test_resume_below_the_checkpoint_step_or_with_other_targets_is_named(tiny_model, demo_cache, run_a, tmp_path,
                                                                         capsys):
    out = _copy(run_a, tmp_path)
    lora_a = (out / LORA).read_bytes()
    assert main([*_args(tiny_model, demo_cache, out, **{"training.max_steps": 3}), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "training.max_steps" in err and "step_00000004" in err and "3" in err
    assert (out / LORA).read_bytes() == lora_a
    for key, value in (("lora.targets", "all-linear"), ("lora.rank", 8)):
        code = main([*_args(tiny_model, demo_cache, out, **{"training.max_steps": 6, key: value}),
                     "--resume", "--resume-anyway"])
        err = capsys.readouterr().err
        assert code == 2 and key in err and "cannot change within a run" in err and "Traceback" not in err


def test_broken_newest_checkpoint_is_named_and_the_previous_one_used(tiny_model, demo_cache, run_a, tmp_path, capsys):
    out = _copy(run_a, tmp_path)
    newest = out / "checkpoints" / "step_00000004"
    (newest / "adapter.safetensors").write_bytes(b"")
    # naming it explicitly: an error that names the file and the good alternative
    args = _args(tiny_model, demo_cache, out, **{"training.max_steps": 6})
    assert main([*args, "--resume", str(newest)]) == 2
    err = capsys.readouterr().err
    assert "step_00000004" in err and "adapter.safetensors" in err and "step_00000002" in err
    assert main([*args, "--resume"]) == 0
    text = capsys.readouterr()
    said = text.out + text.err
    assert "step_00000004" in said and "adapter.safetensors" in said and "resumed from" in said
    assert "step_00000002 at step 2" in said
    assert (out / "checkpoints" / "step_00000004.corrupt").is_dir()  # set aside, not deleted
    assert load_checkpoint(out / "checkpoints" / "step_00000006").state.step == 6


def _tiny_optimizer():
    from hv_tune.config import TrainingConfig

    p = torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer([p], TrainingConfig())
    return opt, build_scheduler(opt, TrainingConfig())


def test_keep_last_n_never_deletes_the_last_good_checkpoint(tmp_path):
    from hv_tune.data.sampler import DataState

    root = tmp_path / "checkpoints"
    opt, sched = _tiny_optimizer()
    adapter = {"a": torch.ones(4)}
    save_checkpoint(root, TrainerState(2, DataState(), 4, 4.0, 0), adapter, opt, sched, keep=1)
    broken = save_checkpoint(root, TrainerState(8, DataState(), 4, 4.0, 0), adapter, opt, sched, keep=1)
    (broken / "optimizer.pt").write_bytes(b"PK")  # a newer, broken checkpoint (e.g. from a crashed copy)
    save_checkpoint(root, TrainerState(4, DataState(), 4, 4.0, 0), adapter, opt, sched, keep=1)
    kept = [p.name for p in list_checkpoints(root)]
    assert "step_00000004" in kept and load_checkpoint(root / "step_00000004").state.step == 4
    assert "step_00000002" not in kept  # the older good one goes, as keep=1 says
    state = json.loads((root / "step_00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4


@pytest.mark.slow
def test_a_refused_run_stops_every_process_instead_of_hanging(tiny_model, demo_cache, tmp_path):
    import os
    import subprocess
    import sys

    from .test_multiprocess import _free_port

    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)  # another run's checkpoint
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(REPO / "tests" / "scripts" / "ddp_train.py"), str(out), *train_overrides(tiny_model, demo_cache, out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count("holds another run") >= 2  # raised on both ranks, not only the main one


def test_an_override_right_after_resume_is_an_override(tiny_model, demo_cache, run_a, tmp_path, capsys):
    """`--resume training.max_steps=5` (no PATH) resumes with that override instead of looking for a
    checkpoint folder named 'training.max_steps=5'."""
    out = _copy(run_a, tmp_path)
    args = [a for a in _args(tiny_model, demo_cache, out, **{"training.checkpoint_every": 1})
            if not a.startswith("training.max_steps=")]
    assert main([*args[:3], "--resume", "training.max_steps=5", *args[3:]]) == 0
    assert load_checkpoint(sorted((out / "checkpoints").glob("step_*"))[-1]).state.step == 5
