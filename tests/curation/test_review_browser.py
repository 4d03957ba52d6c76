"""The review page in a real headless Chromium (Debian's, driven by Playwright): keyboard decisions,
a caption holding HTML shown as text, everything still there after a reload and after SIGKILL."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from curation.pipeline import apply_thresholds, run
from curation.review_log import read_reviews
from hv_tune.data.cache import read_index
from hv_tune.data.encode import build_cache
from hv_tune.data.manifest import read_manifest
from tests.conftest import cache_config
from tests.curation.review_helpers import start_server, stop

HTML_CAPTION = '<img src=x onerror=alert(1)> a <b>red</b> circle'


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not found: install Debian's `chromium` (make test does) to check the review page")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def out(tmp_path, samples, tiny_config):
    out = tmp_path / "out"
    run(tiny_config("filters.duplicate_cosine=null"), samples, out)
    return out


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.alerts = []
    page.on("dialog", lambda d: (page.alerts.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    assert page.url.endswith("/") and "token" not in page.url  # the token left the address bar
    return page


def cards(page):
    """(id, status, decided_by, current) of the shown cards, in page order."""
    return page.eval_on_selector_all(
        "#cards .card:not([hidden])",
        "els => els.map(e => [e.dataset.id, e.dataset.status, e.dataset.by, e.classList.contains('current')])")


def go_to(page, clip_id):
    """Move the selection to ``clip_id`` with j/k only."""
    order = [c[0] for c in cards(page)]
    here = next(i for i, c in enumerate(cards(page)) if c[3])
    target = order.index(clip_id)
    for _ in range(abs(target - here)):
        page.keyboard.press("j" if target > here else "k")
    assert next(c for c in cards(page) if c[3])[0] == clip_id


def settle(page):
    page.wait_for_selector("body[data-busy='0']", state="attached")


def card_state(page, clip_id):
    el = page.locator(f"#cards .card[data-id='{clip_id}']")
    return el.get_attribute("data-status"), el.get_attribute("data-by")


def test_keyboard_review_persists_through_reload_and_sigkill(chromium, out, samples, tiny_config, spec, tiny_model,
                                                            tmp_path):
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    accepted = next(r["id"] for r in rows if r["status"] == "accepted")
    rejected = next(r["id"] for r in rows if r["status"] == "rejected" and r["reasons"])
    third = next(r["id"] for r in rows if r["status"] == "accepted" and r["id"] != accepted)
    proc, url = start_server(out)
    try:
        page = open_page(chromium, url)
        shown = cards(page)
        assert len(shown) == len(rows) and shown[0][3]  # every clip, the first card selected
        assert all(c[2] == "thresholds" for c in shown)
        assert page.locator(f"#cards .card[data-id='{rejected}'] video").count() == 1  # rejected clips play too

        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        assert not page.locator("#help").is_visible()

        go_to(page, accepted)
        page.keyboard.press("r")
        settle(page)
        assert card_state(page, accepted) == ("rejected", "human")
        go_to(page, rejected)
        page.keyboard.press("a")
        settle(page)
        assert card_state(page, rejected) == ("accepted", "human")

        go_to(page, accepted)
        page.keyboard.press("e")
        page.keyboard.press("Control+a")
        page.keyboard.type("draft that Esc throws away")
        page.keyboard.press("Escape")
        page.keyboard.press("e")
        page.locator(f"#cards .card[data-id='{accepted}'] textarea").fill(HTML_CAPTION)
        page.keyboard.press("Enter")
        settle(page)
        caption = page.locator(f"#cards .card[data-id='{accepted}'] .caption .text")
        assert caption.text_content() == HTML_CAPTION
        assert page.locator(f"#cards .card[data-id='{accepted}'] .training .text").text_content() == f"sks, {HTML_CAPTION}"
        assert page.locator("#cards img[src='x'], #cards b").count() == 0 and page.alerts == []

        page.locator("#by_thresholds").uncheck()  # filter: only what a person decided
        assert sorted(c[0] for c in cards(page)) == sorted([accepted, rejected])
        assert page.locator("#nb_human").text_content() == "2"
        assert page.locator("#counts").text_content().startswith(f"2 of {len(rows)} clips shown")

        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert card_state(page, accepted) == ("rejected", "human")
        assert card_state(page, rejected) == ("accepted", "human")
        assert page.locator(f"#cards .card[data-id='{accepted}'] .caption .text").text_content() == HTML_CAPTION

        go_to(page, accepted)
        page.keyboard.press("u")  # back to the thresholds' decision, then decided again
        settle(page)
        assert card_state(page, accepted) == ("accepted", "thresholds")
        page.keyboard.press("r")
        settle(page)
        go_to(page, third)
        page.keyboard.press("r")
        settle(page)
        assert card_state(page, third) == ("rejected", "human")
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL  # right after the page showed the action
        page.close()

        proc, url = start_server(out)
        page = open_page(chromium, url)
        assert cards(page)[0][3]
        assert card_state(page, accepted) == ("rejected", "human")
        assert card_state(page, rejected) == ("accepted", "human")
        assert card_state(page, third) == ("rejected", "human")
        assert page.locator(f"#cards .card[data-id='{accepted}'] .caption .text").text_content() == HTML_CAPTION
        assert read_reviews(out)[accepted].caption == HTML_CAPTION
        assert page.alerts == []
    finally:
        assert stop(proc) == 0
    # then `curation filter` with new thresholds and `curation run` again: the person's decisions hold in the
    # manifest, in clips/ and in a training cache built from the manifest
    apply_thresholds(out, ["filters.motion_min=0.0001"])
    run(tiny_config("filters.duplicate_cosine=null"), samples, out)
    final = {r["id"]: r for r in read_manifest(out)}
    for clip, status in ((accepted, "rejected"), (rejected, "accepted"), (third, "rejected")):
        assert (final[clip]["status"], final[clip]["decided_by"]) == (status, "human"), clip
    clips = {p.stem for p in (out / "clips").glob("*.mp4")}
    assert rejected in clips and not {accepted, third} & clips
    cache = tmp_path / "cache"
    build_cache(spec, cache_config(tiny_model, out / "manifest.jsonl", cache), "cpu")
    # one item per accepted clip (cache ids name the source video, not the clip; the flow tests check captions)
    assert len(read_index(cache)) == sum(r["status"] == "accepted" for r in final.values())


def test_several_cards_at_once(chromium, out):
    proc, url = start_server(out)
    try:
        page = open_page(chromium, url)
        ids = [c[0] for c in cards(page)][:3]
        page.keyboard.press("x")
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("x")
        assert page.locator("#sel-reject").text_content() == "reject selected (2)"
        page.keyboard.press("r")
        settle(page)
        assert [card_state(page, i) for i in (ids[0], ids[2])] == [("rejected", "human")] * 2
        assert card_state(page, ids[1])[1] == "thresholds"  # the card in between was not selected
        assert page.locator("#sel-reject").is_disabled()
    finally:
        assert stop(proc) == 0


def test_threshold_histogram_preview_and_apply(chromium, out):
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    static = next(r["id"] for r in rows if any(x.startswith("static") for x in r["reasons"]))
    kept = next(r["id"] for r in rows if r["status"] == "accepted")
    accepted = sum(r["status"] == "accepted" for r in rows)
    proc, url = start_server(out)
    try:
        page = open_page(chromium, url)
        go_to(page, kept)
        page.keyboard.press("r")  # a person's decision, which "apply" must keep
        settle(page)
        assert page.locator("#apply").is_disabled()
        slider = page.locator(".hist[data-key='filters.motion_min'] input[type=range]")
        assert page.locator(".hist[data-key='filters.motion_min'] line").count() == 1  # the threshold drawn
        slider.focus()
        page.keyboard.press("Home")  # the lowest motion: nothing is static any more
        assert page.locator("#apply").text_content() == f"apply thresholds: {accepted + 1} would be accepted"
        page.locator("#apply").click()
        page.wait_for_selector("#apply[disabled]")
        settle(page)
        assert card_state(page, static) == ("accepted", "thresholds")
        assert card_state(page, kept) == ("rejected", "human")
        assert next(json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()
                    if json.loads(x)["id"] == static)["status"] == "accepted"
    finally:
        assert stop(proc) == 0
