"""HunyuanVideo 1.5 LoRA export: ComfyUI/kohya layouts round-trip, the kohya file is musubi-tuner's,
and merge == load_lora_adapter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hv_tune.cli import main
from hv_tune.models import LoadOptions, get_spec
from hv_tune.models.hunyuan_video_1_5.tiny import TRANSFORMER_CONFIG
from tests.lora_utils import convert_round_trip

from .test_hv15_train import _inputs, _random_lora

SPEC = get_spec("hunyuan-video-1.5")


@pytest.fixture(scope="module")
def lora(hv15_tiny, tmp_path_factory) -> Path:
    return _random_lora(hv15_tiny, tmp_path_factory.mktemp("hv15l"), rank=4, alpha=3.0)


def _with_adapter(model: Path, file: Path, inputs) -> torch.Tensor:
    from diffusers import HunyuanVideo15Transformer3DModel

    transformer = HunyuanVideo15Transformer3DModel.from_pretrained(str(model), subfolder="transformer")
    transformer.load_lora_adapter(str(file))
    with torch.no_grad():
        return transformer(**inputs)[0]


def assert_same_outputs(model: Path, file: Path, reference: Path) -> None:
    inputs = _inputs(model)
    torch.testing.assert_close(_with_adapter(model, file, inputs), _with_adapter(model, reference, inputs),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_layout_round_trip_keeps_the_lora(hv15_tiny, lora, tmp_path, layout):
    """diffusers -> layout -> diffusers through `convert` (found from model_index.json); the fused
    q/k/v (concatenated A, block-diagonal B) gives the same transformer outputs."""
    keys, back = convert_round_trip(hv15_tiny, lora, tmp_path, layout)
    qkv = "diffusion_model.double_blocks.0.img_attn_qkv." if layout == "comfyui" else \
        "lora_unet_double_blocks_0_img_attn_k."  # fused for ComfyUI, separate for musubi
    assert any(k.startswith(qkv) for k in keys), keys[:4]
    assert not any("single_blocks" in k or "to_q" in k for k in keys)
    assert_same_outputs(hv15_tiny, back, lora)


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_output_layers_round_trip(hv15_tiny, tmp_path, layout):
    """``norm_out.linear`` (Tencent's ``final_layer.adaLN_modulation.1``: shift/scale halves swapped) and
    ``proj_out`` (``final_layer.linear``) are written and read back in both layouts."""
    lora = _random_lora(hv15_tiny, tmp_path / "d", targets=["norm_out.linear", "proj_out", "transformer_blocks.0.attn.to_k"])
    keys, back = convert_round_trip(hv15_tiny, lora, tmp_path, layout)
    sep = "." if layout == "comfyui" else "_"
    assert any(k.split(".lora")[0].endswith(f"final_layer{sep}adaLN_modulation{sep}1") for k in keys)
    assert_same_outputs(hv15_tiny, back, lora)


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


# musubi-tuner's HunyuanVideo 1.5 LoRA, read in its source (kohya-ss/musubi-tuner, 2026-11-29):
# - src/musubi_tuner/networks/lora_hv_1_5.py: target class ``MMDoubleStreamBlock``, prefix ``lora_unet``,
#   default exclude pattern r".*(_in).*" (fullmatch on the module's name in the model);
# - src/musubi_tuner/networks/lora.py (``LoRANetwork.create_modules``): every Linear child of a target
#   block named ``double_blocks.N`` gets ``f"lora_unet.{block}.{child}".replace(".", "_")``, saved as
#   ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; src/musubi_tuner/utils/lora_utils.py merges
#   ``W + up @ down * alpha / dim`` (dim = rows of down, alpha defaults to dim);
# - src/musubi_tuner/hunyuan_video_1_5/hunyuan_video_1_5_modules.py: ``MMDoubleStreamBlock``'s Linear
#   children, in diffusers' names as diffusers' 1.5 conversion maps them:
MUSUBI_BLOCK_LINEARS = {
    "img_mod.linear": "norm1.linear", "img_attn_q": "attn.to_q", "img_attn_k": "attn.to_k",
    "img_attn_v": "attn.to_v", "img_attn_proj": "attn.to_out.0", "img_mlp.fc1": "ff.net.0.proj",
    "img_mlp.fc2": "ff.net.2", "txt_mod.linear": "norm1_context.linear", "txt_attn_q": "attn.add_q_proj",
    "txt_attn_k": "attn.add_k_proj", "txt_attn_v": "attn.add_v_proj", "txt_attn_proj": "attn.to_add_out",
    "txt_mlp.fc1": "ff_context.net.0.proj", "txt_mlp.fc2": "ff_context.net.2",
}


def _musubi_modules(num_blocks: int) -> dict[str, str]:
    """musubi's LoRA module name -> the diffusers module it adapts, for a model of ``num_blocks``."""
    out = {}
    for i in range(num_blocks):
        for child, module in MUSUBI_BLOCK_LINEARS.items():
            name = f"double_blocks.{i}.{child}"
            if not re.fullmatch(r".*(_in).*", name):
                out[f"lora_unet.{name}".replace(".", "_")] = f"transformer_blocks.{i}.{module}"
    return out


def test_kohya_file_is_musubis_network(hv15_tiny, lora, tmp_path, capsys):
    """The kohya file of an ``all-linear`` LoRA has exactly the keys musubi-tuner's 1.5 network creates for
    the model (separate q/k/v, modulation), and merging it musubi's way gives load_lora_adapter's output.
    The ComfyUI warning names the separate q/k/v (ComfyUI's 1.5 model has a fused qkv), not the proj."""
    from diffusers import HunyuanVideo15Transformer3DModel

    out = tmp_path / "lora_kohya.safetensors"
    assert main(["convert", str(lora), str(out), "--to", "kohya", "--model", str(hv15_tiny)]) == 0
    warning = capsys.readouterr()
    warning = warning.out + warning.err
    assert "lora_unet_double_blocks_0_img_attn_k" in warning and "_img_attn_proj" not in warning, warning
    sd = load_file(str(out))
    modules = _musubi_modules(TRANSFORMER_CONFIG["num_layers"])
    assert set(sd) == {f"{n}.{k}" for n in modules for k in ("lora_down.weight", "lora_up.weight", "alpha")}

    transformer = HunyuanVideo15Transformer3DModel.from_pretrained(str(hv15_tiny), subfolder="transformer")
    layers = dict(transformer.named_modules())
    with torch.no_grad():
        for name, module in modules.items():
            down, up = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"]
            alpha = sd.get(f"{name}.alpha", down.shape[0])
            layers[module].weight += up @ down * (alpha / down.shape[0])
        inputs = _inputs(hv15_tiny)
        got = transformer(**inputs)[0]
    torch.testing.assert_close(got, _with_adapter(hv15_tiny, lora, inputs), rtol=0, atol=1e-5)


def test_fused_kohya_names_of_older_files_still_read(hv15_tiny):
    """``lora_unet_double_blocks_N_img_attn_qkv`` (hv-tune's kohya files before 2026-11-29) is still read."""
    assert SPEC.keys.original_from_flat("double_blocks_1_img_attn_qkv") == "double_blocks.1.img_attn_qkv"
    assert SPEC.keys.original_from_flat("double_blocks_1_txt_attn_v") == "double_blocks.1.txt_attn_v"
    assert [p.module for p in SPEC.keys.original_parts("double_blocks.1.txt_attn_v")] == ["transformer_blocks.1.attn.add_v_proj"]
    assert SPEC.keys.kohya_module("norm_out.linear") == "final_layer.adaLN_modulation.1"


def test_merge_to_an_original_file_is_refused_with_the_way_out(hv15_tiny, lora, tmp_path, capsys):
    """1.5 has no complete original key table: `merge --format original` says so and names the
    diffusers folder as the way out, and writes nothing."""
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--model", str(hv15_tiny), "--lora", str(lora), "--out", str(out), "--format", "original"]) == 2
    err = capsys.readouterr().err
    assert "--format original: hunyuan-video-1.5 has no original-checkpoint name" in err and "--format diffusers" in err
    assert not out.exists()


def test_merging_the_same_lora_again_is_refused(hv15_tiny, lora, tmp_path, capsys):
    """1.5 (alpha folded into its diffusers file): its kohya copy merged on top of the merged model is the same update."""
    kohya = tmp_path / "k.safetensors"
    assert main(["convert", str(lora), str(kohya), "--to", "kohya", "--model", str(hv15_tiny)]) == 0
    merged = tmp_path / "merged"
    assert main(["merge", "--model", str(hv15_tiny), "--lora", str(lora), "--out", str(merged)]) == 0
    assert main(["merge", "--model", str(merged), "--lora", str(kohya), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert f"--lora {kohya} (same update as {lora.name}) is already merged" in err, err
    assert not (tmp_path / "again").exists()
