"""Memory plan: the meta-device prediction against real CPU tensors, the plan verb, preset auto, refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hv_tune.cli import main
from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, peft_config, resolve_targets
from hv_tune.memory.estimate import profile_step
from hv_tune.models import LoadOptions
from hv_tune.training.plan import GiB, config_for_training, parse_memory, plan_config

BUCKET = (9, 64, 64)  # frames, height, width (pixels): 3 x 8 x 8 latents


def _lora_model(spec, model, ckpt: str):
    add_lora(model, peft_config(LoraConfig(rank=4), resolve_targets(spec, model, "attn")))
    if ckpt != "none":
        model.enable_gradient_checkpointing()
    return model.train()


def _real_like(inputs: dict, seed: int = 0) -> dict:
    """CPU tensors with the shapes and dtypes of the meta inputs (mask all ones, as planned)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in inputs.items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
        elif k in ("timestep", "guidance", "encoder_attention_mask"):
            out[k] = torch.full(v.shape, 1.0 if k == "encoder_attention_mask" else 500.0, dtype=v.dtype)
        else:
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
    return out


@pytest.mark.parametrize("ckpt", ["none", "full", "offload"])
def test_meta_prediction_matches_real_tensors_tiny(spec, tiny_model, ckpt):
    """Bytes saved for backward are equal, the live-bytes peak within 2%, for the tiny model."""
    meta, inputs = spec.plan_model(str(tiny_model), *BUCKET, 1, torch.float32)
    predicted = profile_step(_lora_model(spec, meta, ckpt), inputs, offload=ckpt == "offload")
    real = _lora_model(spec, spec.load_transformer(LoadOptions(str(tiny_model))), ckpt)
    measured = profile_step(real, _real_like(inputs), offload=ckpt == "offload")
    assert predicted.saved == measured.saved > 0
    assert predicted.grads == measured.grads > 0
    assert abs(predicted.peak - measured.peak) <= 0.02 * measured.peak, (predicted, measured)
    if ckpt == "full":  # checkpointing keeps far less than plain autograd
        plain = profile_step(_lora_model(spec, spec.plan_model(str(tiny_model), *BUCKET, 1, torch.float32)[0],
                                         "none"), inputs)
        assert predicted.saved < plain.saved / 3


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_full_width_prediction_matches_measured_peak(tmp_path):
    """1 double + 1 single block at the real width (3072), fp32 on CPU: predicted step peak vs the
    process's peak-RSS growth over a real step, within 10%."""
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = dict(num_layers=1, num_single_layers=1, num_refiner_layers=1, text_embed_dim=64, pooled_projection_dim=32)
    with torch.device("meta"):
        HunyuanVideoTransformer3DModel(**cfg).save_config(tmp_path / "transformer")
    script = Path(__file__).parent / "scripts" / "plan_peak_rss.py"
    # 1 x 32 x 32 latents: 256 video + 256 text tokens
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "1", "256", "256", "none", "full"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for ckpt in ("none", "full"):
        assert got[ckpt]["predicted"] > 100 * 2**20  # big enough for RSS to measure it
        assert abs(got[ckpt]["predicted"] - got[ckpt]["measured"]) <= 0.10 * got[ckpt]["measured"], got
    assert got["full"]["measured"] < got["none"]["measured"]  # checkpointing keeps less


def _write_config(tmp_path: Path, model: Path, **memory) -> Path:
    cfg = {"model": {"path": str(model)}, "output_dir": str(tmp_path / "run"),
           "data": {"cache_dir": str(tmp_path / "no-cache"), "frame_buckets": [1, 9], "resolution": 64},
           "memory": memory}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_verb_prints_a_row_per_preset(tiny_model, tmp_path, capsys):
    config = _write_config(tmp_path, tiny_model)
    assert main(["plan", "--config", str(config), "--gpu-memory", "16GB"]) == 0
    out = capsys.readouterr().out
    assert "largest bucket 9x64x64" in out
    for label in ("as given", "16gb", "24gb", "48gb", "80gb"):
        assert f"\n  {label} " in out
    assert "card: 16.00 GiB; recommended memory.preset: 80gb" in out  # a tiny model fits any preset
    assert not (tmp_path / "run").exists()


