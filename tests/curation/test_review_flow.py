"""A person's decisions flow everywhere (issue 21, without a browser): actions appended to
OUT/review.jsonl hold through `curation filter` with new thresholds, a re-run of `curation run`
after adding files, and a training cache built from the manifest."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from curation.decisions import HUMAN_REJECT
from curation.pipeline import apply_reviews, apply_thresholds, run
from curation.review_log import append_action
from curation.samples import moving_shape, write_video
from curation.stages.caption import Captioner, caption_by_rule
from curation.summary import format_summary
from hv_tune.data.manifest import MANIFEST_VERSION, read_manifest

HTML = "<img src=x onerror=alert(1)>"
GONE = "0123456789ab-000000-000024"  # a clip id no run makes (a clip gone after other scene settings)


class LabelCaptioner(Captioner):
    """The real Captioner's plumbing around a fixed 'model' text per clip (no model is loaded)."""

    def setup(self):
        pass

    def generate(self, batch):
        return [f"model words {r['id'][-6:]}" for r in batch]


def rows(out):
    return {r["id"]: r for r in read_manifest(out)}


def clip_files(out):
    return {p.name for p in (out / "clips").iterdir()}


@pytest.fixture(scope="module")
def flow(tmp_path_factory, samples, tiny_config):
    inp, out = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    for name in ("red_circle.mp4", "blue_square.mp4", "static_shot.mp4"):
        shutil.copy(samples / name, inp)
    (inp / "blue_square.txt").write_text("sidecar words\n")  # the user's own caption beside the video
    cfg = tiny_config()
    stages = {"caption": LabelCaptioner(cfg.caption)}
    first = run(cfg, inp, out, stages)
    return cfg, inp, out, stages, first


def test_decisions_and_captions_hold_through_filter_rerun_and_cache(flow, spec, tiny_model, tmp_path):
    cfg, inp, out, stages, first = flow
    by_name = {r["source"].rsplit("/", 1)[1]: r for r in first.records}
    accepted, rejected = by_name["red_circle.mp4"]["id"], by_name["static_shot.mp4"]["id"]
    other = by_name["blue_square.mp4"]["id"]
    assert (by_name["red_circle.mp4"]["status"], by_name["static_shot.mp4"]["status"]) == ("accepted", "rejected")
    assert all(r["decided_by"] == "thresholds" for r in first.records)
    assert (by_name["blue_square.mp4"]["caption"], by_name["blue_square.mp4"]["caption_source"]) == (
        "sks, sidecar words", "user")
    assert by_name["red_circle.mp4"]["caption_source"] == "model"

    append_action(out, accepted, "reject")
    append_action(out, rejected, "accept")
    append_action(out, rejected, "caption", HTML)
    append_action(out, other, "caption", "a person's words")
    append_action(out, GONE, "reject")
    page_html = caption_by_rule(HTML, "sks")[0]
    assert page_html == "sks, " + HTML  # text as written, the trigger rule applied

    def check(out_rows, other_accepted=True):
        a, r, o = out_rows[accepted], out_rows[rejected], out_rows[other]
        assert (a["status"], a["decided_by"], a["reasons"], a["caption"]) == ("rejected", "human", [HUMAN_REJECT], None)
        assert (r["status"], r["decided_by"], r["reasons"]) == ("accepted", "human", [])
        assert (r["caption"], r["caption_source"]) == (page_html, "human")
        if other_accepted:
            assert (o["caption"], o["caption_source"]) == ("sks, a person's words", "human")
            assert (out / "clips" / f"{other}.txt").read_text(encoding="utf-8") == "sks, a person's words\n"
        else:  # rejected by the thresholds: out of clips/ (its caption stays in the log for later)
            assert o["caption"] is None and f"{other}.txt" not in clip_files(out)
        files = clip_files(out)
        assert f"{accepted}.mp4" not in files and f"{accepted}.txt" not in files
        assert (out / "clips" / f"{rejected}.txt").read_text(encoding="utf-8") == page_html + "\n"
        assert f"{rejected}.mp4" in files
        assert all(x["manifest_version"] == MANIFEST_VERSION for x in out_rows.values())
        summary = json.loads((out / "summary.json").read_text())
        assert [o["id"] for o in summary["orphaned_reviews"]] == [GONE]
        assert summary["decided_by_human"] == 2 and summary["captions_by_human"] == 1 + other_accepted
        assert f"  {GONE}: rejected" in format_summary(summary)
        report = (out / "report.html").read_text(encoding="utf-8")  # the static page, no server
        assert report.count("· by a person") == 2
        assert "sks, &lt;img src=x onerror=alert(1)&gt;" in report and HTML not in report  # text, never markup

    applied = apply_reviews(out, stages)
    check(rows(out))
    assert [o["id"] for o in applied.orphaned] == [GONE]

    # new thresholds: every clip the thresholds decide is rejected; the person's decisions hold
    apply_thresholds(out, ["filters.motion_min=1000"], stages)
    now = rows(out)
    check(now, other_accepted=False)
    assert now[other]["status"] == "rejected" and now[other]["decided_by"] == "thresholds"
    apply_thresholds(out, ["filters.motion_min=0.002"], stages)
    assert rows(out)[other]["status"] == "accepted"
    check(rows(out))

    # a re-run after adding a file: the decisions and captions hold, the new clip is decided by thresholds
    write_video(inp / "green.mp4", moving_shape(30, 64, 96, color=1, background=3, texture_seed=9), fps=12)
    again = run(cfg, inp, out, stages)
    check(rows(out))
    (new,) = [r for r in again.records if r["source"].endswith("green.mp4")]
    assert new["decided_by"] == "thresholds"

    # a cache built from the manifest trains exactly the accepted clips, with the person's captions
    from hv_tune.data.cache import read_index
    from hv_tune.data.encode import build_cache
    from tests.conftest import cache_config

    cache = tmp_path / "cache"
    built = build_cache(spec, cache_config(tiny_model, out / "manifest.jsonl", cache, "data.trigger_word=sks"), "cpu")
    want = {r["id"]: r["caption"] for r in again.records if r["status"] == "accepted"}
    assert rejected in want and accepted not in want
    entries = read_index(cache)
    assert built.items == len(want) == len(entries)
    assert sorted(c for e in entries for c in e.captions) == sorted(want.values())


