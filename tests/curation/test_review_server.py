"""The review server: who may talk to it (token, cookie, Host, Origin, clip ids), and its JSON API."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import urllib.request

import pytest
from starlette.testclient import TestClient

from curation.cli import main
from curation.pipeline import run
from curation.review.app import build_app
from curation.review.security import check_bind, cookie_name
from curation.review_log import REVIEW_FILE, read_reviews
from tests.curation.review_helpers import start_server, stop

PORT = 8765
TOKEN = "t0ken-for-tests"
ADDRESS = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def curated(tmp_path_factory, samples, tiny_config):
    out = tmp_path_factory.mktemp("review-run") / "out"
    run(tiny_config("filters.duplicate_cosine=null"), samples, out)
    return out


@pytest.fixture
def out(curated, tmp_path):
    """A private copy of the curated folder (tests write decisions into it)."""
    dst = tmp_path / "out"
    shutil.copytree(curated, dst)
    (tmp_path / "secret.txt").write_text("SECRET beside the output folder")
    return dst


@pytest.fixture
def client(out):
    """A client that already holds the token cookie."""
    c = TestClient(build_app(out, TOKEN, "127.0.0.1", PORT), base_url=ADDRESS, follow_redirects=False)
    c.cookies.set(cookie_name(PORT), TOKEN)
    return c


def manifest(out):
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def log_lines(out):
    path = out / REVIEW_FILE
    return path.read_text().splitlines() if path.exists() else []


def first(out, status):
    return next(i for i, r in manifest(out).items() if r["status"] == status)


# ---- security ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/app.js", "/api/clips", "/api/manifest"])
def test_no_token_is_refused(out, path):
    c = TestClient(build_app(out, TOKEN, "127.0.0.1", PORT), base_url=ADDRESS)
    r = c.get(path)
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    c.cookies.set(cookie_name(PORT + 1), TOKEN)  # another server's cookie (cookies ignore ports)
    assert c.get(path).status_code == 401
    assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_token_in_url_becomes_an_httponly_strict_cookie(out):
    c = TestClient(build_app(out, TOKEN, "127.0.0.1", PORT), base_url=ADDRESS, follow_redirects=False)
    assert c.get("/?token=wrong").status_code == 401
    r = c.get(f"/?token={TOKEN}&sort=motion")
    assert r.status_code == 303 and r.headers["location"] == "/?sort=motion"  # the token leaves the URL
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"hv_review_{PORT}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = c.get("/")  # the client kept the cookie
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in page.headers


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", f"127.0.0.1:{PORT + 1}",
                                  f"rebound.attacker.test:{PORT}", ""])
def test_foreign_host_is_refused(client, out, host):
    r = client.get("/api/clips", headers={"Host": host})
    assert r.status_code == 403 and "Host" in r.json()["error"]
    r = client.post(f"/api/clips/{first(out, 'accepted')}/decision", json={"action": "reject"}, headers={"Host": host})
    assert r.status_code == 403 and log_lines(out) == []


def test_loopback_names_of_the_served_port_are_answered(client):
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}"):
        assert client.get("/api/clips", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", f"http://127.0.0.1:{PORT + 1}", "null",
                                    f"https://127.0.0.1:{PORT}", f"http://localhost:{PORT}.evil.example"])
def test_foreign_origin_write_is_refused(client, out, origin):
    cid = first(out, "accepted")
    r = client.post(f"/api/clips/{cid}/decision", json={"action": "reject"}, headers={"Origin": origin})
    assert r.status_code == 403 and "Origin" in r.json()["error"]
    r = client.put(f"/api/clips/{cid}/caption", json={"caption": "x"}, headers={"Origin": origin})
    assert r.status_code == 403
    assert log_lines(out) == []
    ok = client.post(f"/api/clips/{cid}/decision", json={"action": "reject"}, headers={"Origin": ADDRESS})
    assert ok.status_code == 200 and len(log_lines(out)) == 1


def test_cross_site_fetch_and_form_posts_are_refused(client, out):
    cid = first(out, "accepted")
    r = client.post(f"/api/clips/{cid}/decision", json={"action": "reject"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.post(f"/api/clips/{cid}/decision", content="action=reject",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert log_lines(out) == []


async def _raw(app, method: str, path: str, raw_path: bytes) -> tuple[int, bytes]:
    """One request with exactly this path (clients normalise ``../`` away before sending)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b'{"action": "reject"}', "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": raw_path, "query_string": b"", "root_path": "",
             "server": ("127.0.0.1", PORT), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", f"127.0.0.1:{PORT}".encode()), (b"content-type", b"application/json"),
                         (b"cookie", f"{cookie_name(PORT)}={TOKEN}".encode())]}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("raw", ["/api/clips/../../secret.txt/preview", "/api/clips/..%2F..%2Fsecret.txt/preview",
                                 "/api/clips/%2e%2e%2f%2e%2e%2fsecret.txt/preview", "/api/clips/..%252Fsecret.txt/preview",
                                 "/api/clips/../manifest.jsonl", "/api/clips/%2E%2E/preview",
                                 "/api/clips/..%5C..%5Csecret.txt/preview", "/api/clips/state%2Fconfig.yaml/preview"])
