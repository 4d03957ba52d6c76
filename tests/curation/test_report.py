"""report.html in headless Chromium: it renders, the cards are there, sorting and filtering work."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from curation.pipeline import run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Cards(HTMLParser):
    """Cards of a dumped DOM in document order: (column, id, status, hidden)."""

    def __init__(self):
        super().__init__()
        self.column, self.cards, self.ready = None, [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.ready = a.get("data-ready") == "1"
        if tag == "section":
            self.column = a.get("id")
        if tag == "div" and "card" in (a.get("class") or "").split():
            hidden = "display: none" in (a.get("style") or "")
            self.cards.append((self.column, a["data-id"], a["data-status"], hidden))


@pytest.fixture(scope="module")
def report(tmp_path_factory, samples, tiny_config):
    cfg = tiny_config("caption.enabled=false", "filters.duplicate_cosine=null")
    result = run(cfg, samples, tmp_path_factory.mktemp("report-out"))
    return result


def dump(report_path, query: str, tmp_path) -> Cards:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not found: install Debian's `chromium` (make test does) to check the report")
    profile = tmp_path / f"profile{abs(hash(query))}"
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", f"{report_path.as_uri()}{query}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    parser = Cards()
    parser.feed(out)
    assert parser.ready, "the page script did not run"
    return parser


def test_report_renders_all_cards_side_by_side(report, tmp_path):
    cards = dump(report.out_dir / "report.html", "", tmp_path).cards
    assert sorted(c[1] for c in cards) == sorted(r["id"] for r in report.records)
    assert {c[1] for c in cards if c[0] == "accepted"} == {r["id"] for r in report.records if r["status"] == "accepted"}
    assert {c[2] for c in cards if c[0] == "rejected"} == {"rejected"}
    assert not any(c[3] for c in cards)
    html = (report.out_dir / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(report.records)  # self-contained thumbnails
    assert "static: motion" in html


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_report_sorts_by_score(report, tmp_path, direction):
    cards = dump(report.out_dir / "report.html", f"?sort=motion&dir={direction}", tmp_path).cards
    motion = {r["id"]: r["scores"]["motion"] for r in report.records}
    shown = [c[1] for c in cards if c[0] == "accepted"]
    with_value = [i for i in shown if motion[i] is not None]
    expected = sorted(with_value, key=lambda i: motion[i], reverse=direction == "desc")
    assert with_value == expected and len(expected) >= 3
    assert all(motion[i] is None for i in shown[len(with_value):])  # clips without the score go last


def test_report_filters_by_status_and_min_score(report, tmp_path):
    cards = dump(report.out_dir / "report.html", "?st_rejected=0", tmp_path).cards
    assert all(c[3] == (c[2] == "rejected") for c in cards)
    motion = {r["id"]: r["scores"]["motion"] for r in report.records}
    values = sorted(v for v in motion.values() if v)
    cut = values[len(values) // 2]
    cards = dump(report.out_dir / "report.html", f"?fkey=motion&fmin={cut}", tmp_path).cards
    assert {c[1] for c in cards if not c[3]} == {i for i, v in motion.items() if v is not None and v >= cut}
