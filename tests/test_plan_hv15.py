"""Memory plan of HunyuanVideo 1.5 (text- and image-to-video): the meta step, whose forward reads
tensor values, against real CPU tensors; the block extrapolation against the full step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, peft_config, resolve_targets
from hv_tune.memory.estimate import profile_step, profile_step_extrapolated
from hv_tune.memory.known import KnownValues
from hv_tune.models import LoadOptions, get_spec

BUCKET = (9, 64, 64)  # frames, height, width (pixels): 3 x 4 x 4 latents (16x VAE)
FAMILIES = ["hunyuan-video-1.5", "hunyuan-video-1.5-i2v"]


def _lora_model(spec, model, ckpt: str):
    add_lora(model, peft_config(LoraConfig(rank=4), resolve_targets(spec, model, "attn")))
    if ckpt != "none":
        model.enable_gradient_checkpointing()
    return model.train()


def _real_like(inputs: dict, known: KnownValues, seed: int = 0) -> dict:
    """CPU tensors with the meta inputs' shapes; the constants the plan knows (masks ones, image
    embeddings zeros for text-to-video) hold the same values, the non-zero stand-in becomes random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in inputs.items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
        elif known.value(v) is not None and not (k == "image_embeds" and known.value(v)):
            out[k] = torch.full(v.shape, known.value(v), dtype=v.dtype)
        else:
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
    return out


@pytest.fixture(scope="module")
def folders(hv15_tiny, hv15_i2v_tiny):
    return {"hunyuan-video-1.5": hv15_tiny, "hunyuan-video-1.5-i2v": hv15_i2v_tiny}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("ckpt", ["none", "full", "offload"])
def test_meta_prediction_matches_real_tensors_tiny(folders, name, ckpt):
    """The meta step runs (the branch and the mask counts come from the plan's constants): bytes saved
    for backward and gradients equal, the live-bytes peak within 2% of the real CPU step's."""
    spec, folder = get_spec(name), str(folders[name])
    known = KnownValues()
    with known:
        meta, inputs = spec.plan_model(folder, *BUCKET, 1, torch.float32)
    assert known.value(inputs["image_embeds"]) == (0.0 if name == "hunyuan-video-1.5" else 1.0)
    assert known.value(inputs["encoder_attention_mask"]) == 1.0  # every text token kept
    with known:
        predicted = profile_step(_lora_model(spec, meta, ckpt), inputs, offload=ckpt == "offload")
    real = _lora_model(spec, spec.load_transformer(LoadOptions(folder)), ckpt)
    measured = profile_step(real, _real_like(inputs, known), offload=ckpt == "offload")
    assert predicted.saved == measured.saved > 0
    assert predicted.grads == measured.grads > 0
    assert abs(predicted.peak - measured.peak) <= 0.02 * measured.peak, (predicted, measured)


def test_a_meta_value_the_plan_does_not_know_is_refused(folders):
    """Inputs built without the mode: the branch on ``image_embeds`` cannot be taken, and the error
    says that the plan does not know the value (not a bare meta-tensor error)."""
    spec = get_spec("hunyuan-video-1.5")
    meta, inputs = spec.plan_model(str(folders["hunyuan-video-1.5"]), *BUCKET, 1, torch.float32)
    with pytest.raises(RuntimeError, match="does not know"), KnownValues():
        profile_step(_lora_model(spec, meta, "none"), inputs)  # inputs built outside: constants unknown


@pytest.mark.parametrize("ckpt", ["none", "full", "offload"])
def test_extrapolated_profile_equals_the_full_step(tmp_path, ckpt):
    """7 dual-stream blocks: the profile from 3- and 4-block runs equals the 7-block run's bytes."""
    from diffusers import HunyuanVideo15Transformer3DModel

    with torch.device("meta"):
        HunyuanVideo15Transformer3DModel(num_layers=7, num_attention_heads=2, attention_head_dim=128, text_embed_dim=64,
                                         text_embed_2_dim=32, num_refiner_layers=1).save_config(tmp_path / "transformer")
    spec = get_spec("hunyuan-video-1.5")
    known = KnownValues()
    with known:
        model, inputs = spec.plan_model(str(tmp_path), 33, 128, 128, 1, torch.bfloat16)
    model = _lora_model(spec, model, ckpt)
    kw = {"offload": ckpt == "offload", "autocast": torch.bfloat16}
    with known:
        full = profile_step(model, inputs, **kw)
        fast = profile_step_extrapolated(model, spec.transformer_blocks(model), inputs, **kw)
    assert len(spec.transformer_blocks(model)) == 7  # restored after the cut runs
    assert fast == full


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("name", FAMILIES)
def test_full_width_one_block_prediction_matches_measured_peak(tmp_path, name):
    """One dual-stream block at the released width (16 heads x 128 = 2048), fp32 on CPU, 1 x 16 x 16
    latents (256 video + 1985 condition tokens): predicted step peak vs the process's peak-RSS growth
    over a real step, within 10% (RSS also holds allocator and library buffers the prediction omits)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    with torch.device("meta"):
        HunyuanVideo15Transformer3DModel(num_layers=1, num_refiner_layers=1, text_embed_dim=64,
                                         text_embed_2_dim=32).save_config(tmp_path / "transformer")
    script = Path(__file__).parent / "scripts" / "plan_peak_rss.py"
    mode = "none" if name == "hunyuan-video-1.5" else "full"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "1", "256", "256", mode, "--model-name", name],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])[mode]
    assert got["predicted"] > 100 * 2**20  # big enough for RSS to measure it
    assert abs(got["predicted"] - got["measured"]) <= 0.10 * got["measured"], got
