"""Small pieces of the trainer: schedule, dtypes, step RNG, logs."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hv_tune.config import load_config
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.models import LoadOptions
from hv_tune.training.step import step_generator


def test_step_generator_depends_on_position_only():
    def draw(*a):
        return torch.rand(3, generator=step_generator(*a))

    assert torch.equal(draw(1, 5, 0, 0), draw(1, 5, 0, 0))
    assert not torch.equal(draw(1, 5, 0, 0), draw(1, 6, 0, 0))
    assert not torch.equal(draw(1, 5, 0, 0), draw(1, 5, 1, 0))
    assert not torch.equal(draw(1, 5, 0, 0), draw(1, 5, 0, 1))


def test_adapter_float32_over_bf16_base(spec, tiny_model):
    model = spec.load_transformer(LoadOptions(str(tiny_model), dtype=torch.bfloat16))
    cfg = load_config(None, [f"model.path={tiny_model}"])
    add_lora(model, peft_config(cfg.lora, resolve_targets(spec, model, "attn")))
    lora = lora_parameters(model)
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert model.gradient_checkpointing is False  # enabled by the trainer, per config


def test_training_writes_tensorboard_logs_and_checkpoints(tiny_model, demo_cache, tmp_path):
    from hv_tune.training.trainer import train

    from .conftest import train_overrides

    out = tmp_path / "run"
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, out, **{
        "training.max_steps": 4, "training.checkpoint_every": 1, "training.checkpoints_to_keep": 2}))
    train(cfg)
    events = list((out / "logs").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"loss", "lr", "grad_norm"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]


def _schedule_replay(max_steps: int, warmup: int, schedule: str, lr: float = 1e-3) -> list[float]:
    """The lr each optimizer step uses under the project's schedule (read before the step, as PyTorch applies it)."""
    from types import SimpleNamespace

    from hv_tune.training.optim import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, SimpleNamespace(lr_warmup_steps=warmup, max_steps=max_steps, lr_scheduler=schedule,
                                                 lr_num_cycles=1, lr_power=1.0))
    used = []
    for _ in range(max_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


def test_schedule_lr_per_step_is_diffusers():
    """The numbers of diffusers' schedules (linear warmup from 0, then constant or cosine to 0 at max_steps):
    step 1 of a 5-step warmup trains at 0, the last cosine step at 0.146 * lr, not 0."""
    assert _schedule_replay(7, 5, "constant_with_warmup") == pytest.approx([0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3])
    cos = [0, 0.5e-3, 1e-3, 0.5e-3 * (1 + math.cos(math.pi / 4)), 0.5e-3, 0.5e-3 * (1 - math.cos(math.pi / 4))]
    assert _schedule_replay(6, 2, "cosine") == pytest.approx(cos)


@pytest.mark.parametrize("warmup, schedule, steps", [(5, "constant_with_warmup", 7), (2, "cosine", 6)])
def test_logged_lr_is_the_lr_each_step_used(tiny_model, demo_cache, tmp_path, capsys, warmup, schedule, steps):
    """TensorBoard's `lr` at step n and the progress bar show the lr optimizer step n ran with (read from the
    optimizer as it steps), not the next step's: whatever the schedule is."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from hv_tune.training.trainer import train

    from .conftest import train_overrides

    used: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    out = tmp_path / "run"
    try:
        train(load_config(None, train_overrides(tiny_model, demo_cache, out, **{
            "training.max_steps": steps, "training.lr_warmup_steps": warmup, "training.lr_scheduler": schedule,
            "training.log_every": 1, "training.batch_size": 1})))
    finally:
        hook.remove()
    assert len(used) == steps
    assert used == pytest.approx(_schedule_replay(steps, warmup, schedule))  # the run follows the project's schedule
    events = EventAccumulator(str(out / "logs" / "hv-tune"))
    events.Reload()
    logged = events.Scalars("lr")
    assert [e.step for e in logged] == list(range(1, steps + 1))
    assert [e.value for e in logged] == pytest.approx(used, rel=1e-6)  # TensorBoard stores float32
    shown = re.findall(r"lr=([0-9.e+-]+)", capsys.readouterr().err)
    assert shown and float(shown[-1]) == pytest.approx(used[-1], rel=1e-2)  # the bar's last lr: 3 digits