def test_plan_uses_the_cache_largest_bucket(spec, tiny_model, demo_cache, tmp_path):
    config = _write_config(tmp_path, tiny_model)
    plan, _ = plan_config(config, [f"data.cache_dir={demo_cache}"], "24GB")
    assert plan.bucket == (5, 32, 32) and plan.bucket_source.startswith("cache")


def test_auto_preset_picks_the_fastest_that_fits(tiny_model, tmp_path):
    config = _write_config(tmp_path, tiny_model, preset="auto")
    plan, _ = plan_config(config, [], "80GB")
    assert [r.label for r in plan.rows] == ["16gb", "24gb", "48gb", "80gb"]  # no "as given" row for auto
    fp8, bf16 = plan.row("24gb"), plan.row("48gb")
    assert fp8.weights.get("fp8", 0) > 0 and bf16.weights.get("fp8", 0) == 0
    assert fp8.total < bf16.total
    card = (fp8.total + bf16.total) // 2  # fits the fp8 preset, not the bf16 ones
    cfg, text = config_for_training(config, [], f"{card / 2**20:.3f}MB", device="cuda")
    assert cfg.memory.preset == "24gb" and cfg.model.base_dtype == "fp8"
    assert "memory.preset auto -> 24gb" in text
    cfg, _ = config_for_training(config, [], "80GB", device="cuda")
    assert cfg.memory.preset == "80gb" and cfg.model.base_dtype == "bf16"


@pytest.mark.parametrize("card", ["0.001GB", "1MB"])
def test_train_refuses_before_loading_weights(tiny_model, tmp_path, capsys, card):
    config = _write_config(tmp_path, tiny_model)
    assert main(["train", "--config", str(config), "--gpu-memory", card]) == 2
    err = capsys.readouterr().err
    assert "predicted to allocate" in err and "memory plan" in err
    assert not (tmp_path / "run").exists()  # nothing set up, no weights loaded


def test_train_refuses_from_the_config_key(tiny_model, tmp_path):
    from hv_tune.errors import ConfigError

    config = _write_config(tmp_path, tiny_model, gpu_memory="2MB", preset="auto")
    with pytest.raises(ConfigError, match="no preset is predicted to fit"):
        config_for_training(config, [], device="cuda")
    assert not (tmp_path / "run").exists()


def test_auto_picks_no_gpu_preset_on_the_cpu_and_a_set_one_is_warned_about(tiny_model, tmp_path):
    """Without CUDA training runs on the CPU: auto -> none even where a card is declared; a GPU
    preset that is set stays as set, with a warning naming the key and the slowdown."""
    cfg, text = config_for_training(_write_config(tmp_path, tiny_model, preset="auto"), [], "80GB", device="cpu")
    assert cfg.memory.preset == "none" and cfg.model.base_dtype != "fp8"
    assert "no CUDA device" in text and "no GPU preset" in text
    cfg, text = config_for_training(_write_config(tmp_path, tiny_model, preset="24gb"), [], "80GB", device="cpu")
    assert cfg.memory.preset == "24gb" and cfg.model.base_dtype == "fp8"
    assert "warning: config key 'memory.preset' is 24gb" in text and "8x slower" in text
    _, text = config_for_training(_write_config(tmp_path, tiny_model, preset="none"), [], "80GB", device="cpu")
    assert "warning" not in text


def test_parse_memory():
    assert parse_memory("24GB") == parse_memory("24 GiB") == parse_memory(24) == 24 * GiB
    assert parse_memory("512MB") == 512 * 2**20
    with pytest.raises(Exception, match="size like 16GB"):
        parse_memory("lots")


def test_bad_card_memory_names_the_key(tiny_model, tmp_path, capsys):
    config = _write_config(tmp_path, tiny_model, gpu_memory="lots")
    assert main(["plan", "--config", str(config)]) == 2
    assert "memory.gpu_memory" in capsys.readouterr().err
    assert main(["plan", "--config", str(config), "--gpu-memory=-4GB"]) == 2
    assert "--gpu-memory" in capsys.readouterr().err


def test_plan_has_help():
    out = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "finetune.py"), "plan", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--gpu-memory" in out.stdout


