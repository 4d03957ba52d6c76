"""HunyuanVideo 1.5: tiny model through HunyuanVideo15Pipeline, text encoding == encode_prompt,
training inputs as the pipeline builds them, and the trained LoRA through load_lora_adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hv_tune.models import LoadOptions, get_spec

SPEC = get_spec("hunyuan-video-1.5")


@pytest.fixture(scope="module")
def hv15_model(tmp_path_factory) -> Path:
    """The tiny 1.5 folder, written through the CLI verb users run."""
    out = tmp_path_factory.mktemp("hv15") / "model"
    cmd = [sys.executable, "finetune.py", "tiny-model", str(out), "--model-name", "hunyuan-video-1.5"]
    subprocess.run(cmd, check=True, cwd=Path(__file__).parents[1], capture_output=True)
    return out


@pytest.fixture(scope="module")
def pipe(hv15_model):
    from diffusers import HunyuanVideo15Pipeline

    return HunyuanVideo15Pipeline.from_pretrained(str(hv15_model))


def test_tiny_model_loads_and_runs_in_the_pipeline(pipe):
    from diffusers import ClassifierFreeGuidance, HunyuanVideo15Transformer3DModel
    from transformers import ByT5Tokenizer, Qwen2Tokenizer

    assert isinstance(pipe.transformer, HunyuanVideo15Transformer3DModel)
    assert pipe.transformer.config.in_channels == 65 and pipe.vae.config.latent_channels == 32
    assert pipe.vae_scale_factor_spatial == SPEC.vae_scale_factor_spatial == 16
    assert isinstance(pipe.tokenizer, Qwen2Tokenizer) and isinstance(pipe.tokenizer_2, ByT5Tokenizer)
    assert isinstance(pipe.guider, ClassifierFreeGuidance) and pipe.guider.num_conditions == 2
    video = pipe("a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 5, 3, 32, 32) and torch.isfinite(video).all()


@pytest.mark.parametrize("prompt", ["a cat on grass", 'a sign that says "OPEN" and “café”', ""])
def test_encode_text_equals_encode_prompt(pipe, hv15_model, prompt):
    """Plain, glyph (quoted text, both quote styles) and the empty prompt of the unconditional side."""
    enc = SPEC.text.load(LoadOptions(str(hv15_model)))
    ours = SPEC.text.encode(enc, [prompt], 33)
    with torch.no_grad():  # as __call__ runs it
        ref = pipe.encode_prompt(prompt=prompt or None, device="cpu", dtype=torch.float32)
    for key, want in zip(SPEC.text.fields, ref):
        assert ours[key].shape == want.shape, key
        torch.testing.assert_close(ours[key].to(want.dtype), want, rtol=0, atol=0, msg=key)
    has_glyph = '"' in prompt
    assert bool(ours["prompt_attention_mask_2"].any()) == has_glyph
    assert ours["prompt_attention_mask"].dtype == torch.int64


def test_empty_prompt_is_the_pipelines_unconditional_side(pipe, hv15_model):
    """encode_prompt(None) (the negative side when no negative prompt is given) == our empty caption."""
    enc = SPEC.text.load(LoadOptions(str(hv15_model)))
    ours = SPEC.text.encode(enc, [""], 33)
    with torch.no_grad():
        uncond = pipe.encode_prompt(prompt=None, device="cpu", dtype=torch.float32)
    plain = SPEC.text.encode(enc, ["x"], 33)
    for key, want in zip(SPEC.text.fields, uncond):
        torch.testing.assert_close(ours[key].to(want.dtype), want, rtol=0, atol=0)
    assert not torch.equal(plain["prompt_embeds"], ours["prompt_embeds"])


def test_dropped_text_tokens_are_the_real_qwen_counts(hv15_model):
    """A caption over the 1000-token limit loses exactly its tokens past 1000; one at the limit loses none."""
    enc = SPEC.text.load(LoadOptions(str(hv15_model)))
    words = " ".join(f"w{i}" for i in range(1200))
    tokenizer = enc["text_encoder"].tokenizer
    n = len(tokenizer(words, add_special_tokens=False).input_ids)  # real Qwen2.5 tokens of the caption
    fits = tokenizer.decode(tokenizer(words, add_special_tokens=False).input_ids[:1000])
    assert n > 1000
    assert SPEC.text.dropped_tokens(enc, [words, fits, "a cat"], 33) == [n - 1000, 0, 0]
    kept = SPEC.text.encode(enc, [fits], 33)["prompt_attention_mask"][0]
    assert int(kept.sum()) == 1000  # at the limit the mask is full, and nothing of the caption is cut
