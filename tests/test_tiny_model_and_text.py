"""The tiny model is a real diffusers HunyuanVideo; our text embeddings equal the pipeline's."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from diffusers import HunyuanVideoPipeline
from transformers import AutoTokenizer

from hv_tune.models import LoadOptions
from hv_tune.models.hunyuan_video.text import IMAGE_TEMPLATE, VIDEO_TEMPLATE

from .conftest import REPO

PROMPTS = ["a red circle moves left to right on a dark background", "sks style vidéo d'un chat, 慢镜头 🐈"]


def test_tiny_model_cli_writes_a_loadable_diffusers_folder(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, str(REPO / "finetune.py"), "tiny-model", str(out)], check=True, capture_output=True)
    index = json.loads((out / "model_index.json").read_text())
    for part in ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]:
        assert part in index and (out / part).is_dir()
    pipe = HunyuanVideoPipeline.from_pretrained(out)
    cfg = pipe.transformer.config
    assert cfg.num_layers >= 1 and cfg.num_single_layers >= 1 and cfg.num_refiner_layers >= 1 and cfg.guidance_embeds
    assert (pipe.vae.temporal_compression_ratio, pipe.vae.spatial_compression_ratio) == (4, 8)
    video = pipe(prompt=PROMPTS[0], height=32, width=32, num_frames=5, num_inference_steps=2,
                 output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 5, 32, 32, 3)


def reference_pipeline(model) -> HunyuanVideoPipeline:
    """The pipeline from the folder as the hub lays it out, its Llama tokenizer loaded as Tencent's
    code loads it (AutoTokenizer); the class model_index.json names mis-tokenizes under
    transformers 5 (tests/test_tokenizers.py, docs/decisions.md)."""
    tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    return HunyuanVideoPipeline.from_pretrained(model, tokenizer=tokenizer)


def test_tokenizer_template_prefix_lengths_match_llama3(tiny_model):
    pipe = reference_pipeline(tiny_model)
    for tpl in (VIDEO_TEMPLATE, IMAGE_TEMPLATE):
        prefix = tpl["template"].split("{}")[0]
        assert len(pipe.tokenizer(prefix).input_ids) == tpl["crop_start"]


def test_text_embeddings_equal_pipeline_encode_prompt(spec, tiny_model):
    pipe = reference_pipeline(tiny_model)
    enc = spec.text.load(LoadOptions(str(tiny_model)))
    for frames, template in [(33, VIDEO_TEMPLATE), (1, IMAGE_TEMPLATE)]:
        ours = spec.text.encode(enc, PROMPTS, frames)
        ref_embeds, ref_pooled, ref_mask = pipe.encode_prompt(PROMPTS, prompt_template=template, device="cpu")
        assert torch.equal(ours["prompt_embeds"], ref_embeds)
        assert torch.equal(ours["pooled_prompt_embeds"], ref_pooled)
        assert torch.equal(ours["prompt_attention_mask"], ref_mask)
        assert ours["prompt_embeds"].shape[1] == 256
        # the prompt survives the crop: its tokens are the first unmasked positions
        assert ours["prompt_attention_mask"][:, 0].all() and (ours["prompt_attention_mask"].sum(1) > 3).all()
    video = spec.text.encode(enc, PROMPTS[:1], 33)["prompt_embeds"]
    image = spec.text.encode(enc, PROMPTS[:1], 1)["prompt_embeds"]
    assert not torch.equal(video, image)  # 1-frame items use the image template


def test_cached_latents_are_the_vae_posterior(spec, tiny_model, demo_cache, demo_folder):
    import av
    import numpy as np
    from safetensors.torch import load_file

    from hv_tune.data.cache import read_index
    from hv_tune.data.decode import probe_video, read_video, to_pixels

    vae = spec.load_vae(LoadOptions(str(tiny_model)))
    entry = next(e for e in read_index(demo_cache) if e.id.startswith("clip002"))
    cached = load_file(str(demo_cache / entry.files["latents"]))
    path = demo_folder / "clip002.mp4"
    ours = read_video(path, [0, 1, 2, 3, 4], probe_video(path), (32, 32))  # head window, 24 fps source
    with av.open(str(path)) as c:  # an independent decoder agrees on the frames
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:5])
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 3
    dist = vae.encode(to_pixels(ours).unsqueeze(0)).latent_dist
    assert torch.equal(cached["latent_mean"], dist.mean[0])
    assert torch.equal(cached["latent_logvar"], dist.logvar[0])
    assert cached["latent_mean"].shape == (4, 2, 4, 4)  # 5 frames -> 2 latent frames, 32 px -> 4


def test_cached_text_is_encode_prompt_with_the_item_template(spec, tiny_model, demo_cache):
    from safetensors.torch import load_file

    from hv_tune.data.cache import read_index

    pipe = reference_pipeline(tiny_model)
    for entry in read_index(demo_cache):
        template = IMAGE_TEMPLATE if entry.frames == 1 else VIDEO_TEMPLATE
        cached = load_file(str(demo_cache / entry.caption_files["text"][0]))
        embeds, pooled, mask = pipe.encode_prompt(entry.captions[0], prompt_template=template, device="cpu")
        assert torch.equal(cached["prompt_embeds"], embeds[0]), entry.id
        assert torch.equal(cached["pooled_prompt_embeds"], pooled[0])
        assert torch.equal(cached["prompt_attention_mask"], mask[0])