def test_path_like_clip_ids_are_refused(out, raw):
    from urllib.parse import unquote

    app = build_app(out, TOKEN, "127.0.0.1", PORT)
    for method, suffix in (("GET", ""), ("POST", "")):
        path = raw if method == "GET" else raw.replace("/preview", "/decision")
        status, body = asyncio.run(_raw(app, method, unquote(path) + suffix, path.encode()))
        assert status in (404, 405), (path, status)
        assert b"SECRET" not in body and b"filters" not in body
    assert log_lines(out) == []


def test_preview_is_served_by_clip_id_with_ranges(client, out):
    cid = first(out, "rejected")  # rejected clips get a preview too: a person may rescue one
    r = client.get(f"/api/clips/{cid}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content[4:8] == b"ftyp"
    part = client.get(f"/api/clips/{cid}/preview", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100 and part.content == r.content[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(r.content)}"
    assert client.get("/api/clips/0123456789ab-000000-000001/preview").status_code == 404


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_non_loopback_host_needs_allow_remote(out, host, capsys):
    assert main(["review", str(out), "--host", host, "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host") and "--allow-remote" in err and "Traceback" not in err
    assert "is the only protection" in check_bind(host, allow_remote=True)
    for local in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert check_bind(local, allow_remote=False) is None


# ---- the API ----------------------------------------------------------------------------------

def test_decisions_are_logged_and_shown(client, out):
    acc, rej = first(out, "accepted"), first(out, "rejected")
    r = client.post(f"/api/clips/{acc}/decision", json={"action": "reject"})
    assert r.status_code == 200
    view = r.json()["clips"][0]
    assert (view["status"], view["decided_by"], view["threshold_status"]) == ("rejected", "human", "accepted")
    client.post(f"/api/clips/{rej}/decision", json={"action": "accept"})
    clips = {c["id"]: c for c in client.get("/api/clips").json()["clips"]}
    assert clips[rej]["status"] == "accepted" and clips[rej]["decided_by"] == "human"
    lines = [json.loads(x) for x in log_lines(out)]
    assert [(x["id"], x["action"]) for x in lines] == [(acc, "reject"), (rej, "accept")]
    assert all(x["time"].endswith("+00:00") for x in lines)
    back = client.post(f"/api/clips/{acc}/decision", json={"action": "reset"}).json()["clips"][0]
    assert (back["status"], back["decided_by"]) == ("accepted", "thresholds")
    assert client.post(f"/api/clips/{acc}/decision", json={"action": "delete"}).status_code == 400


def test_several_clips_at_once(client, out):
    ids = [i for i, r in manifest(out).items() if r["status"] == "accepted"][:2]
    r = client.post("/api/decisions", json={"ids": ids, "action": "reject"})
    assert r.status_code == 200 and [c["status"] for c in r.json()["clips"]] == ["rejected", "rejected"]
    assert set(read_reviews(out)) == set(ids)
    bad = client.post("/api/decisions", json={"ids": [ids[0], "../x"], "action": "accept"})
    assert bad.status_code == 404 and len(log_lines(out)) == 2  # all or nothing


def test_caption_is_text_and_training_caption_follows_the_rule(client, out):
    cid = first(out, "accepted")
    html = '<img src=x onerror=alert(1)> a  red\ncircle'
    view = client.put(f"/api/clips/{cid}/caption", json={"caption": html}).json()["clips"][0]
    assert view["caption"] == html and view["caption_source"] == "human"
    assert view["training_caption"] == "sks, <img src=x onerror=alert(1)> a red circle"  # trigger once, joined
    again = client.put(f"/api/clips/{cid}/caption", json={"caption": "sks, [trigger] style"}).json()["clips"][0]
    assert again["training_caption"] == "sks, sks style"
    assert read_reviews(out)[cid].caption == "sks, [trigger] style"
    assert client.put(f"/api/clips/{cid}/caption", json={"caption": 3}).status_code == 400


def test_manifest_and_one_clip(client, out):
    rows = client.get("/api/manifest").json()
    assert [r["id"] for r in rows] == list(manifest(out))
    cid = rows[0]["id"]
    assert client.get(f"/api/clips/{cid}").json()["id"] == cid
    assert client.get("/api/clips/nope").status_code == 404


def test_apply_thresholds_keeps_human_decisions(client, out):
    static = next(i for i, r in manifest(out).items() if any(x.startswith("static") for x in r["reasons"]))
    moving = first(out, "accepted")
    client.post(f"/api/clips/{moving}/decision", json={"action": "reject"})
    r = client.post("/api/thresholds", json={"values": {"filters.motion_min": 0}})
    assert r.status_code == 200
    clips = {c["id"]: c for c in r.json()["clips"]}
    assert clips[static]["status"] == "accepted" and clips[static]["decided_by"] == "thresholds"
    assert manifest(out)[static]["status"] == "accepted"  # the same outputs `curation filter` writes
    assert "motion_min: 0.0" in (out / "state" / "config.yaml").read_text()
    assert clips[moving]["status"] == "rejected" and clips[moving]["decided_by"] == "human"
    bad = client.post("/api/thresholds", json={"values": {"filters.motion_mni": 0.1}})
    assert bad.status_code == 400 and "motion_mni" in bad.json()["error"]
    assert client.post("/api/thresholds", json={"values": {"scenes.min_clip_s": 1}}).status_code == 400


def test_orphan_decisions_are_listed(client, out):
    from curation.review_log import append_action

    append_action(out, "ffffffffffff-000000-000010", "reject")
    orphans = client.get("/api/clips").json()["orphans"]
    assert orphans == [{"id": "ffffffffffff-000000-000010", "status": "rejected", "caption": None}]


# ---- the process --------------------------------------------------------------------------------

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


def _post(url: str, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with LOCAL.open(req, timeout=30) as r:
        return json.load(r)


def _get(url: str, token: str, path: str) -> dict:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with LOCAL.open(req, timeout=30) as r:
        return json.load(r)


def test_sigkill_after_an_action_loses_nothing_and_ctrl_c_exits_0(out):
    cid = first(out, "accepted")
    proc, url = start_server(out)
    try:
        base, token = url.split("/?token=")
        assert _post(base, token, f"/api/clips/{cid}/decision", {"action": "reject"})["clips"][0]["status"] == "rejected"
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        proc, url = start_server(out)
        base2, token2 = url.split("/?token=")
        assert token2 != token  # a new token every start
        clips = {c["id"]: c for c in _get(base2, token2, "/api/clips")["clips"]}
        assert (clips[cid]["status"], clips[cid]["decided_by"]) == ("rejected", "human")
    finally:
        assert stop(proc, signal.SIGINT) == 0


def test_an_unreadable_clip_can_be_rejected_not_accepted(client, out):
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rows[0].update(status="error", reasons=["unreadable while cutting: moov atom not found"])
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cid = rows[0]["id"]
    r = client.post(f"/api/clips/{cid}/decision", json={"action": "accept"})
    assert r.status_code == 409 and "moov atom not found" in r.json()["error"]
    assert client.get(f"/api/clips/{cid}/preview").status_code == 404
    assert log_lines(out) == []
    view = client.get(f"/api/clips/{cid}").json()
    assert (view["status"], view["preview"]) == ("error", False)


def test_two_tabs_at_once_lose_nothing(out):
    from concurrent.futures import ThreadPoolExecutor

    tabs = []
    for _ in range(2):
        c = TestClient(build_app(out, TOKEN, "127.0.0.1", PORT), base_url=ADDRESS)
        c.cookies.set(cookie_name(PORT), TOKEN)
        tabs.append(c)
    cid = first(out, "accepted")

    def write(n):
        tab = tabs[n % 2]
        return tab.put(f"/api/clips/{cid}/caption", json={"caption": f"tab {n % 2} edit {n}"}).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(write, range(16))) == {200}
    lines = [json.loads(x) for x in log_lines(out)]
    assert sorted(x["caption"] for x in lines) == sorted(f"tab {n % 2} edit {n}" for n in range(16))
    assert read_reviews(out)[cid].caption == lines[-1]["caption"]  # for one clip the last write wins
    assert tabs[0].get(f"/api/clips/{cid}").json()["caption"] == lines[-1]["caption"]  # the other tab sees it


def test_export_rewrites_the_outputs(client, out):
    cid = first(out, "accepted")
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    stale = [{**r, "status": "rejected"} if r["id"] == cid else r for r in rows]  # an out-of-date manifest
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    (out / "clips" / f"{cid}.mp4").unlink()
    r = client.post("/api/export", json={})
    assert r.status_code == 200
    assert manifest(out)[cid]["status"] == "accepted" and (out / "clips" / f"{cid}.mp4").is_file()
    assert {c["id"]: c["status"] for c in r.json()["clips"]}[cid] == "accepted"
    assert client.post("/api/export", content="{}").status_code == 415  # not JSON-typed: refused


def test_wildcard_bind_answers_ip_literals_only():
    from curation.review.security import allowed_hosts, host_ok

    allowed = allowed_hosts("0.0.0.0", PORT)
    assert allowed is None
    assert host_ok(f"192.168.1.20:{PORT}", allowed) and host_ok(f"[fe80::1]:{PORT}", allowed)
    assert not host_ok(f"rebound.attacker.test:{PORT}", allowed) and not host_ok(f"localhost:{PORT}", allowed)
    assert allowed_hosts("192.168.1.20", PORT) == {f"192.168.1.20:{PORT}"}
