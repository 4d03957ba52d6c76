"""Negative prompts (``--n``) and the CFG scale (``--l``) of prompt-file lines, for ``sample --from-file`` and
validation previews, on all three families; diffusers' own pipelines, called by hand with the same negative
prompt, are the reference.

The references run another code path (text encoded inside the pipeline, or a LoRA loaded by diffusers
instead of our training wrapper), so frames are compared with a tolerance of one or two uint8 levels
(float rounding), not for equality. A negative prompt must change the image by more than that tolerance (the
tiny random models' text changes an image by a few levels only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hv_tune.cli import main
from hv_tune.errors import ConfigError


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(int)


def _v1_pipeline(model, shift: float = 7.0):
    """diffusers' HunyuanVideoPipeline with the Llama tokenizer loaded as hv-tune loads it (docs/decisions.md,
    tokenizers: the class model_index.json names crops the template wrongly under transformers 5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import AutoTokenizer

    pipe = HunyuanVideoPipeline.from_pretrained(model, tokenizer=AutoTokenizer.from_pretrained(model, subfolder="tokenizer"))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
    return pipe


def _sample_with_and_without_offload(model, tmp_path, lines: list[str], *extra: str) -> None:
    """``sample --from-file`` of ``lines`` into ``tmp_path/none`` (the pipeline encodes the text), and of
    the first line alone into ``tmp_path/text-encoders`` (``--offload text-encoders``: embeddings)."""
    (tmp_path / "prompts.txt").write_text("".join(f"{ln}\n" for ln in lines))
    (tmp_path / "first.txt").write_text(f"{lines[0]}\n")
    for offload, name in (("none", "prompts.txt"), ("text-encoders", "first.txt")):
        assert main(["sample", "--model", str(model), "--from-file", str(tmp_path / name), "--out",
                     str(tmp_path / offload), *extra, "--offload", offload]) == 0


def test_v1_negative_prompt_runs_the_pipelines_true_cfg(tiny_model, tmp_path):
    """v1 (guidance-distilled): `--n TEXT --l 4` = HunyuanVideoPipeline(negative_prompt=TEXT, true_cfg_scale=4),
    with the text encoded by the pipeline (no offload) or passed as embeddings (--offload text-encoders);
    the same line without them is another image."""
    line = "a red circle --w 32 --h 32 --f 1 --d 3 --s 2"
    _sample_with_and_without_offload(tiny_model, tmp_path, [f"{line} --n a blue square, blurry --l 4", line])
    pipe = _v1_pipeline(str(tiny_model))
    ref = pipe("a red circle", negative_prompt="a blue square, blurry", true_cfg_scale=4.0, guidance_scale=6.0,
               height=32, width=32, num_frames=1, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(3)).frames[0][0]
    negative, plain = _png(tmp_path / "none" / "00.png"), _png(tmp_path / "none" / "01.png")
    assert np.abs(negative - _uint8(ref)).max() <= 1
    assert np.abs(_png(tmp_path / "text-encoders" / "00.png") - _uint8(ref)).max() <= 1
    assert np.abs(negative - plain).max() > 2  # the negative prompt changes the image


@pytest.mark.parametrize("extra, message", [
    ("--n blurry", "--n on hunyuan-video needs true classifier-free guidance: add --l SCALE above 1"),
    ("--n blurry --l 1", "(--l 1 turns it off)"),
    ("--l 4", "--l on hunyuan-video is the true classifier-free guidance scale of a negative prompt: add --n"),
])
def test_v1_negative_prompt_needs_a_true_cfg_scale(tiny_model, demo_cache, tmp_path, capsys, extra, message):
    """musubi-tuner's v1 default (--l 1) would leave --n unused: refused, naming the line, before any model
    loads; in `sample --from-file` and in validation.prompts alike."""
    from hv_tune.config import load_config

    from .conftest import train_overrides

    f = tmp_path / "prompts.txt"
    f.write_text(f"fine --w 32 --h 32\nthe line --w 32 --h 32 {extra}\n")
    assert main(["sample", "--model", str(tiny_model), "--from-file", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and message in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match=f"{f}:2"):
        load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
            "validation.every": 1, "validation.prompts": str(f)}))


