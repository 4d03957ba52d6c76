"""HunyuanVideo 1.5 LoRA export: ComfyUI/kohya layouts round-trip, and merge == load_lora_adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hv_tune.cli import main
from hv_tune.models import LoadOptions, get_spec

from .test_hv15_train import _inputs, _random_lora

SPEC = get_spec("hunyuan-video-1.5")


@pytest.fixture(scope="module")
def hv15_tiny(tmp_path_factory) -> Path:
    return SPEC.build_tiny(tmp_path_factory.mktemp("hv15e") / "model")


@pytest.fixture(scope="module")
def lora(hv15_tiny, tmp_path_factory) -> Path:
    return _random_lora(hv15_tiny, tmp_path_factory.mktemp("hv15l"), rank=4, alpha=3.0)


def _with_adapter(model: Path, file: Path, inputs) -> torch.Tensor:
    from diffusers import HunyuanVideo15Transformer3DModel

    transformer = HunyuanVideo15Transformer3DModel.from_pretrained(str(model), subfolder="transformer")
    transformer.load_lora_adapter(str(file))
    with torch.no_grad():
        return transformer(**inputs)[0]


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_layout_round_trip_keeps_the_lora(hv15_tiny, lora, tmp_path, layout):
    """diffusers -> layout -> diffusers through `convert` (found from model_index.json); the fused
    q/k/v (concatenated A, block-diagonal B) gives the same transformer outputs."""
    out = tmp_path / f"lora_{layout}.safetensors"
    assert main(["convert", str(lora), str(out), "--to", layout, "--model", str(hv15_tiny)]) == 0
    keys = list(load_file(str(out)))
    fused = "diffusion_model.double_blocks.0.img_attn_qkv." if layout == "comfyui" else \
        "lora_unet_double_blocks_0_img_attn_qkv."
    assert any(k.startswith(fused) for k in keys), keys[:4]
    assert not any("single_blocks" in k or "to_q" in k for k in keys)
    back = tmp_path / "back" / "pytorch_lora_weights.safetensors"
    back.parent.mkdir()
    assert main(["convert", str(out), str(back), "--to", "diffusers", "--model", str(hv15_tiny)]) == 0
    inputs = _inputs(hv15_tiny)
    torch.testing.assert_close(_with_adapter(hv15_tiny, back, inputs), _with_adapter(hv15_tiny, lora, inputs),
                               rtol=0, atol=1e-5)


def test_merge_equals_load_lora_adapter(hv15_tiny, lora, tmp_path):
    from diffusers import HunyuanVideo15Pipeline

    out = tmp_path / "merged"
    assert main(["merge", "--model", str(hv15_tiny), "--lora", str(lora), "--out", str(out)]) == 0
    pipe = HunyuanVideo15Pipeline.from_pretrained(str(out))  # the whole merged folder loads
    inputs = _inputs(hv15_tiny)
    with torch.no_grad():
        merged = pipe.transformer(**inputs)[0]
        base = SPEC.load_transformer(LoadOptions(str(hv15_tiny)))(**inputs)[0]
    want = _with_adapter(hv15_tiny, lora, inputs)
    assert (want - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, want, rtol=0, atol=1e-5)
