"""Base models from single files: an original-layout transformer (``merge --format original``) and a VAE file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.config import load_config
from hv_tune.errors import ConfigError, HvTuneError
from hv_tune.export.merge import merge_loras
from hv_tune.models import LoadOptions
from hv_tune.training.trainer import train

from .conftest import train_overrides
from .lora_utils import random_lora


@pytest.fixture(scope="module")
def merged(spec, tiny_model, tmp_path_factory):
    """One LoRA merged into the tiny model twice: as a model folder and as one original-layout file."""
    tmp = tmp_path_factory.mktemp("single")
    lora = random_lora(spec, tiny_model, tmp / "a.safetensors", rank=4, alpha=2.0, targets=["*"])
    merge_loras(spec, tiny_model, [(str(lora), 0.8)], tmp / "folder")
    merge_loras(spec, tiny_model, [(str(lora), 0.8)], tmp / "orig.safetensors", fmt="original")
    return tmp


def test_single_file_transformer_loads_exactly(spec, tiny_model, merged):
    ours = spec.load_transformer(LoadOptions(str(tiny_model), transformer_path=str(merged / "orig.safetensors")))
    ref = load_file(str(merged / "folder" / "transformer" / "diffusion_pytorch_model.safetensors"))
    state = ours.state_dict()
    assert state.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.equal(state[k], v), k
    bad = merged / "bad.safetensors"
    raw = load_file(str(merged / "orig.safetensors"))
    raw["double_blocks.0.img_attn_qkv.weight"] = raw["double_blocks.0.img_attn_qkv.weight"][:-1]
    save_file(raw, str(bad))
    with pytest.raises(HvTuneError, match=r"model.transformer_path: .*bad.safetensors does not fit"):
        spec.load_transformer(LoadOptions(str(tiny_model), transformer_path=str(bad)))


def test_single_file_vae_loads_exactly(spec, tiny_model, tmp_path):
    state = load_file(str(tiny_model / "vae" / "diffusion_pytorch_model.safetensors"))
    save_file({f"vae.{k}": v for k, v in state.items()}, str(tmp_path / "vae.safetensors"))
    vae = spec.load_vae(LoadOptions(str(tiny_model), vae_path=str(tmp_path / "vae.safetensors")))
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in state.items())


def test_merge_onto_a_single_file_base_equals_merging_into_the_folder(spec, tiny_model, merged, tmp_path):
    second = random_lora(spec, tiny_model, tmp_path / "b.safetensors", rank=2, alpha=1.0, seed=3)
    assert main(["merge", "--model", str(tiny_model), "--transformer", str(merged / "orig.safetensors"),
                 "--lora", str(second), "--out", str(tmp_path / "m")]) == 0
    first = merged / "a.safetensors"
    merge_loras(spec, tiny_model, [(str(first), 0.8), (str(second), 1.0)], tmp_path / "both")
    a = load_file(str(tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "both" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_sample_with_a_single_file_transformer_equals_the_merged_folder(tiny_model, merged, tmp_path):
    args = ["--prompt", "a red ball", "--frames", "1", "--height", "16", "--width", "16", "--steps", "2"]
    assert main(["sample", "--model", str(tiny_model), "--transformer", str(merged / "orig.safetensors"), *args,
                 "--out", str(tmp_path / "a.png")]) == 0
    assert main(["sample", "--model", str(merged / "folder"), *args, "--out", str(tmp_path / "b.png")]) == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


def test_config_refuses_a_missing_single_file(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"model.transformer_path.*does not exist"):
        load_config(None, [f"model.path={tiny_model}", f"model.transformer_path={tmp_path / 'nope.safetensors'}"])


@pytest.mark.slow
def test_train_from_a_single_file_transformer(spec, tiny_model, demo_cache, merged, tmp_path):
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
        "model.transformer_path": str(merged / "orig.safetensors"), "training.max_steps": 2,
        "save.formats": "[diffusers, comfyui]"}))
    result = train(cfg)
    assert result.lora_path.is_file() and (tmp_path / "run" / "lora_comfyui.safetensors").is_file()
    assert any(v.abs().max() > 0 for k, v in load_file(str(result.lora_path)).items() if "lora_B" in k)  # it trained
    raw = load_file(str(merged / "orig.safetensors"))
    del raw["single_blocks.0.linear2.weight"]
    save_file(raw, str(tmp_path / "broken.safetensors"))
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run2", **{
        "model.transformer_path": str(tmp_path / "broken.safetensors"), "training.max_steps": 1}))
    with pytest.raises(HvTuneError, match=r"(?s)broken.safetensors does not fit.*single_transformer_blocks.0.proj_out.weight"):
        train(cfg)


def test_cache_encodes_with_the_single_file_vae(spec, tiny_model, demo_folder, tmp_path):
    """`model.vae_path` reaches the cache stage, and another VAE file means other latents."""
    from hv_tune.data.cache import read_index
    from hv_tune.data.encode import build_cache
    from tests.conftest import cache_config

    state = load_file(str(tiny_model / "vae" / "diffusion_pytorch_model.safetensors"))
    key = next(k for k in state if k == "encoder.conv_in.conv.bias")
    state[key] = state[key] + 0.5  # a visibly different VAE
    save_file({f"vae.{k}": v for k, v in state.items()}, str(tmp_path / "vae.safetensors"))

    def latents(cache, *extra):
        build_cache(spec, cache_config(tiny_model, demo_folder, cache, *extra), "cpu")
        entries = read_index(cache)
        return {e.id: load_file(str(cache / e.files["latents"]))["latent_mean"] for e in entries}

    folder = latents(tmp_path / "c1")
    single = latents(tmp_path / "c1", f"model.vae_path={tmp_path / 'vae.safetensors'}")  # same cache dir: rebuilt
    assert folder.keys() == single.keys()
    assert all(not torch.allclose(folder[k], single[k]) for k in folder)
