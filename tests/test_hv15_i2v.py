"""HunyuanVideo 1.5 image-to-video: the cached first-frame condition is the pipeline's, training and the
LoRA go through ``HunyuanVideo15ImageToVideoPipeline``, and sampling starts from the user's image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hv_tune.cli import main
from hv_tune.config import load_config
from hv_tune.data.cache import CachedDataset, collate, read_index
from hv_tune.errors import ConfigError, HvTuneError
from hv_tune.models import LoadOptions, get_spec
from hv_tune.training.trainer import train
from tests.lora_utils import assert_adapter_file_reproduces_training, convert_round_trip

from .conftest import REPO, cache_config, train_overrides

SPEC = get_spec("hunyuan-video-1.5-i2v")
NAME = {"model.name": "hunyuan-video-1.5-i2v"}
MEMO_STEPS, MEMO_LR = 400, 5e-3


def _item_and_first_frame(model: Path, folder: Path, cache: Path, index: int = 0):
    """Cache entry ``index`` and the first frame of the pixels its latent was encoded from (uint8 [H, W, 3])."""
    from hv_tune.data.encode import load_pixels
    from hv_tune.data.fingerprint import cache_fingerprint, model_key
    from hv_tune.data.plan import plan_items
    from hv_tune.data.sources import scan_sources

    entry = read_index(cache)[index]
    cfg = cache_config(model, folder, cache, "model.name=hunyuan-video-1.5-i2v", "data.frame_buckets=[5]")
    scan = scan_sources(cfg.data)
    key = model_key(cache_fingerprint(cfg, SPEC.name, "transformer", scan)["model"])
    item = next(p for p in plan_items(scan, cfg.data, key, SPEC.video) if p.id == entry.id)
    pixels = load_pixels(item)  # [3, F, H, W] in [-1, 1], exactly what the latent was encoded from
    frame = ((pixels[:, 0].permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    return entry, frame


def _capture_transformer_calls(pipe) -> list[dict]:
    calls: list[dict] = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
    return calls


def test_cached_condition_is_what_the_i2v_pipeline_builds(hv15_i2v_tiny, hv15_i2v_cache, demo_folder):
    """The I2V pipeline, given an item's first frame, feeds its transformer exactly our cached condition
    (latent frame 0 = VAE mode of the frame, mask 1 there, SigLIP tokens) in both CFG branches, and
    ``spec.transformer_inputs`` on a cached batch equals the pipeline's conditional call."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline

    entry, frame = _item_and_first_frame(hv15_i2v_tiny, demo_folder, hv15_i2v_cache)
    pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(str(hv15_i2v_tiny))
    calls = _capture_transformer_calls(pipe)
    pipe(image=Image.fromarray(frame), prompt=entry.captions[0], num_frames=5, num_inference_steps=1,
         output_type="latent", generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2  # guider scale 6: conditional and unconditional branch

    batch = collate([CachedDataset(hv15_i2v_cache)[(0, 0)]])
    assert batch["cond_latents"][:, :, 0].abs().max() > 0 and not batch["cond_latents"][:, :, 1:].any()
    assert batch["cond_mask"][:, :, 0].eq(1).all() and not batch["cond_mask"][:, :, 1:].any()
    for call in calls:  # the unconditional branch keeps the image: nothing to drop in training
        torch.testing.assert_close(call["hidden_states"][:, 32:64], batch["cond_latents"], rtol=0, atol=1e-6)
        assert torch.equal(call["hidden_states"][:, 64:], batch["cond_mask"])
        torch.testing.assert_close(call["image_embeds"], batch["image_embeds"], rtol=0, atol=1e-6)


    noisy, sigma = calls[0]["hidden_states"][:, :32], torch.tensor([1.0])  # one step: sigma 1, timestep 1000
    ours = SPEC.transformer_inputs(noisy, sigma, batch, 1.0, torch.float32)
    for key in ("hidden_states", "image_embeds", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                "encoder_hidden_states_2", "encoder_attention_mask_2"):
        torch.testing.assert_close(ours[key], calls[0][key].to(ours[key].dtype), rtol=0, atol=1e-6, msg=key)


def test_missing_condition_file_is_rebuilt(hv15_i2v_tiny, demo_folder, tmp_path):
    """A deleted first-frame condition file is found by the cache check and re-encoded (nothing else)."""
    from hv_tune.data.encode import build_cache
    from hv_tune.training.cache_check import prepare_cache

    cfg = cache_config(hv15_i2v_tiny, demo_folder, tmp_path / "c", "model.name=hunyuan-video-1.5-i2v",
                       "data.frame_buckets=[5]")
    build_cache(SPEC, cfg, "cpu")
    entries = read_index(tmp_path / "c")
    cond = next(enc.name for enc in SPEC.item_encoders if enc.role == "condition")
    assert all(e.files.get(cond) and (tmp_path / "c" / e.files[cond]).is_file() for e in entries)
    (tmp_path / "c" / entries[2].files[cond]).unlink()
    prepare_cache(SPEC, cfg, "cpu")
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["conditions_encoded"] == 1 and summary["latents_encoded"] == 0
    assert (tmp_path / "c" / entries[2].files[cond]).is_file()


def test_stills_conditioned_on_themselves_are_counted_and_explained(hv15_i2v_tiny, hv15_tiny, tmp_path, capsys):
    """An I2V cache with a 1-frame bucket: `cache` says how many items are stills conditioned on themselves
    (summary.json too), `train` repeats it when it uses that cache as it is; a text-to-video cache of the same
    folder, and an I2V cache without the 1-frame bucket (the still is skipped), say nothing of the kind."""
    from hv_tune.data.demo import write_demo_folder
    from hv_tune.training.cache_check import prepare_cache

    folder = tmp_path / "clips"
    write_demo_folder(folder, 1, 8, 32, 32)  # one clip + one still image

    def cache(model, name, buckets):
        out = tmp_path / f"cache-{name}-{len(buckets)}"
        args = [f"model.path={model}", f"model.name={name}", f"data.cache_dir={out}",
                f"data.sources=[{{path: {folder}}}]", f"data.frame_buckets={buckets}", "data.resolution=32"]
        assert main(["cache", "--config", str(REPO / "configs" / "demo_tiny.yaml"), *args]) == 0
        return out, json.loads((out / "summary.json").read_text()), capsys.readouterr().out, args

    out, summary, text, args = cache(hv15_i2v_tiny, SPEC.name, [1, 5])
    assert summary["items"] == 2 and summary["i2v_stills"] == 1
    assert "image-to-video: 1 of 2 items are stills (1-frame bucket) conditioned on themselves" in text
    assert "teach the LoRA little" in text and "leave 1 out of data.frame_buckets" in text
    prepare_cache(SPEC, load_config(REPO / "configs" / "demo_tiny.yaml", args), "cpu")  # train's cache step: the cache is up to date
    said = capsys.readouterr().out
    assert "rebuild" not in said and f"note: cache {out}: image-to-video: 1 of 2 items are stills" in said

    _, summary, text, _ = cache(hv15_tiny, "hunyuan-video-1.5", [1, 5])
    assert summary["items"] == 2 and summary["i2v_stills"] == 0 and "conditioned on themselves" not in text
    _, summary, text, _ = cache(hv15_i2v_tiny, SPEC.name, [5])
    assert summary["items"] == 1 and summary["i2v_stills"] == 0 and "conditioned on themselves" not in text
    assert "no 1-frame bucket" in text


@pytest.fixture(scope="module")
def trained(hv15_i2v_tiny, hv15_i2v_cache, tmp_path_factory):
    """4 steps on the I2V cache (alpha != rank, every linear preset layer, caption dropout on)."""
    cfg = load_config(None, train_overrides(hv15_i2v_tiny, hv15_i2v_cache, tmp_path_factory.mktemp("run"), **NAME, **{
        "lora.rank": 4, "lora.alpha": 7, "lora.targets": "all-linear", "training.learning_rate": 5e-3,
        "training.max_steps": 4, "save.formats": "[diffusers]"}))
    return cfg, train(cfg)


def _cached_inputs(cache: Path) -> dict:

    batch = collate([CachedDataset(cache)[(1, 0)]])
    noisy = torch.randn(1, 32, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    return SPEC.transformer_inputs(noisy, torch.tensor([0.6]), batch, 1.0, torch.float32)


def test_trained_lora_loads_with_load_lora_adapter_no_args(hv15_i2v_tiny, hv15_i2v_cache, trained):
    """diffusers' model-level loader (no argument) reproduces our trained transformer on I2V inputs."""

    cfg, result = trained
    inputs = _cached_inputs(hv15_i2v_cache)
    assert inputs["image_embeds"].abs().max() > 0  # the image branch is live
    assert_adapter_file_reproduces_training(SPEC, hv15_i2v_tiny, cfg.lora, result.adapter, result.lora_path, inputs)


def test_merge_equals_load_lora_adapter(hv15_i2v_tiny, hv15_i2v_cache, trained, tmp_path):
    """`merge` into the I2V folder (found from model_index.json): the merged folder loads as the I2V
    pipeline and its transformer equals the base + the adapter."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel

    lora = trained[1].lora_path
    out = tmp_path / "merged"
    assert main(["merge", "--model", str(hv15_i2v_tiny), "--lora", str(lora), "--out", str(out)]) == 0
    pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(str(out))  # SigLIP parts carried over
    inputs = _cached_inputs(hv15_i2v_cache)
    with torch.no_grad():
        merged = pipe.transformer(**inputs)[0]
        adapter = HunyuanVideo15Transformer3DModel.from_pretrained(str(hv15_i2v_tiny), subfolder="transformer")
        adapter.load_lora_adapter(str(lora))
        want = adapter(**inputs)[0]
    torch.testing.assert_close(merged, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_export_round_trip_keeps_the_trained_lora(hv15_i2v_tiny, hv15_i2v_cache, trained, tmp_path, layout):
    """`convert` finds the I2V family from model_index.json and writes the T2V layouts (same transformer
    names); converting back gives the trained transformer's outputs on I2V inputs."""
    from diffusers import HunyuanVideo15Transformer3DModel

    lora = trained[1].lora_path
    _, back = convert_round_trip(hv15_i2v_tiny, lora, tmp_path, layout)
    inputs = _cached_inputs(hv15_i2v_cache)
    outputs = []
    for file in (lora, back):
        model = HunyuanVideo15Transformer3DModel.from_pretrained(str(hv15_i2v_tiny), subfolder="transformer")
        model.load_lora_adapter(str(file))
        with torch.no_grad():
            outputs.append(model(**inputs)[0])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_sample_cli_with_image_equals_the_i2v_pipeline(hv15_i2v_tiny, trained, demo_folder, tmp_path, capsys):
    """`sample --image` = HunyuanVideo15ImageToVideoPipeline + load_lora_adapter by hand (CFG 3.5, shift 4);
    missing/unreadable images and wrong combinations are errors that name the problem."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline

    lora = str(trained[1].lora_path)
    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(image)
    args = ["sample", "--model", str(hv15_i2v_tiny), "--lora", lora, "--prompt", "a toy robot", "--frames", "1",
            "--steps", "2", "--guidance", "3.5", "--shift", "4", "--seed", "2", "--image", str(image)]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0, capsys.readouterr().err
    got = np.asarray(Image.open(tmp_path / "a.png"))

    pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(str(hv15_i2v_tiny))
    pipe.transformer.load_lora_adapter(lora)
    pipe.guider = pipe.guider.new(guidance_scale=3.5)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=4.0)
    ref = pipe(image=Image.open(image), prompt="a toy robot", num_frames=1, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(2)).frames[0][0]
    assert got.shape == ref.shape == (32, 32, 3)  # size from the image (square) and target_size 32
    want = (np.clip(ref, 0, 1) * 255).round()
    assert np.abs(got.astype(float) - want).max() <= 1

    capsys.readouterr()
    for extra, message in [
        (["--image", str(tmp_path / "nope.png")], "nope.png does not exist"),
        (["--image", str(demo_folder / "clip000.txt")], "clip000.txt cannot be used as the first frame"),
        ([], "image-to-video model: give the first frame with --image"),
        (["--image", str(image), "--height", "64"], "--height/--width do not apply with --image"),
    ]:
        cut = args[: args.index("--image")]
        assert main([*cut, *extra, "--out", str(tmp_path / "b.png")]) == 2
        assert message in capsys.readouterr().err


def test_image_for_a_text_to_video_model_is_refused(tmp_path, capsys):
    t2v = get_spec("hunyuan-video-1.5").build_tiny(tmp_path / "t2v")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["sample", "--model", str(t2v), "--prompt", "p", "--image", str(image), "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "text-to-video model" in capsys.readouterr().err


def test_validation_previews_start_from_the_configured_images(hv15_i2v_tiny, hv15_i2v_cache, tmp_path):
    """validation.images: one first frame per prompt; missing or absent images stop the run before loading."""
    image = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    base = train_overrides(hv15_i2v_tiny, hv15_i2v_cache, tmp_path / "val", **NAME, **{
        "training.max_steps": 2, "save.formats": "[diffusers]", "validation.every": 2,
        "validation.prompts": "['a red ball']", "validation.frames": 5, "validation.steps": 2,
        "validation.eval_items": 0})
    with pytest.raises(HvTuneError, match=r"validation.images\[0\]: image .*gone.png does not exist; set validation.images .*validation.every=0"):
        train(load_config(None, [*base, f"validation.images=[{tmp_path / 'gone.png'}]"]))
    with pytest.raises(ConfigError, match="one image per prompt"):
        load_config(None, [*base, f"validation.images=[{image}, {image}]"])
    with pytest.raises(ConfigError, match="one image per prompt"):
        train(load_config(None, base))
    assert not (tmp_path / "val" / "checkpoints").exists()  # refused before anything ran
    train(load_config(None, [*base, f"validation.images=[{image}]"]))
    assert (tmp_path / "val" / "samples" / "step_00000002" / "00.mp4").is_file()


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads made each small matmul ~40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_memorises_a_clip_from_its_first_frame(hv15_i2v_tiny, tmp_path, one_thread):
    """Train on one clip; the I2V pipeline + LoRA, given that clip's first frame, lands near the clip.

    Ratio ||sample - x0|| / ||sample - noise|| in latent space (x0 = the clip's scaled posterior mean,
    noise = the pipeline's initial latents), over all latent frames and over latent frames 1.. alone
    (those the condition does not give). The tiny random VAE's posterior has std ~1, so the cached
    logvar is set to -30: the target is then the one clip, not a cloud around it. Sigmas are shifted
    by 5 as the sampler's (the high-noise steps decide where a sample lands); no gradient clipping.
    Measured (1 CPU thread, 2026-11-29, 400 steps, lr 5e-3): trained (0.45, 0.52-0.55), untrained (2.42-2.48, 2.73-2.81);
    ~60 s. Runs differ a little (untrained 2.42 or 2.48: the encoded demo clip is not bit-stable);
    lr 3e-3 gave 0.43-0.54, 2e-3 0.52; 150 steps or clipping at 1.0 leave it above 0.6.
    """
    from hv_tune.data.cache import write_group
    from hv_tune.data.demo import write_demo_folder
    from hv_tune.data.encode import build_cache
    from hv_tune.sampling import load_pipeline

    clips = tmp_path / "clips"
    write_demo_folder(clips, 1, 8, 32, 32)
    cache = tmp_path / "cache"
    build_cache(SPEC, cache_config(hv15_i2v_tiny, clips, cache, "model.name=hunyuan-video-1.5-i2v",
                                   "data.frame_buckets=[5]"), "cpu")
    entry, frame = _item_and_first_frame(hv15_i2v_tiny, clips, cache)
    mean = CachedDataset(cache)[(0, 0)]["latent_mean"]
    write_group(cache, "latents", Path(entry.files["latents"]).stem,
                {"latent_mean": mean, "latent_logvar": torch.full_like(mean, -30.0)})
    cfg = load_config(None, train_overrides(hv15_i2v_tiny, cache, tmp_path / "run", **NAME, **{
        "lora.rank": 32, "lora.alpha": 32, "lora.targets": ["transformer_blocks.*", "proj_out"], "training.batch_size": 1,
        "training.max_steps": MEMO_STEPS, "training.learning_rate": MEMO_LR, "training.max_grad_norm": 0.0,
        "objective.timestep_sampling": "uniform", "objective.shift": 5.0, "training.gradient_checkpointing": False,
        "save.formats": "[diffusers]"}))
    result = train(cfg)
    x0 = mean[None] * SPEC.load_vae_config(LoadOptions(str(hv15_i2v_tiny)))["scaling_factor"]

    def ratios(pipe) -> tuple[float, float]:
        kw = dict(image=Image.fromarray(frame), prompt=entry.captions[0], num_frames=5, num_inference_steps=20,
                  output_type="latent")
        sample = pipe(**kw, generator=torch.Generator().manual_seed(3)).frames
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
        full = ((sample - x0).norm() / (sample - noise).norm()).item()
        later = ((sample - x0)[:, :, 1:].norm() / (sample - noise)[:, :, 1:].norm()).item()
        return full, later

    def pipeline(loras):
        pipe = load_pipeline(SPEC, str(hv15_i2v_tiny), loras, "cpu", torch.float32)
        pipe.guider = pipe.guider.new(guidance_scale=1.0)  # the conditional prediction alone
        return pipe

    untrained = ratios(pipeline([]))
    trained_ratio = ratios(pipeline([(str(result.lora_path), 1.0)]))
    print(f"I2V memorisation ratio (all frames, later frames): trained {trained_ratio}, untrained {untrained}")
    assert min(untrained) > 1.5, untrained
    assert trained_ratio[0] < 0.6 and trained_ratio[1] < 0.7, trained_ratio


@pytest.mark.parametrize("name,config", [("hunyuan-video-1.5", "hunyuan_video_1_5_lora.yaml"),
                                         ("hunyuan-video-1.5-i2v", "hunyuan_video_1_5_i2v_lora.yaml")])
def test_memory_plan_covers_1_5(name, config, hv15_tiny, hv15_i2v_tiny, tmp_path, capsys):
    """The shipped 1.5 configs: `plan` prints the table per preset and a recommendation (it used to exit 2:
    "the forward reads tensor values"); `train`'s plan check resolves auto to a preset on a GPU and to
    none on the CPU, and keeps a set preset."""
    from hv_tune.training.plan import config_for_training

    model = hv15_i2v_tiny if name.endswith("i2v") else hv15_tiny
    args = [f"model.path={model}", f"model.name={name}", f"output_dir={tmp_path / 'run'}"]
    cfg_file = Path(__file__).resolve().parent.parent / "configs" / config
    assert main(["plan", "--config", str(cfg_file), "--gpu-memory", "24GB", *args]) == 0
    out = capsys.readouterr().out
    assert "\n  12gb " in out and "\n  80gb " in out and "recommended memory.preset: 80gb" in out  # tiny: all fit
    cfg, text = config_for_training(cfg_file, [*args, "memory.preset=auto"], "24GB", device="cuda")
    assert cfg.model.name == name and cfg.memory.preset == "80gb" and "memory.preset auto -> 80gb" in text
    cfg, _ = config_for_training(cfg_file, [*args, "memory.preset=auto"], "24GB", device="cpu")
    assert cfg.memory.preset == "none"  # resolved: training must not stop at "auto must be resolved"
    cfg, text = config_for_training(cfg_file, args, "24GB", device="cuda")  # the shipped configs set 24gb
    assert cfg.memory.preset == "24gb" and "skipped" not in text


@pytest.mark.parametrize("config,folder", [("hunyuan_video_1_5_lora.yaml", "i2v"), ("hunyuan_video_1_5_i2v_lora.yaml", "t2v"),
                                           ("hunyuan_video_lora.yaml", "t2v")])
def test_a_config_of_another_family_than_the_folder_is_refused(config, folder, hv15_tiny, hv15_i2v_tiny, tmp_path,
                                                               capsys):
    """The shipped configs name their family; a folder of another family stops at load with both names
    (it used to run into a shape error at the first step, or a missing image encoder at cache time)."""
    model = hv15_i2v_tiny if folder == "i2v" else hv15_tiny
    cfg_file = Path(__file__).resolve().parent.parent / "configs" / config
    assert main(["train", "--config", str(cfg_file), f"model.path={model}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "config key 'model.name': " in err and f"but {model} holds a HunyuanVideo15" in err and "Traceback" not in err
