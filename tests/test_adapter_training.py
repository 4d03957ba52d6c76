"""Adapter types (lora.type: dora, lokr, loha): PEFT configs, float32 weights, training, exact resume,
loading in `sample`, a type change on resume refused, and the config checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hv_tune.config import LokrOptions, LoraConfig, load_config
from hv_tune.data.cache import CachedDataset, collate
from hv_tune.errors import ConfigError
from hv_tune.lora import (
    adapter_type,
    add_lora,
    extra_activation_bytes,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    peft_config,
    read_peft_adapter,
    resolve_targets,
)
from hv_tune.models import LoadOptions, get_spec
from hv_tune.training.checkpoint import list_checkpoints, load_checkpoint
from hv_tune.training.step import step_generator, training_loss
from hv_tune.training.trainer import train

from .conftest import memorisation_ratios, train_overrides, write_fixed_latent_cache

#: family -> (tiny model fixture, cache fixture, overrides that fit the cache)
SMALL = {"data.frame_buckets": [1], "data.resolution": 16}
FAMILIES = {
    "hunyuan-video": ("tiny_model", "v1_latent_cache", SMALL),
    "hunyuan-video-1.5": ("hv15_tiny", "hv15_latent_cache", {**SMALL, "data.resolution": 32}),
    "hunyuan-video-1.5-i2v": ("hv15_i2v_tiny", "hv15_i2v_cache", {}),
}
#: the PEFT state-dict names each type trains (lokr with decompose_both at rank 1 splits both factors of
#: the tiny models' layers: PEFT splits a factor when the rank is below half its larger side)
MARKERS = {"dora": ("lora_A", "lora_magnitude_vector"), "lokr": ("lokr_w1_a", "lokr_w2_a"),
           "loha": ("hada_w1_a", "hada_w2_b")}
TYPE_OPTIONS = {"lokr": {"lora.lokr.decompose_both": True, "lora.lokr.factor": 4, "lora.rank": 1}}
#: the (type, family) pairs whose trained file also goes through `sample`'s loader: each type and each
#: family once (a Latin square), to keep the suite short; the LoKr checkpoint test loads v1 as well
MEMORISE_STEPS = 400
SAMPLED = {("dora", "hunyuan-video-1.5"), ("lokr", "hunyuan-video-1.5-i2v"), ("loha", "hunyuan-video")}


def _latent_cache(family: str, model: Path, out: Path, channels: int) -> Path:
    """Two fixed one-frame latents (no VAE encode: only the prompts are encoded)."""
    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(channels, 1, 2, 2, generator=g) for _ in range(2)]
    return write_fixed_latent_cache(get_spec(family), model, out, latents, ["a red cube", "a blue ball"])


@pytest.fixture(scope="module")
def v1_latent_cache(tiny_model, tmp_path_factory) -> Path:
    return _latent_cache("hunyuan-video", tiny_model, tmp_path_factory.mktemp("c1"), 4)


@pytest.fixture(scope="module")
def hv15_latent_cache(hv15_tiny, tmp_path_factory) -> Path:
    return _latent_cache("hunyuan-video-1.5", hv15_tiny, tmp_path_factory.mktemp("c15"), 32)


# ----------------------------------------------------------------------------- configs and injection


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr", "loha"])
def test_every_type_is_injected_float32_trainable_and_round_trips(kind, spec, tiny_model):
    """On a bf16 base every adapter weight is float32 and trainable (the old name test kept LoKr/LoHa
    weights in bf16), the state dict has the type's PEFT names and loads back exactly."""
    model = spec.load_transformer(LoadOptions(str(tiny_model), torch.bfloat16))
    lokr = LokrOptions(factor=4, decompose_both=True) if kind == "lokr" else LokrOptions()
    cfg = LoraConfig(type=kind, rank=1 if kind == "lokr" else 2, alpha=1.0, lokr=lokr)
    config = peft_config(cfg, resolve_targets(spec, model, "attn"), [n for n, _ in model.named_modules()])
    assert adapter_type(config) == kind
    torch.manual_seed(0)
    add_lora(model, config)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for _, p in trainable), [(n, p.dtype) for n, p in trainable]
    assert len(lora_parameters(model)) == len(trainable)
    state = lora_state_dict(model)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for _, p in trainable)
    for marker in MARKERS.get(kind, ("lora_A", "lora_B")):
        assert any(f".{marker}" in k for k in state), (marker, list(state)[:4])
    changed = {k: torch.randn_like(v) for k, v in state.items()}
    load_lora_state_dict(model, changed)
    assert all(torch.equal(changed[k], v) for k, v in lora_state_dict(model).items())