def test_hv15_negative_prompt_replaces_the_empty_prompt(hv15_tiny, tmp_path):
    """1.5 T2V: `--n TEXT` = HunyuanVideo15Pipeline(negative_prompt=TEXT) at the --guidance CFG scale, and
    `--l` is the guider's scale over --g (musubi-tuner's meaning for 1.5); with the pipeline's encoding or
    as embeddings (--offload text-encoders). Without --n the image is another one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline

    line = "a toy robot --w 32 --h 32 --f 1 --d 2 --s 2"
    _sample_with_and_without_offload(hv15_tiny, tmp_path, [f"{line} --n a red ball", line,
                                                           f"{line} --n a red ball --l 2.5 --g 9"], "--shift", "4")
    pipe = HunyuanVideo15Pipeline.from_pretrained(str(hv15_tiny))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=4.0)
    refs = []
    for scale in (6.0, 2.5):
        pipe.guider = pipe.guider.new(guidance_scale=scale)
        refs.append(_uint8(pipe("a toy robot", negative_prompt="a red ball", height=32, width=32, num_frames=1,
                                num_inference_steps=2, output_type="np",
                                generator=torch.Generator().manual_seed(2)).frames[0][0]))
    negative, plain, scaled = (_png(tmp_path / "none" / f"{i:02d}.png") for i in range(3))
    assert np.abs(negative - refs[0]).max() <= 1
    assert np.abs(_png(tmp_path / "text-encoders" / "00.png") - refs[0]).max() <= 1
    assert np.abs(scaled - refs[1]).max() <= 1
    assert np.abs(negative - plain).max() > 2


def test_hv15_i2v_negative_prompt(hv15_i2v_tiny, tmp_path):
    """1.5 I2V: `--i IMAGE --n TEXT` = HunyuanVideo15ImageToVideoPipeline(image, negative_prompt=TEXT) (CFG 12: the
    tiny model's text moves this image by only ~2 levels at 3.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline

    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(image)
    f = tmp_path / "prompts.txt"
    line = "a toy robot --i first.png --f 1 --d 2 --s 2"
    f.write_text(f"{line} --n a red ball\n{line}\n")
    out = tmp_path / "out"
    assert main(["sample", "--model", str(hv15_i2v_tiny), "--from-file", str(f), "--out", str(out),
                 "--guidance", "12", "--shift", "4"]) == 0
    pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(str(hv15_i2v_tiny))
    pipe.guider = pipe.guider.new(guidance_scale=12.0)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=4.0)
    ref = pipe(image=Image.open(image), prompt="a toy robot", negative_prompt="a red ball", num_frames=1,
               num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(2)).frames[0][0]
    negative, plain = _png(out / "00.png"), _png(out / "01.png")
    assert np.abs(negative - _uint8(ref)).max() <= 1
    assert np.abs(negative - plain).max() > 2


def test_validation_previews_honour_the_negative_prompt(spec, tiny_model, demo_cache, tmp_path):
    """A validation.prompts line with `--n TEXT --l 4` renders what HunyuanVideoPipeline renders with the run's
    LoRA and that negative prompt; the same line without them (same seed) renders another image."""
    from hv_tune.config import load_config
    from hv_tune.training.trainer import train

    from .conftest import train_overrides

    f = tmp_path / "previews.txt"
    line = "[trigger] a red ball --w 32 --h 32 --f 1 --d 1"
    f.write_text(f"{line} --n [trigger] a blue square --l 4\n{line}\n")
    out = tmp_path / "run"
    cfg = load_config(None, train_overrides(tiny_model, demo_cache, out, **{
        "training.max_steps": 1, "validation.every": 1, "validation.prompts": str(f), "validation.steps": 2,
        "validation.eval_items": 0, "data.trigger_word": "sks"}))
    result = train(cfg)
    step = out / "samples" / "step_00000001"
    negative, plain = _png(step / "00.png"), _png(step / "01.png")
    assert np.abs(negative - plain).max() > 2
    pipe = _v1_pipeline(str(tiny_model), cfg.validation.shift)
    pipe.load_lora_weights(str(result.lora_path))
    ref = pipe("sks a red ball", negative_prompt="sks a blue square", true_cfg_scale=4.0,
               guidance_scale=cfg.validation.guidance, height=32, width=32, num_frames=1, num_inference_steps=2,
               output_type="np", generator=torch.Generator().manual_seed(1)).frames[0][0]
    assert np.abs(negative - _uint8(ref)).max() <= 2


