"""training.optimizer / lr_scheduler / report_to: each optimizer resumes exactly after a kill, each schedule is
diffusers' at every step, the trackers write where they say."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hv_tune.config import load_config
from hv_tune.errors import ConfigError
from hv_tune.training.checkpoint import latest_checkpoint, load_checkpoint
from hv_tune.training.trainer import train

from .conftest import train_overrides

LORA = "pytorch_lora_weights.safetensors"


class Killed(Exception):
    """Stands for SIGKILL: the process dies inside an optimizer step, after its last checkpoint."""


def _cfg(tiny_model, demo_cache, out, **extra):
    base = {"training.max_steps": 3, "training.checkpoint_every": 2, "training.batch_size": 1}
    return load_config(None, train_overrides(tiny_model, demo_cache, out, **{**base, **extra}))


def _train_killed_at(cfg, step: int) -> None:
    """Train until optimizer step ``step`` (1-based) starts, then die without saving anything."""
    calls = []

    def kill(opt, args, kwargs):
        calls.append(1)
        if len(calls) == step:
            raise Killed

    hook = register_optimizer_step_pre_hook(kill)
    try:
        with pytest.raises(Killed):
            train(cfg)
    finally:
        hook.remove()


def _train_recording_lr(cfg) -> list[float]:
    """Train; the lr each optimizer step ran with (read as the step starts)."""
    used: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    try:
        train(cfg)
    finally:
        hook.remove()
    return used


OPTIMIZERS = [
    ("adamw", {"training.lr_scheduler": "cosine", "training.lr_warmup_steps": 1}),
    ("prodigy", {"training.lr_scheduler": "cosine"}),
    ("adafactor", {"training.lr_scheduler": "linear", "training.lr_warmup_steps": 1}),
    ("came", {"training.lr_scheduler": "polynomial", "training.lr_power": 2.0}),
    ("adamw_schedulefree", {"training.lr_scheduler": "constant_with_warmup", "training.lr_warmup_steps": 1}),
    pytest.param("adamw8bit", {"training.lr_scheduler": "cosine"}, marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("name, extra", OPTIMIZERS)
def test_each_optimizer_resumes_bit_identically_after_a_kill(tiny_model, demo_cache, tmp_path, name, extra):
    """3 steps straight vs. killed in step 3 (last checkpoint: step 2) and resumed: the same LoRA bytes.
    The checkpoint holds the optimizer's own state (Prodigy's d, schedule-free's z, saved in eval mode);
    TensorBoard's lr at step n is the lr optimizer step n ran with."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if name == "adamw8bit" and not torch.cuda.is_available():
        pytest.skip("adamw8bit needs CUDA")
    extra = {"training.optimizer": name, **extra}
    if name == "prodigy":
        extra["training.learning_rate"] = "null"  # unset: the optimizer's default
    ref = tmp_path / "ref"
    used = _train_recording_lr(_cfg(tiny_model, demo_cache, ref, **extra))
    events = EventAccumulator(str(ref / "logs" / "hv-tune"))  # the tensorboard tracker (report_to's default)
    events.Reload()
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(used, rel=1e-6) and len(used) == 3
    run = tmp_path / "run"
    _train_killed_at(_cfg(tiny_model, demo_cache, run, **extra), 3)
    assert not (run / LORA).exists()
    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert ckpt.state.step == 2 and ckpt.state.lr_schedule == "diffusers"
    group = ckpt.optimizer["param_groups"][0]
    if name == "prodigy":
        assert used[0] == 1.0  # an unset learning_rate is 1.0 for prodigy (its README)
        assert group["k"] == 2 and group["d_numerator"] > 0  # its learning-rate estimate's state is saved
        assert group["use_bias_correction"] and group["safeguard_warmup"]  # the guide's settings
        assert len(events.Scalars("prodigy_d")) == 3
    if name == "adamw_schedulefree":
        assert group["train_mode"] is False and group["k"] == 2  # saved at its averaged weights x
        assert all("z" in s for s in ckpt.optimizer["state"].values())
    if name == "adafactor":
        assert group["relative_step"] is False and group["lr"] > 0
    result = train(_cfg(tiny_model, demo_cache, run, **extra), resume=True)
    assert result.steps == 3
    assert (run / LORA).read_bytes() == (ref / LORA).read_bytes()
    first = load_checkpoint(latest_checkpoint(ref / "checkpoints"))
    assert any(not torch.equal(v, ckpt.adapter[k]) for k, v in result.adapter.items())  # step 3 trained
    assert first.state.step == 2


@pytest.mark.parametrize("schedule, warmup", [
    ("constant", 0), ("constant_with_warmup", 3), ("linear", 2), ("cosine", 3), ("cosine_with_restarts", 1),
    ("polynomial", 2),
])
def test_each_schedule_is_diffusers_at_every_step(schedule, warmup):
    """The lr each of 12 steps uses equals diffusers' own schedule function's (exactly: the same LambdaLR);
    and a few hand-made numbers pin diffusers' conventions (warmup from 0)."""
    from types import SimpleNamespace

    from diffusers.optimization import get_scheduler

    from hv_tune.training.optim import build_scheduler

    def replay(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = make(opt)
        used = []
        for _ in range(12):
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return used

    cfg = SimpleNamespace(lr_scheduler=schedule, lr_warmup_steps=warmup, max_steps=12, lr_num_cycles=2, lr_power=2.0)
    ours = replay(lambda opt: build_scheduler(opt, cfg))
    theirs = replay(lambda opt: get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=12,
                                              num_cycles=2, power=2.0))
    assert ours == theirs
    if warmup:
        assert ours[0] == 0.0 and ours[1] == pytest.approx(1e-3 / warmup)
    if schedule == "cosine":
        assert ours[-1] == pytest.approx(0.5e-3 * (1 - math.cos(math.pi / 9)))
    if schedule == "cosine_with_restarts":  # 2 cycles of 5.5 steps after 1 warmup step: back up at step 7
        assert ours[7] > ours[6]


