"""Write the README's picture of the review page: ``python scripts/review_screenshot.py OUT PNG``.

Starts ``python -m curation review OUT`` as a user would, takes a few decisions through the JSON
API (so the picture shows a person's decisions and an edited caption), opens the printed address
in headless Chromium (Debian's, through Playwright) and saves a screenshot. ``make
review-screenshot`` curates the generated samples first and writes ``docs/review.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with LOCAL.open(req, timeout=60) as r:
        return json.load(r)


def main(out_dir: Path, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        sys.exit("chromium not found: install Debian's `chromium` (make chromium)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "curation", "review", str(out_dir), "--no-browser"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        base, token = url.split("/?token=")
        clips = call(base, token, "GET", "/api/clips")["clips"]
        accepted = [c["id"] for c in clips if c["status"] == "accepted"]
        rejected = [c["id"] for c in clips if c["status"] == "rejected"]
        if rejected:
            call(base, token, "POST", f"/api/clips/{rejected[0]}/decision", {"action": "accept"})
        if accepted:
            call(base, token, "PUT", f"/api/clips/{accepted[0]}/caption",
                 {"caption": "a blue square glides over a [trigger] mosaic, static camera, flat light"})
        if len(accepted) > 1:
            call(base, token, "POST", f"/api/clips/{accepted[1]}/decision", {"action": "reject"})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.keyboard.press("j")  # the second card selected
            page.wait_for_timeout(1500)  # previews start playing
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png))
            browser.close()
        print(png)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[0])
    main(Path(sys.argv[1]), Path(sys.argv[2]))