def test_hv15_preview_embeds_carry_the_negative_prompt_as_the_pipeline_encodes_it(hv15_tiny):
    """What 1.5 validation previews pass as the unconditional side: the negative prompt's embeddings as
    HunyuanVideo15Pipeline.encode_prompt computes them (our text stack is another code path: tolerance), not
    the empty prompt's."""
    from diffusers import HunyuanVideo15Pipeline

    from hv_tune.models import LoadOptions, get_spec

    spec = get_spec("hunyuan-video-1.5")
    enc = spec.text.load(LoadOptions(str(hv15_tiny)))
    mine = spec.pipeline.preview_embeds(enc, "a toy robot", 1, "a red ball")
    pipe = HunyuanVideo15Pipeline.from_pretrained(str(hv15_tiny))
    names = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")
    for text, prefix in (("a red ball", "negative_"), ("a toy robot", "")):
        theirs = dict(zip(names, pipe.encode_prompt(prompt=text, device="cpu")))
        for name in names:
            a, b = mine[prefix + name].float(), theirs[name].float()
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (prefix, name)
    empty = pipe.encode_prompt(prompt=None, device="cpu")[0]
    assert not torch.allclose(mine["negative_prompt_embeds"].float(), empty.float(), atol=1e-3)


def test_hv15_negative_prompt_is_encoded_when_the_folders_guider_has_no_cfg(hv15_tiny, tmp_path):
    """A folder whose guider runs no CFG (scale 1, as a CFG-distilled checkpoint's may) with a line that asks for
    CFG (--g 6) and --n: with --offload text-encoders the negative prompt is encoded up front too, so the image
    is the pipeline's with that negative prompt (not the empty prompt's)."""
    import json
    import shutil

    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline

    folder = tmp_path / "model"
    shutil.copytree(hv15_tiny, folder)
    guider = folder / "guider" / "guider_config.json"
    guider.write_text(json.dumps(json.loads(guider.read_text()) | {"guidance_scale": 1.0}))
    f = tmp_path / "prompts.txt"
    f.write_text("a toy robot --w 32 --h 32 --f 1 --d 2 --s 2 --g 6 --n a red ball\n")
    assert main(["sample", "--model", str(folder), "--from-file", str(f), "--out", str(tmp_path / "o"),
                 "--offload", "text-encoders"]) == 0
    pipe = HunyuanVideo15Pipeline.from_pretrained(str(hv15_tiny))  # its guider: scale 6
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=7.0)
    kw = {"height": 32, "width": 32, "num_frames": 1, "num_inference_steps": 2, "output_type": "np"}
    ref = pipe("a toy robot", negative_prompt="a red ball", generator=torch.Generator().manual_seed(2), **kw)
    empty = pipe("a toy robot", generator=torch.Generator().manual_seed(2), **kw)
    got = _png(tmp_path / "o" / "00.png")
    assert np.abs(got - _uint8(ref.frames[0][0])).max() <= 1
    assert np.abs(_uint8(ref.frames[0][0]) - _uint8(empty.frames[0][0])).max() > 2
    # the same with `sample --prompt --guidance 6` and no negative prompt: the empty prompt's side, encoded up
    # front (the pipeline, its encoders offloaded, cannot encode it: it raised AttributeError)
    assert main(["sample", "--model", str(folder), "--prompt", "a toy robot", "--width", "32", "--height", "32",
                 "--frames", "1", "--seed", "2", "--steps", "2", "--guidance", "6", "--offload", "text-encoders",
                 "--out", str(tmp_path / "plain.png")]) == 0
    assert np.abs(_png(tmp_path / "plain.png") - _uint8(empty.frames[0][0])).max() <= 1


def test_preview_embeddings_cache_follows_the_negative_prompt(spec, tiny_model, demo_cache, tmp_path):
    """The previews' embeddings are cached under samples/ per run; editing a line's --n (same prompts) must
    re-encode, not reuse the old negative prompt's embeddings."""
    from accelerate import Accelerator

    from hv_tune.config import load_config
    from hv_tune.models import LoadOptions
    from hv_tune.training.validation import Validator

    from .conftest import train_overrides

    f = tmp_path / "previews.txt"
    enc = spec.text.load(LoadOptions(str(tiny_model)))
    for negative in ("a blue square", "a green triangle"):
        f.write_text(f"a red ball --w 32 --h 32 --f 1 --n {negative} --l 4\n")
        cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
            "validation.every": 1, "validation.prompts": str(f), "validation.eval_items": 0}))
        embeds = Validator(cfg, spec, Accelerator(cpu=True), LoadOptions(str(tiny_model)), None).embeds[0]
        want = spec.text.encode(enc, [negative], 1)["prompt_embeds"]
        assert torch.allclose(embeds["negative_prompt_embeds"], want), negative
