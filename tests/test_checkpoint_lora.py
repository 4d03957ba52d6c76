"""A checkpoint is a usable LoRA: its folder holds the files a run stopped at its step ends with, and
its ``adapter.safetensors`` reads at the trained strength (alpha / rank) in sample, merge and convert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hv_tune.config import load_config
from hv_tune.export.family import FAMILY_KEY
from hv_tune.export.lora_io import read_lora
from hv_tune.export.merge import merge_loras
from hv_tune.models import LoadOptions, get_spec
from hv_tune.sampling import load_pipeline
from hv_tune.training.checkpoint import checkpoint_dir
from hv_tune.training.trainer import train

from .conftest import train_overrides, write_fixed_latent_cache

# family -> (save.formats besides diffusers, side in pixels of a 2x2 latent)
FAMILIES = {"hunyuan-video": (["kohya", "comfyui"], 16), "hunyuan-video-1.5": (["kohya", "comfyui"], 32)}
#: float32 sums in another order (merge: B @ A per layer; sample: PEFT's x @ A @ B) differ by rounding only
TOL = 1e-5


def _model(name: str, request) -> Path:
    return request.getfixturevalue("tiny_model" if name == "hunyuan-video" else "hv15_tiny")


def _run(spec, model: Path, cache: Path, out: Path, steps: int, formats: list[str], side: int) -> Path:
    """A run of ``steps`` steps, rank 4 / alpha 2 (strength 0.5), a checkpoint every step."""
    cfg = load_config(None, train_overrides(model, cache, out, **{
        "model.name": spec.name, "training.max_steps": steps, "training.checkpoint_every": 1,
        "training.checkpoints_to_keep": 5, "training.batch_size": 1, "data.frame_buckets": [1],
        "data.resolution": side, "save.formats": "[" + ", ".join(["diffusers", *formats]) + "]"}))
    assert (cfg.lora.rank, cfg.lora.alpha) == (4, 2)
    return train(cfg).lora_path


def _inputs(spec, model: Path) -> dict:
    enc = spec.text.load(LoadOptions(str(model)))
    channels = spec.load_vae_config(LoadOptions(str(model)))["latent_channels"]
    noisy = torch.randn(1, channels, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    text = spec.text.encode(enc, ["a red ball"], 1)
    return spec.transformer_inputs(noisy, torch.tensor([0.6]), text, guidance_scale=1.0)


def _sampled(spec, model: Path, lora: Path, inputs: dict) -> torch.Tensor:
    """The transformer output of ``sample``'s pipeline with ``lora`` loaded (``load_pipeline``)."""
    pipe = load_pipeline(spec, str(model), [(str(lora), 1.0)], "cpu", torch.float32)
    with torch.no_grad():
        return pipe.transformer(**inputs)[0]


def _merged(spec, model: Path, lora: Path, out: Path) -> dict[str, torch.Tensor]:
    merge_loras(spec, model, [(str(lora), 1.0)], out)
    return {k: v for f in sorted((out / "transformer").glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_checkpoint_lora_is_the_final_lora_of_a_run_stopped_there(name, request, tmp_path):
    """Run A (2 steps) checkpoints step 1; run B stops after 1 step. A's step-1 folder holds B's final files
    (same bytes) and its adapter.safetensors samples, merges and converts like B's final LoRA (rank 4, alpha 2;
    before: no LoRA file in the checkpoint, `sample` raised "Adapter name(s) {'lora0'} not in the list", merge
    and convert read alpha = rank: twice the strength)."""
    from hv_tune.cli import main

    spec, (formats, side) = get_spec(name), FAMILIES[name]
    model = _model(name, request)
    channels = spec.load_vae_config(LoadOptions(str(model)))["latent_channels"]
    latents = [torch.randn(channels, 1, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    cache = write_fixed_latent_cache(spec, model, tmp_path / "cache", latents, ["a red ball", "a blue cube"])
    _run(spec, model, cache, tmp_path / "a", 2, formats, side)
    final = _run(spec, model, cache, tmp_path / "b", 1, formats, side)
    ckpt = checkpoint_dir(tmp_path / "a" / "checkpoints", 1)
    adapter = ckpt / "adapter.safetensors"

    names = ["pytorch_lora_weights.safetensors", *(f"lora_{f}.safetensors" for f in formats)]
    for file in names:  # the same code wrote both from the same weights: the same bytes
        assert (ckpt / file).read_bytes() == (final.parent / file).read_bytes(), file
    for file in [*names, "adapter.safetensors"]:
        with safe_open(str(ckpt / file), framework="pt") as f:
            assert f.metadata()[FAMILY_KEY] == name, file

    shapes = spec.linear_shapes(str(model))
    lora = read_lora(spec, adapter, shapes)
    assert {m.alpha / m.rank for m in lora.modules.values()} == {0.5} and not lora.notes

    inputs = _inputs(spec, model)
    want = _sampled(spec, model, final, inputs)
    base = load_pipeline(spec, str(model), [], "cpu", torch.float32).transformer
    with torch.no_grad():
        assert (want - base(**inputs)[0]).abs().max() > 1e-4  # the LoRA changes the output
    for file in (adapter, ckpt / "pytorch_lora_weights.safetensors"):
        torch.testing.assert_close(_sampled(spec, model, file, inputs), want, rtol=0, atol=TOL)

    merged_final = _merged(spec, model, final, tmp_path / "m_final")
    merged_ckpt = _merged(spec, model, adapter, tmp_path / "m_ckpt")
    assert merged_ckpt.keys() == merged_final.keys()
    for k, v in merged_final.items():
        torch.testing.assert_close(merged_ckpt[k], v, rtol=0, atol=TOL)

    converted = tmp_path / "converted.safetensors"  # comfyui folds alpha / rank into lora_B
    assert main(["convert", str(adapter), str(converted), "--to", "comfyui", "--model", str(model)]) == 0
    want_comfy = load_file(str(final.parent / "lora_comfyui.safetensors"))
    got = load_file(str(converted))
    assert got.keys() == want_comfy.keys()
    for k, v in want_comfy.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)


def test_older_checkpoint_adapter_takes_alpha_from_its_trainer_state(spec, tiny_model, tmp_path):
    """An adapter.safetensors written before it carried metadata (PEFT names, nothing else) reads alpha from
    the trainer_state.json beside it (alpha = rank before: twice the strength for rank 4, alpha 2)."""
    from tests.lora_utils import random_lora

    lora = random_lora(spec, tiny_model, tmp_path / "l.safetensors", rank=4, alpha=2.0)
    folder = tmp_path / "step_00000003"
    folder.mkdir()
    save_file({k.removeprefix("transformer."): v for k, v in load_file(str(lora)).items()},
              str(folder / "adapter.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"step": 3, "lora_rank": 4, "lora_alpha": 2.0}))
    read = read_lora(spec, folder / "adapter.safetensors", spec.linear_shapes(str(tiny_model)))
    assert {m.alpha for m in read.modules.values()} == {2.0}
    assert any("trainer_state.json" in n for n in read.notes)