def test_type_options_are_checked_naming_the_key_and_every_format_takes_every_type(tiny_model, tmp_path):
    base = [f"model.path={tiny_model}", f"output_dir={tmp_path / 'run'}", "save.formats=[diffusers]"]
    cases = [
        (["lora.type=lokr", "lora.lokr.factor=0"], "lora.lokr.factor"),
        (["lora.type=loha", "lora.lokr.factor=8"], "lora.lokr"),
        (["lora.lokr.decompose_both=true"], "lora.lokr"),
        (["lora.type=lokr", "lora.dropout=0.1"], "lora.dropout"),
        (["lora.type=lycoris"], "lora.type"),
    ]
    for extra, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [*base, *extra])
    cfg = load_config(None, [*base, "lora.type=lokr", "lora.lokr.factor=8", "lora.lokr.decompose_both=true"])
    assert (cfg.lora.type, cfg.lora.lokr.factor, cfg.lora.lokr.decompose_both) == ("lokr", 8, True)
    assert load_config(None, [f"model.path={tiny_model}"]).lora.type == "lora"  # default, formats as before
    for kind, fmt in (("lokr", "comfyui"), ("dora", "kohya"), ("loha", "comfyui-internal")):  # every layout writes every type
        assert load_config(None, [*base, f"lora.type={kind}", f"save.formats=[diffusers, {fmt}]"]).lora.type == kind


def test_extra_activation_bytes_match_what_autograd_keeps():
    """The bytes autograd saves for backward in one adapted linear layer, beyond plain LoRA's, as
    ``extra_activation_bytes`` says (float32, counted with saved-tensor hooks, by storage)."""
    from torch import nn

    tokens, fin, fout = 64, 48, 40

    def saved_bytes(kind: str) -> int:
        class One(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(fin, fout)

            def forward(self, x):
                return self.proj(x)

        model = One()
        model.requires_grad_(False)
        config = peft_config(LoraConfig(type=kind, rank=4, alpha=4.0), ["proj"])
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, model)
        for n, p in model.named_parameters():
            p.requires_grad_(any(m in n for m in ("lora_", "lokr_", "hada_")))
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(tokens, fin, requires_grad=True)  # as after an earlier adapted layer
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return sum(b for b in seen.values() if b > 4 * 4 * max(tokens, fin, fout))  # leaves out rank-sized tensors

    plain = saved_bytes("lora")
    for kind in ("dora", "lokr", "loha"):
        want = extra_activation_bytes(kind, tokens, fin, fout, compute_bytes=4)
        assert saved_bytes(kind) - plain == pytest.approx(want, rel=0.05), kind
    assert extra_activation_bytes("lora", tokens, fin, fout) == 0


# ----------------------------------------------------------------------------- training, resume, sample


def _loss(spec, model, batch, cfg, tiny) -> float:
    vae = spec.load_vae_config(LoadOptions(str(tiny)))
    with torch.no_grad():
        return training_loss(spec, model.eval(), batch, cfg.objective, vae, 1.0, step_generator(0, 0, 0, 0),
                             torch.float32).item()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind", ["dora", "lokr", "loha"])