def test_newest_caption_edit_wins_page_or_file(flow):
    cfg, inp, out, stages, first = flow
    (cid,) = [r["id"] for r in first.records if r["source"].endswith("blue_square.mp4")]
    txt = out / "clips" / f"{cid}.txt"
    append_action(out, cid, "caption", "from the page")
    apply_reviews(out, stages)
    assert txt.read_text() == "sks, from the page\n" and rows(out)[cid]["caption_source"] == "human"
    time.sleep(0.01)
    txt.write_text("from the file\n")  # a hand edit after the page's: the file wins
    apply_thresholds(out, [], stages)
    assert (rows(out)[cid]["caption"], rows(out)[cid]["caption_source"]) == ("sks, from the file", "user")
    run(cfg, inp, out, stages)  # and keeps winning on a re-run (the file now holds what we wrote)
    assert rows(out)[cid]["caption"] == "sks, from the file"
    append_action(out, cid, "caption", "from the page again")  # newer than the file's edit
    apply_reviews(out, stages)
    assert (rows(out)[cid]["caption"], rows(out)[cid]["caption_source"]) == ("sks, from the page again", "human")
    assert txt.read_text() == "sks, from the page again\n"
    apply_thresholds(out, ["caption.overwrite=true"], stages)  # replaces .txt captions, never a person's
    assert (rows(out)[cid]["caption"], rows(out)[cid]["caption_source"]) == ("sks, from the page again", "human")
    apply_thresholds(out, ["caption.overwrite=false"], stages)


def test_a_manifest_of_a_newer_version_is_not_overwritten(flow, capsys):
    """An hv_tune error (the manifest module's) stops `curation filter` in one line, exit 2: one error tree."""
    from curation.cli import main

    _, _, out, _, _ = flow
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "manifest_version": 9})
    manifest.write_text("\n".join(lines) + "\n")
    before = manifest.read_bytes()
    assert main(["filter", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {manifest}:2: manifest_version 9 is not one this hv-tune reads")
    assert manifest.read_bytes() == before
