"""The spec's original-layout table, checked against diffusers' own converter of Tencent's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers

from hv_tune.export.formats import looks_like_family, parse_key
from hv_tune.export.merge import plan_original
from hv_tune.export.safetensors_stream import TensorInfo
from hv_tune.models import LoadOptions


def to_original(spec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers state dict in the original layout, through merge's planner (works on meta tensors)."""
    infos = {k: TensorInfo(k, Path("-"), v.dtype, tuple(v.shape)) for k, v in state.items()}
    out = {}
    for t in plan_original(spec, infos, None):
        # each original tensor = its parts' rows, concatenated: [sum(rows_i), ...]
        out[t.name] = torch.cat([state[s.module].chunk(s.chunks)[s.chunk] for s in t.sources])
        assert tuple(out[t.name].shape) == t.shape
    return out


@pytest.fixture(scope="module")
def full_meta_state():
    with torch.device("meta"):
        return HunyuanVideoTransformer3DModel().state_dict()  # the 13B config, no memory


def test_every_tiny_tensor_round_trips_and_matches_diffusers_converter(spec, tiny_model):
    state = spec.load_transformer(LoadOptions(str(tiny_model))).state_dict()
    original = to_original(spec, state)
    assert "double_blocks.0.img_attn_qkv.weight" in original and "single_blocks.1.linear1.bias" in original
    assert "final_layer.adaLN_modulation.1.weight" in original and "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight" in original
    # diffusers' converter hard-codes width 3072 in single blocks: everything else is compared by value
    converted = convert_hunyuan_video_transformer_to_diffusers({k: v for k, v in original.items() if not k.startswith("single_blocks.")})
    expected = {k for k in state if not k.startswith("single_transformer_blocks.")}
    assert set(converted) == expected
    for k in expected:
        assert torch.equal(converted[k], state[k]), k
    # single blocks: our own inverse, by value
    for n in range(2):
        parts = spec.keys.original_parts(f"single_blocks.{n}.linear1")
        assert [p.module for p in parts] == [f"single_transformer_blocks.{n}.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        fused = original[f"single_blocks.{n}.linear1.weight"]
        rows = [state[p.module + ".weight"].shape[0] for p in parts]
        for p, piece in zip(parts, fused.split(rows)):
            assert torch.equal(piece, state[p.module + ".weight"])


def test_full_size_layout_matches_diffusers_converter_names_and_shapes(spec, full_meta_state):
    original = to_original(spec, full_meta_state)
    assert original["single_blocks.39.linear1.weight"].shape == (3072 * 3 + 12288, 3072)
    converted = convert_hunyuan_video_transformer_to_diffusers(dict(original))
    assert set(converted) == set(full_meta_state)
    for k, v in converted.items():
        assert v.shape == full_meta_state[k].shape, k


def test_every_module_name_is_found_back_in_every_format(spec, full_meta_state):
    modules = {k.rsplit(".", 1)[0] for k in full_meta_state}
    for module in modules:
        original = spec.keys.original_module(module)
        assert original is not None, module
        assert module in {p.module for p in spec.keys.original_parts(original)}
        assert spec.keys.original_from_flat(original.replace(".", "_")) == original
        for key, fmt, name in [
            (f"transformer.{module}.lora_A.weight", "diffusers", module),
            (f"diffusion_model.{original}.lora_B.weight", "comfyui", original),
            (f"lora_unet_{original.replace('.', '_')}.alpha", "kohya", original),
            (f"diffusion_model.{spec.keys.comfy_name(original, 'lora')}.lora_B.weight", "comfyui", original),
            (f"diffusion_model.{spec.keys.comfy_name(original)}.diff_b", "comfyui-internal", original),
        ]:
            parsed = parse_key(spec, key)
            assert fmt in parsed.layouts and parsed.module == name, key
            assert looks_like_family([key]) is None, key  # no HunyuanVideo key looks like another family
    assert spec.keys.original_module("transformer_blocks.0.attn.to_x") is None
    assert spec.keys.original_from_flat("double_blocks_0_img_attn_qkvx") is None