def test_type_trains_resumes_exactly_and_loads_in_sample(kind, family, request, tmp_path, capsys):
    """1 + 1 steps with a checkpoint at 1 (a run killed after it) == 2 steps straight, byte for byte; the
    final file holds the PEFT state dict of the type; `sample`'s loader gives the trained model's output."""
    spec = get_spec(family)
    model_fixture, cache_fixture, fit = FAMILIES[family]
    tiny, cache = request.getfixturevalue(model_fixture), request.getfixturevalue(cache_fixture)
    cfg = load_config(None, train_overrides(tiny, cache, tmp_path / "run", **{
        "model.name": family, "lora.type": kind, "training.max_steps": 2, "training.checkpoint_every": 1,
        "training.checkpoints_to_keep": 5, "training.batch_size": 1, "save.formats": "[diffusers]",
        "lora.rank": 2, "training.learning_rate": 2e-2, "training.gradient_checkpointing": False,
        **fit, **TYPE_OPTIONS.get(kind, {})}))
    result = train(cfg)
    want = result.lora_path.read_bytes()
    saved = load_file(str(result.lora_path))
    assert {k.removeprefix("transformer.") for k in saved} == set(result.adapter)
    for marker in MARKERS[kind]:
        assert any(f".{marker}" in k for k in saved), (marker, list(saved)[:4])

    ckpts = tmp_path / "run" / "checkpoints"
    shutil.rmtree(list_checkpoints(ckpts)[-1])  # the state a run killed after its checkpoint at step 1 leaves
    result.lora_path.unlink()
    assert load_checkpoint(list_checkpoints(ckpts)[-1]).state.lora_type == kind
    assert train(cfg, resume=True).lora_path.read_bytes() == want
    assert "resumed from" in capsys.readouterr().out
    if (kind, family) in SAMPLED:
        _check_sample_loads(spec, tiny, cache, cfg, result)


def _random_lora_file(spec, tiny, out: Path) -> Path:
    """A plain LoRA (rank 2, attn, random non-zero B) written as training writes it."""
    from hv_tune.export.save import save_trained_lora

    model = spec.load_transformer(LoadOptions(str(tiny)))
    config = peft_config(LoraConfig(rank=2, alpha=2.0), resolve_targets(spec, model, "attn"),
                         [n for n, _ in model.named_modules()])
    torch.manual_seed(1)
    add_lora(model, config)
    state = {k: torch.randn_like(v) * 0.05 for k, v in lora_state_dict(model).items()}
    save_trained_lora(spec, out, state, config, ["diffusers"], str(tiny))
    return out / "pytorch_lora_weights.safetensors"


def _check_sample_loads(spec, tiny, cache, cfg, result) -> None:
    """`sample`'s loader (``load_pipeline``) applies the trained file as the trained model computes."""
    from hv_tune.sampling import load_pipeline

    batch = collate([CachedDataset(cache)[(0, 0)]])
    ours = spec.load_transformer(LoadOptions(str(tiny)))
    add_lora(ours, peft_config(cfg.lora, resolve_targets(spec, ours, cfg.lora.targets),
                               [n for n, _ in ours.named_modules()]))
    load_lora_state_dict(ours, result.adapter)
    trained = _loss(spec, ours, batch, cfg, tiny)
    base = _loss(spec, spec.load_transformer(LoadOptions(str(tiny))), batch, cfg, tiny)
    assert abs(trained - base) > 1e-5 * abs(base)  # the adapter changes the model
    pipe = load_pipeline(spec, str(tiny), [(str(result.lora_path), 1.0)], "cpu", torch.float32)
    # different computation paths (folded weights for LoKr/LoHa, diffusers' loader for DoRA): a tolerance
    assert _loss(spec, pipe.transformer, batch, cfg, tiny) == pytest.approx(trained, rel=1e-5)


