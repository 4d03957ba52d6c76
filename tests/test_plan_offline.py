"""`plan` without a network: the published checkpoints' transformer configs are facts kept with each
family; without a folder or facts, the error says the hub could not be reached, once and at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from hv_tune.cli import main
from hv_tune.models.hunyuan_video.plan import PUBLISHED as HV_PUBLISHED
from hv_tune.models.hunyuan_video_1_5.plan import PUBLISHED as HV15_PUBLISHED

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["hunyuan_video_lora.yaml", "hunyuan_video_1_5_lora.yaml", "hunyuan_video_1_5_i2v_lora.yaml"]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def _linears(cls, config: dict) -> dict[str, tuple[int, int]]:
    with torch.device("meta"):
        model = cls.from_config(config)
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_published_configs_have_the_released_layers():
    """Every published config builds the layers of diffusers' default config (the released models),
    and the known counts: 13B for HunyuanVideo, 8.3B for each 1.5 checkpoint."""
    from diffusers import HunyuanVideo15Transformer3DModel, HunyuanVideoTransformer3DModel

    for published, cls, billions in ((HV_PUBLISHED, HunyuanVideoTransformer3DModel, 12.8),
                                     (HV15_PUBLISHED, HunyuanVideo15Transformer3DModel, 8.3)):
        default = _linears(cls, {})
        for hub_id, config in published.items():
            assert _linears(cls, config) == default, hub_id
            with torch.device("meta"):
                n = sum(p.numel() for p in cls.from_config(config).parameters())
            assert abs(n / 1e9 - billions) < 0.05, (hub_id, n)
    assert {c["task_type"] for c in HV15_PUBLISHED.values()} == {"t2v", "i2v"}


# every shipped config offline; one also with a network that does not reach the hub (same code path
# after the facts are found: ~30 s each on a 2-core machine, so not all six)
CASES = [(c, {"HF_HUB_OFFLINE": "1"}) for c in SHIPPED] + [(SHIPPED[1], {"HF_ENDPOINT": UNREACHABLE})]


@pytest.mark.parametrize(("config", "env"), CASES, ids=[f"{c}-{next(iter(e))}" for c, e in CASES])
def test_plan_of_each_shipped_config_without_the_hub(config, env, tmp_path, monkeypatch, capsys):
    """The shipped configs name hub ids: the plan prints its table and a recommendation from the facts."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    small = ["data.frame_buckets=[1]", "data.resolution=128", f"output_dir={tmp_path / 'run'}",
             f"data.cache_dir={tmp_path / 'cache'}"]  # a small bucket keeps the meta step short
    assert main(["plan", "--config", str(REPO / "configs" / config), "--gpu-memory", "80GB", *small]) == 0
    out = capsys.readouterr().out
    assert "largest bucket 1x128x128" in out and "\n  24gb " in out
    assert "recommended memory.preset: 80gb" in out  # one 128 px frame fits every preset
    assert "cache on disk:" in out and "caching: encoders load one at a time" in out


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE}], ids=["offline", "unreachable"])
def test_unknown_hub_id_without_the_hub_fails_once_and_at_once(env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    code = main(["plan", "--config", str(REPO / "configs" / SHIPPED[1]), "--gpu-memory", "24GB",
                 "model.path=someone/not-published-1.5", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 15
    assert err.count("the hub could not be reached") == 1 and "someone/not-published-1.5" in err
    assert "config.json" in err and "does not appear to have" not in err