def test_unresolved_auto_is_refused_by_the_runtime(tiny_model, tmp_path):
    from hv_tune.config import load_config
    from hv_tune.errors import ConfigError
    from hv_tune.memory.runtime import MemoryRuntime

    cfg = load_config(_write_config(tmp_path, tiny_model, preset="auto"), [])
    with pytest.raises(ConfigError, match="memory.preset"):
        MemoryRuntime.from_config(cfg, "cpu")


def test_weights_per_preset_match_fp8_storage_and_swap(spec, tmp_path):
    """Full-width meta model (2 double + 2 single blocks): the plan's weight bytes against the
    bytes fp8 storage really leaves (diffusers' hooks applied on meta), swap keeping two blocks."""
    from diffusers import HunyuanVideoTransformer3DModel

    from hv_tune.config import load_config
    from hv_tune.memory.fp8 import apply_fp8_storage, storage_bytes
    from hv_tune.training.plan import Planner

    with torch.device("meta"):
        HunyuanVideoTransformer3DModel(num_layers=2, num_single_layers=2).save_config(tmp_path / "transformer")
    cfgs = {p: load_config(None, [f"model.path={tmp_path}", f"memory.preset={p}"]) for p in ("16gb", "24gb", "48gb")}
    planner = Planner(spec, cfgs["48gb"], (1, 64, 64))
    rows = {p: planner.predict(p, c) for p, c in cfgs.items()}

    model, _ = spec.plan_model(str(tmp_path), 1, 64, 64, 1, torch.bfloat16)
    add_lora(model, peft_config(LoraConfig(), resolve_targets(spec, model, "attn")))
    frozen_bf16 = sum(p.numel() * 2 for p in model.parameters() if not p.requires_grad)
    apply_fp8_storage(model, spec.fp8_keep_patterns("transformer", model), torch.bfloat16)
    lora = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    blocks = [storage_bytes(b) - sum(p.numel() * 4 for p in b.parameters() if p.requires_grad)
              for b in spec.transformer_blocks(model)]
    frozen_fp8 = storage_bytes(model) - lora

    assert sum(rows["48gb"].weights.values()) == frozen_bf16 and set(rows["48gb"].weights) == {"bf16"}
    assert sum(rows["24gb"].weights.values()) == frozen_fp8 < 0.8 * frozen_bf16  # embedders stay bf16
    assert rows["16gb"].blocks_to_swap == 4 and rows["16gb"].weights_cpu == sum(blocks)
    assert sum(rows["16gb"].weights.values()) == frozen_fp8 - sum(blocks) + sum(sorted(blocks)[-2:])
    assert rows["24gb"].checkpointing == "offload" and rows["48gb"].checkpointing == "full"
    assert rows["24gb"].activations < rows["48gb"].activations  # offload leaves the checkpoints in CPU RAM
    assert rows["24gb"].fp8_copies > 0 == rows["48gb"].fp8_copies


def test_plan_says_the_bucket_source_encoders_and_cache_disk(tiny_model, demo_cache, demo_folder, tmp_path):
    """Under the table: the largest bucket's source file, the cache stage's encoder peak, and the cache's
    disk size: summed from the built cache's files, or per item x the items the sources hold."""
    config = _write_config(tmp_path, tiny_model)
    plan, _ = plan_config(config, [f"data.cache_dir={demo_cache}"], "24GB")
    assert plan.bucket_source.startswith("cache") and ", source " in plan.bucket_source
    disk = next(n for n in plan.notes if n.startswith("cache on disk"))
    total = sum(f.stat().st_size for f in Path(demo_cache).rglob("*.safetensors"))
    assert f"7 items: {total / 1e6:.2f} MB (measured" in disk
    assert "; encoding ~" in disk and "min on this machine" in disk  # the build's summary.json timed it
    assert any(n.startswith("caching: encoders load one at a time; peak") and "Llama 3 8B" in n for n in plan.notes)
    plan, _ = plan_config(config, [f"data.sources=[{{path: {demo_folder}}}]"], "24GB")
    disk = next(n for n in plan.notes if n.startswith("cache on disk"))
    assert "7 items:" in disk and "at most" in disk and "9x64x64" in disk
    plan, _ = plan_config(config, [], "24GB")
    assert "no data.sources set" in next(n for n in plan.notes if n.startswith("cache on disk"))