def test_checkpoint_adapter_loads_at_a_scale_and_a_type_change_on_resume_is_refused(spec, tiny_model, v1_latent_cache,
                                                                                     tmp_path):
    """A LoKr run renders its validation preview; its checkpoint's adapter.safetensors (PEFT names, no
    prefix) loads in `sample` at strength 0 (= base) and 1 (= the final file), and together with a plain
    LoRA file in either order; resuming that run as LoHa or with another factor is refused naming the key."""
    from hv_tune.sampling import load_pipeline

    demo_cache = v1_latent_cache
    over = {"lora.type": "lokr", "training.max_steps": 1, "training.checkpoint_every": 1, "training.batch_size": 1,
            "save.formats": "[diffusers]", "lora.rank": 2, "training.learning_rate": 2e-2, **SMALL}
    previews = {"validation.every": 1, "validation.prompts": "['a red cube']", "validation.frames": 1,
                "validation.height": 16, "validation.width": 16, "validation.steps": 2, "validation.eval_items": 0}
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **over, **previews))
    result = train(cfg)
    assert (tmp_path / "run" / "samples" / "step_00000001" / "00.png").is_file()  # a preview with the LoKr
    adapter_file = list_checkpoints(tmp_path / "run" / "checkpoints")[0] / "adapter.safetensors"
    read = read_peft_adapter(spec, adapter_file)
    assert read is not None and read.type == "lokr" and set(read.state) == set(result.adapter)
    batch = collate([CachedDataset(demo_cache)[(0, 0)]])
    base = _loss(spec, spec.load_transformer(LoadOptions(str(tiny_model))), batch, cfg, tiny_model)
    zero = load_pipeline(spec, str(tiny_model), [(str(adapter_file), 0.0)], "cpu", torch.float32)
    one = load_pipeline(spec, str(tiny_model), [(str(adapter_file), 1.0)], "cpu", torch.float32)
    final = load_pipeline(spec, str(tiny_model), [(str(result.lora_path), 1.0)], "cpu", torch.float32)
    assert _loss(spec, zero.transformer, batch, cfg, tiny_model) == pytest.approx(base, rel=1e-6)
    got = _loss(spec, one.transformer, batch, cfg, tiny_model)
    assert abs(got - base) > 1e-5 * abs(base)
    assert _loss(spec, final.transformer, batch, cfg, tiny_model) == pytest.approx(got, rel=1e-6)
    assert read_peft_adapter(spec, tmp_path / "run" / "config.yaml") is None
    # PEFT's own folder (save_pretrained's config file, base_model.model. keys) reads the same; original
    # module names (diffusion-pipe's diffusion_model. keys) are left to hv_tune.export's reader
    from safetensors.torch import save_file

    folder = tmp_path / "peft_folder"
    read.config.save_pretrained(str(folder))
    save_file({f"base_model.model.{k}": v for k, v in read.state.items()}, str(folder / "adapter_model.safetensors"))
    again = read_peft_adapter(spec, folder / "adapter_model.safetensors")
    assert again.type == "lokr" and again.config.decompose_factor == -1
    assert all(torch.equal(again.state[k], v) for k, v in read.state.items())
    save_file({f"diffusion_model.{k}": v for k, v in read.state.items()}, str(folder / "adapter_model.safetensors"))
    assert read_peft_adapter(spec, folder / "adapter_model.safetensors") is None

    # with a plain LoRA file, in either order: both apply (LoKr is folded before the LoRA is wrapped on)
    lora_file = _random_lora_file(spec, tiny_model, tmp_path / "plain")
    alone = _loss(spec, load_pipeline(spec, str(tiny_model), [(str(lora_file), 1.0)], "cpu", torch.float32)
                  .transformer, batch, cfg, tiny_model)
    both = [_loss(spec, load_pipeline(spec, str(tiny_model), pair, "cpu", torch.float32).transformer, batch, cfg,
                  tiny_model) for pair in ([(str(adapter_file), 1.0), (str(lora_file), 1.0)],
                                           [(str(lora_file), 1.0), (str(adapter_file), 1.0)])]
    assert both[0] == pytest.approx(both[1], rel=1e-6)
    assert min(abs(both[0] - alone), abs(both[0] - got)) > 1e-6 * abs(base)

    # a LoKr file whose factors do not fit the model is refused naming the file, not a traceback
    from safetensors import safe_open

    from hv_tune.errors import HvTuneError

    with safe_open(str(adapter_file), "pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad" / "adapter.safetensors"
    bad.parent.mkdir()
    first = sorted(read.state)[0]
    save_file({**read.state, first: torch.zeros(3, 5)}, str(bad), metadata=meta)
    with pytest.raises(HvTuneError, match="bad/adapter.safetensors.*does not fit"):
        load_pipeline(spec, str(tiny_model), [(str(bad), 1.0)], "cpu", torch.float32)

    for change, key in (({"lora.type": "loha"}, "lora.type"), ({"lora.lokr.factor": 4}, "lora.lokr.factor")):
        again = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
            **over, "training.max_steps": 2, **change}))
        with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}.*cannot change within a run"):
            train(again, resume=True, resume_anyway=True)