@pytest.mark.parametrize("overrides, key", [
    (["training.lr_scheduler=constant", "training.lr_warmup_steps=5"], "training.lr_warmup_steps"),
    (["training.optimizer=adamw_schedulefree", "training.lr_scheduler=cosine"], "training.lr_scheduler"),
    (["training.optimizer=prodigy", "training.optimizer_args={d_coeff: 2}"], "training.optimizer_args.d_coeff"),
    (["training.optimizer=adafactor", "training.optimizer_args={params: 1}"], "training.optimizer_args.params"),
    (["training.lr_scheduler=cosine_with_restarts", "training.lr_num_cycles=0"], "training.lr_num_cycles"),
    (["training.optimizer=sgd"], "training.optimizer"),
])
def test_bad_optimizer_or_schedule_settings_name_the_key(tiny_model, overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.path={tiny_model}", *overrides])
    assert key in str(e.value)


def test_unset_learning_rate_follows_the_optimizer_and_optimizer_args_reach_it(tiny_model):
    from hv_tune.training.optim import build_optimizer

    assert load_config(None, [f"model.path={tiny_model}"]).training.learning_rate == 1e-4
    cfg = load_config(None, [f"model.path={tiny_model}", "training.optimizer=prodigy",
                             "training.optimizer_args={d_coef: 2.0, use_bias_correction: false}"])
    assert cfg.training.learning_rate == 1.0
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.training)
    group = opt.param_groups[0]
    assert (group["d_coef"], group["use_bias_correction"], group["safeguard_warmup"]) == (2.0, False, True)
    assert group["weight_decay"] == cfg.training.weight_decay and group["betas"] == (0.9, 0.999)


def test_wandb_without_the_package_names_the_key_and_the_command(tiny_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.path={tiny_model}", "training.report_to=wandb"])
    assert "training.report_to" in str(e.value) and "pip install" in str(e.value)


@pytest.mark.parametrize("warmup", [0, 3])
def test_a_checkpoint_of_the_old_schedule_resumes_only_where_the_lr_is_the_same(tiny_model, tmp_path, warmup):
    """hv-tune's own schedule warmed up from lr/N, diffusers' from 0: a checkpoint written before (no
    ``lr_schedule`` in trainer_state.json) resumes exactly without warmup, and needs --resume-anyway with one
    (the message names training.lr_warmup_steps; the resumed run is then marked as not exact)."""
    import yaml

    from hv_tune.config import to_dict
    from hv_tune.data.sampler import DataState
    from hv_tune.training.checkpoint import Checkpoint, TrainerState
    from hv_tune.training.resume import check_resume

    schedule = "constant_with_warmup" if warmup else "constant"
    cfg = load_config(None, [f"model.path={tiny_model}", f"output_dir={tmp_path / 'run'}",
                             f"training.lr_scheduler={schedule}", f"training.lr_warmup_steps={warmup}"])
    old = to_dict(cfg)
    old["training"]["lr_scheduler"] = "constant"  # what the old config said (its constant had a warmup)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    state = TrainerState(10, DataState(), cfg.lora.rank, cfg.lora.alpha, cfg.training.seed)  # lr_schedule ""
    ckpt = Checkpoint(tmp_path, state, {}, {}, {}, {})
    if not warmup:
        assert check_resume(ckpt, cfg, tmp_path / "none.yaml", anyway=False) == []
        return
    with pytest.raises(ConfigError) as e:
        check_resume(ckpt, cfg, tmp_path / "none.yaml", anyway=False)
    assert "training.lr_warmup_steps" in str(e.value) and "--resume-anyway" in str(e.value)
    changes = check_resume(ckpt, cfg, tmp_path / "none.yaml", anyway=True)
    assert any("lr_warmup_steps" in c for c in changes)


def test_wandb_runs_offline_unless_the_user_says_otherwise(tiny_model, demo_cache, tmp_path, monkeypatch):
    """report_to=all: TensorBoard event files and an offline wandb run, both under OUTPUT_DIR/logs; no login."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # recorded, so the test leaves the environment as it found it
    monkeypatch.delenv("WANDB_MODE")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(_cfg(tiny_model, demo_cache, out, **{"training.max_steps": 1, "training.checkpoint_every": 0,
                                                 "training.report_to": "all"}))
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert list((out / "logs" / "hv-tune").glob("events.out.tfevents*"))
    assert list((out / "logs" / "wandb").glob("offline-run-*"))


def test_schedule_free_saves_do_not_change_the_training(tiny_model, demo_cache, tmp_path):
    """Saving schedule-free AdamW's averaged weights (a checkpoint every step) leaves the trajectory as it is:
    the same final LoRA as a run without checkpoints (eval() then train() alone is not an exact round trip)."""
    extra = {"training.optimizer": "adamw_schedulefree", "training.max_steps": 3, "training.learning_rate": 1e-2}
    train(_cfg(tiny_model, demo_cache, tmp_path / "a", **{**extra, "training.checkpoint_every": 1}))
    train(_cfg(tiny_model, demo_cache, tmp_path / "b", **{**extra, "training.checkpoint_every": 0}))
    assert (tmp_path / "a" / LORA).read_bytes() == (tmp_path / "b" / LORA).read_bytes()
