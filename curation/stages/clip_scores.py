"""CLIP image embeddings, computed once per sampled frame and shared by every CLIP-based score.

- ``aesthetic``: the LAION improved aesthetic predictor, an MLP on the **L2-normalised** open_clip
  ViT-L/14 image embedding (without the normalisation scores exceed 10).
- ``zs_<name>``: zero-shot probability of a defect prompt against a clean prompt.
- ``clip_sim_first_last``: cosine of the first and last sampled frame (transitions, static shots).
- ``embedding``: the normalised mean frame embedding (float16, base64), for near-duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from curation.config import ClipConfig
from curation.errors import ConfigError
from curation.manifest import encode_b64

AESTHETIC_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


class AestheticHead(nn.Module):
    """LAION improved-aesthetic-predictor MLP: Linear layers with dropout only, no activations.

    The real file (``sac+logos+ava1-l14-linearMSE.pth``) is 768 -> 1024 -> 128 -> 64 -> 16 -> 1;
    sizes are read from the state dict so a tiny head with the same layout loads the same way.
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        d = dims
        self.layers = nn.Sequential(
            nn.Linear(d[0], d[1]), nn.Dropout(0.2), nn.Linear(d[1], d[2]), nn.Dropout(0.2),
            nn.Linear(d[2], d[3]), nn.Dropout(0.1), nn.Linear(d[3], d[4]), nn.Linear(d[4], d[5]),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Score of already L2-normalised embeddings ``[N, D]`` -> ``[N]``."""
        return self.layers(embedding).squeeze(-1)


def load_aesthetic_head(path: str | Path, embed_dim: int) -> AestheticHead:
    """Load the LAION ``.pth`` state dict with ``torch.load(weights_only=True)``.

    Raises:
        ConfigError: when the file lacks the LAION layout or its input size is not ``embed_dim``.
    """
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"config key 'clip.aesthetic_head': cannot load {path} as a weights-only state dict ({e})") from e
    missing = [f"{k}.weight" for k in AESTHETIC_KEYS if f"{k}.weight" not in sd]
    if missing:
        raise ConfigError(
            f"config key 'clip.aesthetic_head': {path} is not a LAION aesthetic MLP state dict "
            f"(missing {', '.join(missing)}; expected keys layers.0/2/4/6/7.weight and .bias)"
        )
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"{k}.weight"].shape[0] for k in AESTHETIC_KEYS]
    if dims[0] != embed_dim:
        raise ConfigError(
            f"config key 'clip.aesthetic_head': {path} takes {dims[0]}-d embeddings but the CLIP model "
            f"gives {embed_dim}-d; use the head made for this CLIP model (ViT-L-14: 768)"
        )
    head = AestheticHead(dims)
    head.load_state_dict(sd)
    return head.eval()


def resolve_device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


class ClipScores:
    """Stage: records with ``_frames`` -> CLIP-based scores and ``embedding``. Model stage.

    ``images_encoded`` and ``forward_calls`` count model work (resume tests check them).
    """

    name = "clip"
    uses_model = True

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self.model = None
        self.images_encoded = 0
        self.forward_calls = 0

    def setup(self) -> None:
        """Load open_clip, the aesthetic head and the zero-shot text embeddings (once)."""
        import open_clip

        if self.model is not None:
            return
        c = self.cfg
        self.device = resolve_device(c.device)
        pretrained = None if c.model.startswith(("local-dir:", "hf-hub:")) else c.pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(c.model, pretrained=pretrained, device=self.device)
        self.model, self.preprocess = model.eval(), preprocess
        tokenizer = open_clip.get_tokenizer(c.model)
        with torch.no_grad():
            probe = self.model.encode_text(tokenizer(["a photo"]).to(self.device))
            self.embed_dim = probe.shape[-1]
            self.head = load_aesthetic_head(c.aesthetic_head, self.embed_dim).to(self.device) if c.aesthetic_head else None
            self.text = {z.name: self._text_pair(tokenizer, z.positive, z.negative) for z in c.zero_shot}
            self.logit_scale = float(self.model.logit_scale.exp())
        head = Path(c.aesthetic_head).name if c.aesthetic_head else "none"
        src = f"open_clip {c.model}/{pretrained}" if pretrained else f"open_clip {c.model}"
        self.metric_names = {
            "aesthetic": f"laion-aesthetic-mlp {head} on L2-normalised {src}, mean over frames v1",
            "clip_sim_first_last": f"cosine first/last frame, {src} v1",
            **{f"zs_{n}": f"zero-shot p(defect) 2-way softmax, {src} v1" for n in self.text},
        }

    def _text_pair(self, tokenizer: Any, positive: list[str], negative: list[str]) -> torch.Tensor:
        """Prompt-ensembled, normalised text embeddings ``[2, D]``: (defect, clean)."""
        rows = []
        for prompts in (positive, negative):
            emb = self.model.encode_text(tokenizer(prompts).to(self.device)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
            rows.append(torch.nn.functional.normalize(emb, dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def embed(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Unnormalised image embeddings of uint8 frames (each ``[H, W, 3]``, any sizes) -> ``[N, D]`` float32.

        Each frame goes through open_clip's own preprocess on its own (resize, centre crop,
        normalise), so frames of any size and orientation share a batch.
        """
        from PIL import Image

        self.setup()
        out = []
        for i in range(0, len(frames), self.cfg.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[i : i + self.cfg.batch_size]])
            out.append(self.model.encode_image(batch.to(self.device)).float().cpu())
            self.forward_calls += 1
            self.images_encoded += len(batch)
        return torch.cat(out)

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.setup()
        todo = [r for r in records if r["status"] == "pending"]
        if not todo:
            return records
        counts = [len(r["_frames"]) for r in todo]
        emb = self.embed([f for r in todo for f in r["_frames"]])  # a list: clips differ in size
        scored = {}
        for rec, e in zip(todo, torch.split(emb, counts)):
            scored[rec["id"]] = self.scores_of(rec, e)
        return [scored.get(r["id"], r) for r in records]

    @torch.no_grad()
    def scores_of(self, rec: dict[str, Any], emb: torch.Tensor) -> dict[str, Any]:
        """Scores of one clip from its frame embeddings ``[K, D]``."""
        unit = torch.nn.functional.normalize(emb, dim=-1)  # [K, D], the LAION head needs unit vectors
        scores: dict[str, Any] = {"clip_sim_first_last": float(unit[0] @ unit[-1])}
        if self.head is not None:
            scores["aesthetic"] = float(self.head(unit.to(self.device)).mean())
        for name, text in self.text.items():
            logits = self.logit_scale * unit.to(self.device) @ text.T  # [K, 2]
            scores[f"zs_{name}"] = float(logits.softmax(-1)[:, 0].mean())
        mean = torch.nn.functional.normalize(unit.mean(0), dim=0).numpy()
        rec = {k: v for k, v in rec.items() if k != "_frames"}
        metrics = {k: v for k, v in self.metric_names.items() if k in scores}
        return {**rec, "scores": {**rec["scores"], **scores}, "metrics": {**rec["metrics"], **metrics},
                "embedding": encode_b64(mean)}