@pytest.mark.slow
def test_lokr_memorises_one_latent_and_sample_reproduces_it(spec, tiny_model, tmp_path):
    """The LoRA memorisation test (tests/test_lora_training.py) with a LoKr on every linear layer,
    sampled through `sample`'s loader (LoKr folded into the weights through PEFT).

    factor 2 and rank 64 keep both Kronecker factors whole: each layer's update is w1 ⊗ w2 with a 2 x 2
    w1 and a w2 of half the layer's sides (scale alpha / r = 1): a 64 x 64 layer trains 4 + 1024
    values instead of 4096, so it gets a higher learning rate than the LoRA test. Measured (2026-12-05, CPU, 1
    thread, ~80 s): ||sample - x0|| / ||sample - noise|| = 0.38 and 0.40 for two sampling seeds,
    against 3.5 and 3.4 untrained (LoRA's test: 0.22); 300 steps at lr 4e-3 leave 0.69 and 0.85.
    """
    from diffusers import HunyuanVideoPipeline

    from hv_tune.sampling import load_pipeline

    prompt = "a yellow ball bounces on a dark background"
    x0_raw = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(11)) * 2.0
    cache = write_fixed_latent_cache(spec, tiny_model, tmp_path / "cache", [x0_raw], [prompt])
    cfg = load_config(None, train_overrides(tiny_model, cache, tmp_path / "run", **{
        "lora.type": "lokr", "lora.rank": 64, "lora.alpha": 64, "lora.lokr.factor": 2, "lora.targets": ["*"],
        "training.batch_size": 1,
        "training.max_steps": MEMORISE_STEPS, "training.learning_rate": 8e-3, "training.lr_scheduler": "cosine",
        "training.lr_warmup_steps": 20, "training.max_grad_norm": 1.0, "objective.timestep_sampling": "uniform",
        "data.frame_buckets": [1], "data.resolution": 16, "training.gradient_checkpointing": False,
        "save.formats": "[diffusers]", "training.log_every": 100}))
    result = train(cfg)
    x0 = x0_raw.unsqueeze(0) * spec.load_vae_config(LoadOptions(str(tiny_model)))["scaling_factor"]

    untrained = memorisation_ratios(HunyuanVideoPipeline.from_pretrained(tiny_model), prompt, x0)
    trained = memorisation_ratios(load_pipeline(spec, str(tiny_model), [(str(result.lora_path), 1.0)], "cpu", torch.float32),
                                   prompt, x0)
    print("LoKr memorisation ratio trained", trained, "untrained", untrained)
    assert min(untrained) > 0.8, untrained
    assert max(trained) < 0.5, trained
