"""Validation during training: previews, eval loss, extra LoRA formats; training itself unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from hv_tune.config import load_config
from hv_tune.diffusion import sample_sigmas, sigma_quantiles
from hv_tune.errors import ConfigError
from hv_tune.export.lora_io import read_lora
from hv_tune.export.lora_math import delta_weight
from hv_tune.training.trainer import train
from tests.media_files import decode_pyav

from .conftest import train_overrides

VALIDATION = {
    "validation.every": 3, "validation.prompts": "['a red ball bounces', 'a blue square']", "validation.frames": 5,
    "validation.height": 32, "validation.width": 32, "validation.steps": 2, "validation.eval_items": 2,
    "validation.eval_quantiles": "[0.25, 0.5, 0.75]",
}


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _assert_validation_progress(captured, validations: int, prompts: int, steps: int, items: int) -> None:
    """Each validation showed a bar over the eval items and one per preview over its denoising steps (stderr;
    cleared when done), the training bar went on to the end after them, and the result line went to stdout."""
    err = captured.err
    assert len(re.findall(rf"validation: eval loss:\s+0%[^\r\n]*\| 0/{items} ", err)) == validations, err
    for i in range(1, prompts + 1):
        started = re.findall(rf"validation: preview {i}/{prompts}:\s+0%[^\r\n]*\| 0/{steps} ", err)
        assert len(started) == validations, err
    last_val = err.rfind("validation: preview")
    assert re.search(r"train: 100%[^\r\n]*\| 6/6 ", err[last_val:]), "the training bar goes on after validation"
    assert captured.out.count("validation at step ") == validations


def test_sigma_quantiles_are_quantiles_of_the_training_distribution():
    qs = [0.1, 0.5, 0.9]
    assert torch.allclose(sigma_quantiles(qs, "uniform"), torch.tensor(qs))
    for scheme, kw in [("logit_normal", dict(logit_mean=0.3, logit_std=1.2, shift=3.0)), ("uniform", dict(shift=5.0))]:
        drawn = sample_sigmas(200_000, scheme, torch.Generator().manual_seed(0), **kw).double()
        expected = torch.quantile(drawn, torch.tensor(qs, dtype=torch.float64))
        torch.testing.assert_close(sigma_quantiles(qs, scheme, **kw).double(), expected, rtol=0, atol=5e-3)


def test_validation_writes_previews_and_eval_loss_without_changing_training(spec, tiny_model, demo_cache, tmp_path,
                                                                           capsys):
    extra = {"training.max_steps": 6, "lora.dropout": 0.1, "save.formats": "[diffusers, comfyui, kohya]"}
    plain = train(load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "plain", **extra)))
    capsys.readouterr()
    checked = train(load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "val", **extra, **VALIDATION)))
    # validation draws from explicit generators, runs in eval mode and restores the RNG: same LoRA, byte for byte
    assert plain.lora_path.read_bytes() == checked.lora_path.read_bytes()
    _assert_validation_progress(capsys.readouterr(), validations=2, prompts=2, steps=2, items=2)

    for step in (3, 6):
        folder = tmp_path / "val" / "samples" / f"step_{step:08d}"
        assert sorted(p.name for p in folder.iterdir()) == ["00.mp4", "01.mp4"]
        video = decode_pyav(folder / "00.mp4")[0]
        assert video.shape == (5, 32, 32, 3)
    events = _events(tmp_path / "val" / "logs" / "hv-tune")
    scalars = events.Tags()["scalars"]
    assert {"eval/loss", "eval/loss_q0.25", "eval/loss_q0.75"} <= set(scalars)
    losses = events.Scalars("eval/loss")
    assert [e.step for e in losses] == [3, 6] and all(0 < e.value < 10 for e in losses)
    assert {"preview/00", "preview/01"} <= set(events.Tags()["images"])

    # the final LoRA in the other formats, next to the diffusers one, with the same updates
    shapes = spec.linear_shapes(str(tiny_model))
    native = read_lora(spec, checked.lora_path, shapes).modules
    for name, fmt in (("lora_comfyui.safetensors", "comfyui"), ("lora_kohya.safetensors", "kohya")):
        other = read_lora(spec, tmp_path / "val" / name, shapes)
        assert other.format == fmt and set(other.modules) == set(native)
        for module, m in native.items():
            torch.testing.assert_close(delta_weight(other.modules[module]), delta_weight(m), rtol=1e-5, atol=1e-7)


def test_eval_loss_is_deterministic_and_held_out_cache_is_used(spec, tiny_model, demo_cache, tmp_path):
    from accelerate import Accelerator

    from hv_tune.models import LoadOptions
    from hv_tune.training.validation import Validator

    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
        **VALIDATION, "validation.prompts": "[]", "validation.eval_cache_dir": str(demo_cache)}))
    opts = LoadOptions(str(tiny_model))
    validator = Validator(cfg, spec, Accelerator(cpu=True), opts, spec.load_vae_config(opts))
    model = spec.load_transformer(opts)
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = validator.eval_loss(model), validator.eval_loss(model)
    assert a == b and set(a) == {"eval/loss", "eval/loss_q0.25", "eval/loss_q0.5", "eval/loss_q0.75"}
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("override, key", [
    ("validation.frames=8", "validation.frames"),
    ("validation.width=30", "validation.width"),
    ("save.formats=[comfyui]", "save.formats"),
    ("save.formats=[diffusers, onnx]", "save.formats"),
    ("validation.eval_quantiles=[0.0, 0.5]", "validation.eval_quantiles"),
])
def test_bad_validation_and_save_values_name_the_key(tiny_model, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"model.path={tiny_model}", override])
    with pytest.raises(ConfigError, match="nothing to validate"):
        load_config(None, [f"model.path={tiny_model}", "validation.every=5", "validation.eval_items=0"])
