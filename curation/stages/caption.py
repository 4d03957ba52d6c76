"""Captions from a transformers vision-language model (Qwen2.5-VL by default) for accepted clips.

User and model captions follow the one caption rule of ``hv_tune.media`` (the cache's too).

The model gets ``caption.num_frames`` evenly spaced frames as a video (an image for 1-frame
clips) and a structured prompt. Generation is greedy, so a re-run gives the same caption.
``trust_remote_code`` stays off: only architectures that transformers ships are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation.config import CaptionConfig
from curation.media import evenly_spaced, read_clip_frames
from curation.stages.clip_scores import resolve_device
from hv_tune.media import apply_caption_rule, find_caption_file, read_caption_file


def build_prompt(cfg: CaptionConfig, rec: dict[str, Any]) -> str:
    """The instruction for one clip: the configured structured prompt plus the clip's facts."""
    kind = "image" if rec["kind"] == "image" else f"{rec['end_time'] - rec['start_time']:.1f} s video clip"
    return f"{cfg.prompt}\nThis is a {kind}. Answer with the caption only."


def edited_caption(rec: dict[str, Any], clips_dir: Path, ours: set[str]) -> tuple[str, str | None] | None:
    """``(text, note)`` of ``clips/ID.txt`` when the user edited it: it holds none of ``ours`` (the
    caption the last run wrote there, the stored model caption); None otherwise.

    Caption files are read by ``hv_tune.media.read_caption_file`` (the cache's reader too): UTF-8
    with or without BOM, UTF-16 by BOM, else cp1252 with a note. Texts are returned as written;
    the caller applies the caption rule (``hv_tune.media.apply_caption_rule``).
    """
    exported = clips_dir / f"{rec['id']}.txt"
    if exported.is_file():
        text, note = read_caption_file(exported)
        if text.strip() and text.strip() not in ours:
            return text, _note(exported, note)
    return None


def source_caption(rec: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(text, note)`` of the source's own caption, ``<source>.txt`` in any case of the extension
    (``clip.TXT`` too, ``hv_tune.media.find_caption_file``); None without one or when it is blank."""
    sidecar = find_caption_file(rec["source"])
    if sidecar is not None:
        text, note = read_caption_file(sidecar)
        return (text, _note(sidecar, note)) if text.strip() else None
    return None


def _note(path: Path, note: str | None) -> str | None:
    return f"{path.name}: {note}" if note else None


def caption_by_rule(text: str, trigger: str) -> tuple[str, list[str]]:
    """One clip's caption by the caption rule (``hv_tune.media.apply_caption_rule``) and its edits:
    lines joined, control characters removed, ``[trigger]`` replaced, the trigger word first, once."""
    captions, edits = apply_caption_rule(text, trigger)
    return (captions[0] if captions else " ".join(trigger.split())), edits


class CaptionFrames:
    """Stage: accepted clip records -> records with ``_caption_frames`` ``[T, H, W, 3]``. CPU stage."""

    name = "caption-frames"
    uses_model = False

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for rec in records:
            n = 1 if rec["kind"] == "image" else self.cfg.num_frames
            idx = evenly_spaced(rec["start_frame"], rec["end_frame"], n)
            try:
                frames = read_clip_frames(rec, idx, self.cfg.short_side)
            except Exception as e:  # keep going: the clip gets no caption, with the reason
                out.append({**rec, "_caption_frames": None, "caption_error": " ".join(str(e).split())[:200]})
                continue
            out.append({**rec, "_caption_frames": frames})
        return out


class Captioner:
    """Stage: records with ``_caption_frames`` -> records with ``caption``. Model stage.

    ``generate_calls`` and ``clips_captioned`` count model work (tests check them).
    """

    name = "caption"
    uses_model = True

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.model = None
        self.generate_calls = 0
        self.clips_captioned = 0
        self.prompts_seen: list[str] = []

    def setup(self) -> None:
        """Load the processor and model with ``from_pretrained`` (remote code off)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if self.model is not None:
            return
        c = self.cfg
        self.device = resolve_device(c.device)
        from hv_tune.dtypes import resolve_dtype  # the project's one dtype table (auto = bf16 on GPU)

        dtype = resolve_dtype(c.dtype, self.device)
        kw = {"revision": c.revision, "trust_remote_code": False}
        self.processor = AutoProcessor.from_pretrained(c.model, **kw)
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right
        self.model = AutoModelForImageTextToText.from_pretrained(c.model, dtype=dtype, **kw).to(self.device).eval()

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.setup()
        todo = [r for r in records if r.get("_caption_frames") is not None]
        done: dict[str, tuple[str, list[str]]] = {}
        for i in range(0, len(todo), self.cfg.batch_size):
            batch = todo[i : i + self.cfg.batch_size]
            for rec, text in zip(batch, self.generate(batch)):
                done[rec["id"]] = caption_by_rule(text, self.cfg.trigger_word)
        out = []
        for rec in records:
            rec = {k: v for k, v in rec.items() if k != "_caption_frames"}
            if rec["id"] in done:
                caption, edits = done[rec["id"]]
                rec.update(caption=caption, caption_source="model", caption_edits=edits)
            out.append(rec)
        return out

    @torch.no_grad()
    def generate(self, batch: list[dict[str, Any]]) -> list[str]:
        """One ``generate`` call for a batch of clips (videos and images may not mix: split)."""
        videos = [r for r in batch if len(r["_caption_frames"]) > 1]
        images = [r for r in batch if len(r["_caption_frames"]) == 1]
        texts: dict[str, str] = {}
        for group, kind in ((videos, "video"), (images, "image")):
            if group:
                texts.update(zip([r["id"] for r in group], self._generate(group, kind)))
        return [texts[r["id"]] for r in batch]

    def _generate(self, group: list[dict[str, Any]], kind: str) -> list[str]:
        prompts = []
        for rec in group:
            content = [{"type": kind}, {"type": "text", "text": build_prompt(self.cfg, rec)}]
            chat = [{"role": "user", "content": content}]
            prompts.append(self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
        self.prompts_seen += prompts
        media = [np.asarray(r["_caption_frames"]) for r in group]
        if kind == "video":
            inputs = self.processor(text=prompts, videos=media, padding=True, return_tensors="pt",
                                    videos_kwargs={"do_sample_frames": False, "cap_pixels_per_frame": True})
        else:
            inputs = self.processor(text=prompts, images=[m[0] for m in media], padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        self.generate_calls += 1
        self.clips_captioned += len(group)
        new = out[:, inputs["input_ids"].shape[1] :]  # [B, prompt + new] -> [B, new]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
