"""Model loading through the users' code paths: open_clip local-dir, LAION .pth head, Qwen2.5-VL."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from curation.config import ClipConfig
from curation.errors import ConfigError
from curation.manifest import decode_b64
from curation.stages.caption import Captioner, build_prompt, caption_by_rule
from curation.stages.clip_scores import ClipScores, load_aesthetic_head
from curation.tiny import aesthetic_state_dict


def _laion_mlp(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The LAION MLP written out by hand: linear layers, no activations (dropout is off in eval)."""
    for k in ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"):
        x = F.linear(x, sd[f"{k}.weight"], sd[f"{k}.bias"])
    return x.squeeze(-1)


def test_aesthetic_head_is_mlp_of_normalised_embedding_real_layout(tmp_path):
    sd = aesthetic_state_dict(768, seed=3)  # the real file's layout: 768 -> 1024 -> 128 -> 64 -> 16 -> 1
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(sd, path)
    head = load_aesthetic_head(path, 768)
    assert [m.out_features for m in head.layers if isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]
    emb = torch.randn(5, 768) * 7  # raw CLIP embeddings are not unit length
    unit = F.normalize(emb, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(head(unit), _laion_mlp(sd, unit), rtol=0, atol=1e-6)
        assert not torch.allclose(head(emb), head(unit))  # normalisation matters


def test_aesthetic_head_rejects_wrong_files(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, bad)
    with pytest.raises(ConfigError, match=r"clip.aesthetic_head.*bad.pth.*layers.0"):
        load_aesthetic_head(bad, 768)
    small = tmp_path / "small.pth"
    torch.save(aesthetic_state_dict(32), small)
    with pytest.raises(ConfigError, match="takes 32-d embeddings but the CLIP model gives 768-d"):
        load_aesthetic_head(small, 768)
    pickled = tmp_path / "pickled.pth"
    torch.save({"layers.0.weight": object()}, pickled)  # not loadable with weights_only=True
    with pytest.raises(ConfigError, match="weights-only"):
        load_aesthetic_head(pickled, 768)


def test_clip_stage_scores_equal_open_clip_and_laion_by_hand(tiny_models, samples):
    cfg = ClipConfig(model=f"local-dir:{tiny_models['clip']}", pretrained=None,
                     aesthetic_head=str(tiny_models["aesthetic"]), device="cpu")
    stage = ClipScores(cfg)
    frames = np.stack([np.asarray(Image.open(samples / "still.png").convert("RGB"))] * 2)
    frames[1] = 255 - frames[1]
    rec = {"id": "x", "status": "pending", "scores": {}, "metrics": {}, "_frames": frames}
    out = stage([rec])[0]
    # the same frames through open_clip's public API, and the LAION MLP by hand
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models['clip']}")
    model.eval()
    with torch.no_grad():
        emb = model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
    unit = F.normalize(emb, dim=-1)
    sd = torch.load(tiny_models["aesthetic"], weights_only=True)
    assert out["scores"]["aesthetic"] == pytest.approx(float(_laion_mlp(sd, unit).mean()), abs=1e-5)
    assert out["scores"]["clip_sim_first_last"] == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    mean = F.normalize(unit.mean(0), dim=0).numpy()
    np.testing.assert_allclose(decode_b64(out["embedding"]), mean, atol=2e-3)  # float16 storage
    assert set(out["scores"]) >= {"zs_watermark", "zs_text_overlay", "zs_blurry", "zs_letterbox"}
    assert all(0 <= out["scores"][f"zs_{n}"] <= 1 for n in ("watermark", "blurry"))
    assert "laion-aesthetic-mlp aesthetic.pth" in out["metrics"]["aesthetic"]
    assert "_frames" not in out and stage.images_encoded == 2 and stage.forward_calls == 1


def test_captioner_batches_prompts_and_trigger(tiny_config):
    cfg = tiny_config("caption.batch_size=2", "caption.trigger_word=zxq").caption
    cap = Captioner(cfg)
    rng = np.random.default_rng(0)
    recs = [{"id": f"c{i}", "kind": "video", "start_time": 0.0, "end_time": 2.0,
             "_caption_frames": rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)} for i in range(3)]
    recs.append({"id": "img", "kind": "image", "start_time": 0.0, "end_time": 0.0,
                 "_caption_frames": rng.integers(0, 255, (1, 56, 56, 3), dtype=np.uint8)})
    out = cap(recs)
    assert cap.clips_captioned == 4
    assert cap.generate_calls == 3  # batch of 2 videos, then a batch with 1 video and 1 image: split by kind
    assert all(r["caption"].startswith("zxq, ") and r["caption_source"] == "model" for r in out)
    assert all("_caption_frames" not in r for r in out)
    for field in ("subject", "motion", "scene", "camera", "lighting", "style"):
        assert all(field in p for p in cap.prompts_seen)
    assert "<|video_pad|>" in cap.prompts_seen[0] and "<|image_pad|>" in cap.prompts_seen[-1]
    again = Captioner(cfg)(recs[:1])  # greedy: the same caption from a fresh load
    assert again[0]["caption"] == out[0]["caption"]


def test_trigger_word_and_prompt_helpers(tiny_config):
    assert caption_by_rule("  a red  circle ", "sks") == ("sks, a red circle", ["prefixed"])
    assert caption_by_rule("sks, a red circle", "sks") == ("sks, a red circle", [])
    assert caption_by_rule("a red circle", "") == ("a red circle", [])
    prompt = build_prompt(tiny_config().caption, {"kind": "video", "start_time": 1.0, "end_time": 3.5})
    assert "2.5 s video clip" in prompt
