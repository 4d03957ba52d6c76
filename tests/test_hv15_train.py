"""HunyuanVideo 1.5 training: inputs as the pipeline builds them, cache + trainer through the spec,
and the saved LoRA through diffusers' own ``transformer.load_lora_adapter(path)``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hv_tune.config import load_config
from hv_tune.data.cache import read_index
from hv_tune.lora import add_lora, peft_config, resolve_targets
from hv_tune.models import LoadOptions, get_spec
from hv_tune.training.trainer import train
from tests.lora_utils import assert_adapter_file_reproduces_training

from .conftest import train_overrides, write_fixed_latent_cache

SPEC = get_spec("hunyuan-video-1.5")


@pytest.fixture(scope="module")
def hv15_cache(hv15_tiny, demo_folder, tmp_path_factory) -> Path:
    """The demo clips encoded through the 1.5 spec (caption dropout 0.5: empty-prompt steps train too)."""
    from hv_tune.data.encode import build_cache

    out = tmp_path_factory.mktemp("hv15cache")
    cfg = load_config(None, [f"model.path={hv15_tiny}", "model.name=hunyuan-video-1.5", f"data.cache_dir={out}",
                             f"data.sources=[{{path: {demo_folder}}}]", "data.frame_buckets=[5]",
                             "data.resolution=32", "data.caption_dropout=0.5"])
    assert build_cache(SPEC, cfg, "cpu").items == 6
    return out


def _inputs(model: Path, prompt: str = 'a sign that says "HI"'):
    enc = SPEC.text.load(LoadOptions(str(model)))
    text = SPEC.text.encode(enc, [prompt], 5)
    noisy = torch.randn(1, 32, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    return SPEC.transformer_inputs(noisy, torch.tensor([0.6]), text, guidance_scale=1.0)


def test_transformer_inputs_are_the_pipelines():
    """65 channels (noisy, then 32 + 1 zeros), timestep = sigma * 1000, zero image embeds, no guidance."""
    noisy = torch.randn(2, 32, 3, 4, 4)
    text = {"prompt_embeds": torch.randn(2, 7, 16), "prompt_attention_mask": torch.ones(2, 7, dtype=torch.int64),
            "prompt_embeds_2": torch.randn(2, 5, 8), "prompt_attention_mask_2": torch.zeros(2, 5, dtype=torch.int64)}
    inp = SPEC.transformer_inputs(noisy, torch.tensor([0.25, 0.9]), text, guidance_scale=1.0)
    assert inp["hidden_states"].shape == (2, 65, 3, 4, 4)
    assert torch.equal(inp["hidden_states"][:, :32], noisy) and not inp["hidden_states"][:, 32:].any()
    assert inp["timestep"].tolist() == [250.0, 900.0]
    assert inp["image_embeds"].shape == (2, 729, 1152) and not inp["image_embeds"].any()
    assert "guidance" not in inp and inp["encoder_attention_mask"].dtype == torch.float32


def test_lora_presets_name_the_15_blocks(hv15_tiny):
    model = SPEC.load_transformer(LoadOptions(str(hv15_tiny)))
    attn = resolve_targets(SPEC, model, "attn")
    full = resolve_targets(SPEC, model, "all-linear")
    assert len(attn) == 2 * 8 and set(attn) < set(full) and len(full) == 2 * 14  # musubi's 14 per block
    assert "transformer_blocks.1.attn.to_add_out" in attn and "transformer_blocks.0.ff_context.net.2" in full
    assert {"transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1_context.linear"} < set(full)
    assert not any("refiner" in n or "norm_out" in n for n in full)


def test_trained_lora_loads_with_load_lora_adapter_no_args(hv15_tiny, hv15_cache, tmp_path):
    """Cache + train through the spec (alpha != rank, caption dropout on), then diffusers' model-level
    loader with no extra argument reproduces the trained transformer."""

    cfg = load_config(None, train_overrides(hv15_tiny, hv15_cache, tmp_path / "run", **{
        "model.name": "hunyuan-video-1.5", "lora.rank": 4, "lora.alpha": 7, "lora.targets": "all-linear",
        "training.learning_rate": 5e-3, "training.max_steps": 4, "save.formats": "[diffusers]"}))
    result = train(cfg)
    saved = load_file(str(result.lora_path))
    assert all(k.startswith("transformer.transformer_blocks.") for k in saved)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())  # it trained

    assert_adapter_file_reproduces_training(SPEC, hv15_tiny, cfg.lora, result.adapter, result.lora_path,
                                            _inputs(hv15_tiny))


def _random_lora(model: Path, out: Path, rank: int = 4, alpha: float = 2.0,
                 targets: str | list[str] = "all-linear") -> Path:
    """A LoRA with random A and B (alpha != rank) saved by the spec, as training saves it."""
    from hv_tune.config import LoraConfig
    from hv_tune.lora import lora_state_dict

    transformer = SPEC.load_transformer(LoadOptions(str(model)))
    cfg = peft_config(LoraConfig(rank=rank, alpha=alpha), resolve_targets(SPEC, transformer, targets),
                      [n for n, _ in transformer.named_modules()])
    add_lora(transformer, cfg)
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * 0.3
             for i, (k, v) in enumerate(sorted(lora_state_dict(transformer).items()))}
    return SPEC.save_lora(out, state, cfg)


def test_sample_cli_uses_the_lora_cfg_scale_and_shift(hv15_tiny, tmp_path):
    """`finetune.py sample` finds the family from model_index.json, loads the LoRA into
    HunyuanVideo15Pipeline, and honours --guidance (CFG) and --shift: equal to diffusers by hand."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from PIL import Image

    from hv_tune.cli import main

    lora = _random_lora(hv15_tiny, tmp_path / "lora")
    args = ["sample", "--model", str(hv15_tiny), "--lora", str(lora), "--prompt", 'a "TOY" robot', "--frames", "1",
            "--height", "32", "--width", "32", "--steps", "3", "--guidance", "3.5", "--shift", "4", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    got = np.asarray(Image.open(tmp_path / "a.png"))

    pipe = HunyuanVideo15Pipeline.from_pretrained(str(hv15_tiny))
    pipe.transformer.load_lora_adapter(str(lora))
    pipe.guider = pipe.guider.new(guidance_scale=3.5)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=4.0)
    ref = pipe('a "TOY" robot', height=32, width=32, num_frames=1, num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(2)).frames[0][0]
    want = (np.clip(ref, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert main([*args[:-2], "--guidance", "1.0", "--seed", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), got)  # the CFG scale is used


@pytest.mark.parametrize("fixture", ["hv15_tiny", "hv15_i2v_tiny"])
def test_step_distilled_meanflow_checkpoint_is_refused(fixture, request, tmp_path):
    """use_meanflow checkpoints (T2V and the 480p I2V step-distilled one, timestep_r) are refused with
    the reason; cfg-distilled ones (plain config) load."""
    import json
    import shutil

    from hv_tune.errors import ConfigError
    from hv_tune.models import spec_for

    folder = tmp_path / "distilled"
    shutil.copytree(request.getfixturevalue(fixture), folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_meanflow": True}))
    with pytest.raises(ConfigError, match="step-distilled.*use_meanflow.*mean-flow"):
        spec_for(None, str(folder)).load_transformer(LoadOptions(str(folder)))


def test_resume_from_a_checkpoint_is_bit_identical(hv15_tiny, hv15_cache, tmp_path, capsys):
    """4 steps straight == 2 steps, checkpoint, resume for 2 more (same LoRA file bytes)."""
    from hv_tune.training.checkpoint import list_checkpoints, load_checkpoint

    cfg = load_config(None, train_overrides(hv15_tiny, hv15_cache, tmp_path / "run", **{
        "model.name": "hunyuan-video-1.5", "training.max_steps": 4, "training.checkpoint_every": 2,
        "training.checkpoints_to_keep": 5, "lora.dropout": 0.1, "save.formats": "[diffusers]"}))
    final = train(cfg).lora_path
    want = final.read_bytes()
    for ckpt in list_checkpoints(tmp_path / "run" / "checkpoints"):
        if load_checkpoint(ckpt).state.step > 2:
            import shutil

            shutil.rmtree(ckpt)
    final.unlink()
    assert [load_checkpoint(c).state.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
    assert train(cfg, resume=True).lora_path.read_bytes() == want
    assert "resumed from" in capsys.readouterr().out


def test_validation_previews_and_eval_loss(hv15_tiny, hv15_cache, tmp_path):
    """Previews through HunyuanVideo15Pipeline with CFG (cond + empty-prompt embeddings) and the eval loss."""
    cfg = load_config(None, train_overrides(hv15_tiny, hv15_cache, tmp_path / "val", **{
        "model.name": "hunyuan-video-1.5", "training.max_steps": 2, "save.formats": "[diffusers]",
        "validation.every": 2, "validation.prompts": "['a \"RED\" ball']", "validation.frames": 1,
        "validation.height": 32, "validation.width": 32, "validation.steps": 2, "validation.guidance": 4.0,
        "validation.eval_items": 2, "validation.eval_quantiles": "[0.5]"}))
    train(cfg)
    assert (tmp_path / "val" / "samples" / "step_00000002" / "00.png").is_file()


@pytest.mark.parametrize("targets, formats, missing", [
    (["*"], "[diffusers, comfyui]", "image_embedder.linear_1"),
    (["context_embedder.token_refiner.*"], "[diffusers, kohya]", "refiner_blocks.0.attn.to_q"),
    (["transformer_blocks.*", "time_embed.*"], "[diffusers, comfyui-internal]", "time_embed.timestep_embedder.linear_1"),
])
def test_targets_a_save_format_cannot_name_fail_before_training(hv15_tiny, tmp_path, targets, formats, missing):
    """A targeted layer without a name in a layout of save.formats is refused at the start (naming the
    layers and the fix), before the cache is built or a weight loaded; the same targets with only the
    diffusers file, and every layout for the blocks plus the output layers, pass the check."""
    from hv_tune.errors import ConfigError
    from hv_tune.training.trainer import check_export_layouts

    cache = tmp_path / "cache"
    overrides = {"model.name": "hunyuan-video-1.5", "lora.targets": targets, "save.formats": formats}
    cfg = load_config(None, train_overrides(hv15_tiny, cache, tmp_path / "run", **overrides))
    with pytest.raises(ConfigError, match=r"lora.targets.*save.formats.*no name for") as err:
        train(cfg)
    assert missing in str(err.value) and "Narrow lora.targets" in str(err.value)
    assert not cache.exists() and not (tmp_path / "run").exists()  # stopped before anything was written
    check_export_layouts(SPEC, load_config(None, train_overrides(
        hv15_tiny, cache, tmp_path / "run", **{**overrides, "save.formats": "[diffusers]"})))
    check_export_layouts(SPEC, load_config(None, train_overrides(hv15_tiny, cache, tmp_path / "run", **{
        **overrides, "lora.targets": ["transformer_blocks.*", "norm_out.linear", "proj_out"],
        "save.formats": "[diffusers, comfyui, kohya, comfyui-internal]"})))


def _drop_padding(text: dict[str, torch.Tensor], keep: int = 4) -> dict[str, torch.Tensor]:
    """The valid tokens plus ``keep`` padding positions of each sequence (the transformer masks padding out:
    same outputs, checked in the test), so that the CPU trains on ~30 text tokens instead of 1256."""
    out = {}
    for emb, mask in (("prompt_embeds", "prompt_attention_mask"), ("prompt_embeds_2", "prompt_attention_mask_2")):
        n = int(text[mask].sum()) + keep
        assert not text[mask][:, n:].any()  # only padding is dropped
        out[emb], out[mask] = text[emb][:, :n], text[mask][:, :n]
    return out


@pytest.mark.slow
def test_objective_memorises_one_latent_and_the_pipeline_samples_it(hv15_tiny, tmp_path):
    """Sign and scale end to end: after train() memorises x0, HunyuanVideo15Pipeline + our LoRA (through
    ``transformer.load_lora_adapter(path)``) samples ~x0 from noise (CFG off, the folder's shift 5).

    LoRA rank 64 (the tiny width) on every linear layer of the blocks plus the output head (``norm_out.linear``,
    ``proj_out``: the ``all-linear`` preset alone leaves the velocity error at ~0.73), 600 steps, sigmas
    uniform with the sampler's shift 5. Measured (2026-11-29, CPU, 1 thread, ~80 s):
    ||sample - x0|| / ||sample - noise|| = 0.37 and 0.35 for two seeds, against 2.7 untrained; with
    learning_rate 1e-12 (0 is refused by the config) the ratio stays at the untrained 2.67 / 2.74.
    """
    from diffusers import HunyuanVideo15Pipeline

    prompt = "a yellow ball bounces on a dark background"
    x0_raw = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(11))
    cache = write_fixed_latent_cache(SPEC, hv15_tiny, tmp_path / "cache", [x0_raw], [prompt], text_fn=_drop_padding)
    entry = read_index(cache)[0]
    assert (entry.frames, entry.height, entry.width) == (1, 32, 32)  # 16x spatial, from the spec
    cfg = load_config(None, train_overrides(hv15_tiny, cache, tmp_path / "run", **{
        "model.name": "hunyuan-video-1.5", "lora.rank": 64, "lora.alpha": 64,
        "lora.targets": ["transformer_blocks.*", "norm_out.linear", "proj_out"], "training.batch_size": 1,
        "training.max_steps": 600, "training.learning_rate": 3e-3, "training.lr_warmup_steps": 20,
        "training.lr_scheduler": "constant_with_warmup",
        "training.max_grad_norm": 1.0, "objective.timestep_sampling": "uniform", "objective.shift": 5.0,
        "data.frame_buckets": [1], "data.caption_dropout": 0.0, "training.gradient_checkpointing": False,
        "training.log_every": 100, "save.formats": "[diffusers, comfyui, kohya]"}))
    result = train(cfg)
    x0 = x0_raw.unsqueeze(0) * SPEC.load_vae_config(LoadOptions(str(hv15_tiny)))["scaling_factor"]

    pipe = HunyuanVideo15Pipeline.from_pretrained(str(hv15_tiny))
    pipe.guider = pipe.guider.new(guidance_scale=1.0)  # trained without caption dropout: no CFG
    pipe.set_progress_bar_config(disable=True)
    full = SPEC.text.encode(SPEC.text.load(LoadOptions(str(hv15_tiny))), [prompt], 1)
    probe = torch.randn(1, 32, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # dropping the padding does not change the transformer's output
        a, b = (pipe.transformer(**SPEC.transformer_inputs(probe, torch.tensor([0.7]), t, 1.0))[0]
                for t in (full, _drop_padding(full)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    def ratios():
        out = []
        for seed in (0, 1):
            noise = torch.randn(1, 32, 1, 2, 2, generator=torch.Generator().manual_seed(seed))
            sample = pipe(prompt=prompt, height=32, width=32, num_frames=1, num_inference_steps=20,
                          output_type="latent", generator=torch.Generator().manual_seed(seed)).frames
            out.append(((sample - x0).norm() / (sample - noise).norm()).item())
        return out

    untrained = ratios()
    pipe.transformer.load_lora_adapter(str(result.lora_path))
    trained = ratios()
    print("memorisation ratio trained", trained, "untrained", untrained)
    assert min(untrained) > 1.5, untrained
    assert max(trained) < 0.6, trained
