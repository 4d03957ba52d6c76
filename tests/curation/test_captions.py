"""The one caption rule in curation: user captions (any case of .txt), model captions, the summary."""

from __future__ import annotations

import json
import shutil

import numpy as np

from curation.pipeline import run
from curation.stages.caption import Captioner
from curation.summary import format_summary


class FixedTextCaptioner(Captioner):
    """The real Captioner's post-processing around fixed model outputs (what a modern captioner writes)."""

    def __init__(self, cfg, texts):
        super().__init__(cfg)
        self.texts = texts

    def setup(self):
        pass

    def generate(self, batch):
        return [self.texts[r["id"]] for r in batch]


def test_model_captions_follow_the_rule(tiny_config):
    cfg = tiny_config("caption.trigger_word=sks").caption
    texts = {"a": "A rider climbs a hill.\n\nThe camera follows\x00 her.\x1b",
             "b": "sks, a bike race in sks style", "c": "[trigger] rides a bike"}
    frames = np.zeros((4, 56, 56, 3), np.uint8)
    recs = [{"id": k, "kind": "video", "_caption_frames": frames} for k in texts]
    out = {r["id"]: (r["caption"], r["caption_edits"]) for r in FixedTextCaptioner(cfg, texts)(recs)}
    assert out == {"a": ("sks, A rider climbs a hill. The camera follows her.", ["cleaned", "joined", "prefixed"]),
                   "b": ("sks, a bike race in sks style", []),
                   "c": ("sks rides a bike", ["placeholder"])}


def test_user_captions_any_case_follow_the_rule_and_are_counted(tmp_path, samples, tiny_config):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("red_circle.mp4", "blue_square.mp4", "still.png"):
        shutil.copy(samples / name, inp)
    (inp / "red_circle.TXT").write_text("a red circle crosses the frame\n")  # upper-case extension
    (inp / "blue_square.txt").write_text("sks, a bike race in sks style\n")  # already starts with the trigger
    (inp / "still.txt").write_bytes(b"[trigger] in a still\r\n\r\nsecond paragraph\x07\n")
    out = tmp_path / "out"
    result = run(tiny_config("caption.trigger_word=sks"), inp, out)
    got = {r["source"].rsplit("/", 1)[1]: (r["caption"], r["caption_source"])
           for r in result.records if r["status"] == "accepted"}
    assert got == {"red_circle.mp4": ("sks, a red circle crosses the frame", "user"),
                   "blue_square.mp4": ("sks, a bike race in sks style", "user"),
                   "still.png": ("sks in a still second paragraph", "user")}
    assert result.captions_generated == 0  # the user's own captions are read, never replaced by the model's
    for r in result.records:
        assert (out / "clips" / f"{r['id']}.txt").read_text(encoding="utf-8") == r["caption"] + "\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["captions"] == 3
    assert summary["captions_edited"] == {"prefixed": 1, "placeholder": 1, "joined": 1, "cleaned": 1}
    assert summary["skipped_files"] == []
    table = format_summary(summary)
    assert "prefixed with the trigger word" in table and "joined from several lines" in table
    counts = [ln for ln in table.splitlines()[1:-1] if ln.split()[-1].isdigit()]
    assert "  with control characters removed" in table and len({len(ln) for ln in counts}) == 1  # one column
    again = run(tiny_config("caption.trigger_word=sks"), inp, out)  # clips/*.txt read back: nothing doubles
    assert {r["id"]: r["caption"] for r in again.records} == {r["id"]: r["caption"] for r in result.records}


def test_changed_trigger_source_caption_and_edits_are_applied_once(tmp_path, samples, tiny_config):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(samples / "red_circle.mp4", inp)
    (inp / "red_circle.txt").write_text("my words\n")

    def caption(trigger: str) -> str:
        (rec,) = [r for r in run(tiny_config(f"caption.trigger_word={trigger}", "caption.enabled=false"), inp,
                                 out).records if r["status"] == "accepted"]
        assert (out / "clips" / f"{rec['id']}.txt").read_text() == rec["caption"] + "\n"
        return rec["id"], rec["caption"]

    assert caption("sks")[1] == "sks, my words"
    assert caption("ohwx")[1] == "ohwx, my words"  # clips/ID.txt holds what we wrote: not an edit, no 'ohwx, sks'
    (inp / "red_circle.txt").write_text("new words\n")
    cid, text = caption("ohwx")
    assert text == "ohwx, new words"  # the source's changed caption is used, not our earlier copy
    (out / "clips" / f"{cid}.txt").write_text("a hand edit\n")
    assert caption("ohwx")[1] == "ohwx, a hand edit"
    assert caption("sks")[1] == "sks, a hand edit"  # the edit is kept across runs, the trigger applied once
    assert caption("sks")[1] == "sks, a hand edit"
