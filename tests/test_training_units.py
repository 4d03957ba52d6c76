"""Small pieces of the trainer: schedule, dtypes, step RNG, logs."""

from __future__ import annotations

import pytest
import torch

from hv_tune.config import load_config
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.models import LoadOptions
from hv_tune.training.optim import lr_factor
from hv_tune.training.step import step_generator


def test_warmup_then_constant_or_cosine():
    assert [lr_factor(s, 4, 20, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_factor(0, 0, 10, "constant") == 1.0


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
