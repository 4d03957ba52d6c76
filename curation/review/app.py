"""The review server: a Starlette app (JSON API + one page) behind ``security.Guard``, run by uvicorn.

API (every request needs the token; see docs/review.md):

- ``GET /api/clips``: the page's data (clips with decisions folded in, thresholds, counts);
  ``GET /api/clips/ID``: one clip; ``GET /api/manifest``: ``manifest.jsonl`` as a JSON list.
- ``POST /api/clips/ID/decision`` ``{"action": "accept"|"reject"|"reset"}``;
  ``POST /api/decisions`` ``{"ids": [...], "action": ...}`` for several clips at once;
  ``PUT /api/clips/ID/caption`` ``{"caption": "..."}``. Each is appended to ``OUT/review.jsonl``
  (fsynced) before the answer is sent.
- ``GET /api/clips/ID/preview``: a short looping preview (HTTP Range for ``<video>``).
- ``POST /api/thresholds`` ``{"values": {"filters.aesthetic_min": 5}}``: what ``curation filter``
  does; ``POST /api/export``: apply the decisions and rewrite clips/ and the manifest.
"""

from __future__ import annotations

import socket
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from curation.errors import ConfigError, CurationError
from curation.review import data
from curation.review.security import Guard, check_bind, new_token
from curation.review_log import STATUS_OF, append_action

MAX_BODY = 64 * 1024  # a caption or a list of ids; nothing bigger is read
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer", "cache-control": "no-store", "x-frame-options": "DENY"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={"cache-control": "no-store"})


class Review:
    """The routes of one served folder (``out_dir``)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.busy = threading.Lock()  # one re-filter or export at a time
        self.stages: dict[str, Any] = {}  # models loaded by an apply (the captioner), kept for the next one

    def asset(self, request: Request) -> Response:
        name, kind = ASSETS[request.url.path]
        body = resources.files("curation.review").joinpath("static", name).read_bytes()
        return Response(body, media_type=kind.split(";")[0], headers={**SECURITY_HEADERS, "content-type": kind})

    def clips(self, request: Request) -> JSONResponse:
        return JSONResponse(data.page_data(self.out_dir))

    def clip(self, request: Request) -> JSONResponse:
        view = self._view(request.path_params["clip"])
        return view if isinstance(view, JSONResponse) else JSONResponse(view)

    def manifest(self, request: Request) -> JSONResponse:
        return JSONResponse(data.read_manifest(self.out_dir))

    def preview(self, request: Request) -> Response:
        path = data.preview_path(self.out_dir, request.path_params["clip"])
        if path is None:
            return error(404, f"no preview for clip {request.path_params['clip']!r}")
        return FileResponse(path, headers={"cache-control": "private, max-age=3600"})

    async def decision(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        return self._decide([request.path_params["clip"]], body.get("action"))

    async def decisions(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return error(400, "`ids` must be a non-empty list of clip ids")
        return self._decide(ids, body.get("action"))

    def _decide(self, ids: list[str], action: Any) -> JSONResponse:
        if action not in STATUS_OF:
            return error(400, f"`action` must be one of {', '.join(STATUS_OF)}")
        rows = data.manifest_rows(self.out_dir, ids)
        missing = [i for i, r in zip(ids, rows) if r is None]
        if missing:
            return error(404, f"no clip {missing[0]!r} in this run")
        broken = [r["id"] for r in rows if r["status"] == "error" and action == "accept"]
        if broken:
            return error(409, f"clip {broken[0]} could not be read ({'; '.join(rows[ids.index(broken[0])]['reasons'])}); "
                              "it cannot be accepted")
        for r in rows:
            append_action(self.out_dir, r["id"], action)
        views = {c["id"]: c for c in data.page_data(self.out_dir)["clips"]}
        return JSONResponse({"clips": [views[r["id"]] for r in rows]})

    async def caption(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        text = body.get("caption")
        if not isinstance(text, str):
            return error(400, "`caption` must be a string")
        row = data.manifest_row(self.out_dir, request.path_params["clip"])
        if row is None:
            return error(404, f"no clip {request.path_params['clip']!r} in this run")
        append_action(self.out_dir, row["id"], "caption", caption=text)
        return self._view(row["id"], wrap=True)

    async def apply_thresholds(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        values = body.get("values")
        if not isinstance(values, dict) or not all(k.startswith("filters.") for k in values):
            return error(400, "`values` must map filters.* keys to numbers or null")
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values.values()):
            return error(400, "threshold values must be numbers or null")
        overrides = [f"{k}={'null' if v is None else repr(float(v))}" for k, v in values.items()]
        from curation import pipeline  # (imports torch: only when a person applies)

        return await self._locked(lambda: pipeline.apply_thresholds(self.out_dir, overrides, self.stages))

    async def export(self, request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        from curation import pipeline

        return await self._locked(lambda: pipeline.apply_reviews(self.out_dir, self.stages))

    async def _locked(self, work) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        if not self.busy.acquire(blocking=False):
            return error(409, "a re-filter or export is already running; wait for it")
        try:
            await run_in_threadpool(work)
        finally:
            self.busy.release()
        return JSONResponse(data.page_data(self.out_dir))

    def _view(self, clip: str, wrap: bool = False) -> JSONResponse | dict[str, Any]:
        found = next((c for c in data.page_data(self.out_dir)["clips"] if c["id"] == clip), None)
        if found is None:
            return error(404, f"no clip {clip!r} in this run")
        return JSONResponse({"clips": [found]}) if wrap else found


async def _json(request: Request) -> dict[str, Any] | JSONResponse:
    """The request's JSON object body (writes must say ``application/json``: a cross-site form cannot)."""
    import json

    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return error(415, "send the body as application/json")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            return error(413, f"request body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        return error(400, f"body is not JSON ({e})")
    return body if isinstance(body, dict) else error(400, "body must be a JSON object")


def build_app(out_dir: Path, token: str, host: str, port: int) -> Guard:
    """The guarded ASGI app serving ``out_dir`` on ``host:port`` with ``token``."""
    r = Review(out_dir)
    routes = [Route(p, r.asset, methods=["GET"]) for p in ASSETS] + [
        Route("/api/clips", r.clips, methods=["GET"]),
        Route("/api/manifest", r.manifest, methods=["GET"]),
        Route("/api/clips/{clip}", r.clip, methods=["GET"]),
        Route("/api/clips/{clip}/preview", r.preview, methods=["GET"]),
        Route("/api/clips/{clip}/decision", r.decision, methods=["POST", "PUT"]),
        Route("/api/clips/{clip}/caption", r.caption, methods=["PUT", "POST"]),
        Route("/api/decisions", r.decisions, methods=["POST"]),
        Route("/api/thresholds", r.apply_thresholds, methods=["POST"]),
        Route("/api/export", r.export, methods=["POST"]),
    ]

    async def curation_error(request: Request, exc: Exception) -> JSONResponse:
        return error(400, str(exc))

    app = Starlette(debug=False, routes=routes, exception_handlers={CurationError: curation_error})
    return Guard(app, token, host, port)


def serve(out_dir: Path, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          allow_remote: bool = False) -> None:
    """Serve ``out_dir`` until Ctrl-C; print the address with its token alone on one line.

    Raises:
        ConfigError: a non-loopback ``host`` without ``allow_remote``, or an address that cannot be bound.
        InputError: ``out_dir`` is not the output of ``python -m curation run``.
    """
    import uvicorn

    warning = check_bind(host, allow_remote)
    data.page_data(out_dir)  # not a curated folder: a clear error before anything listens
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0 = any free one)") from e
    sock.listen(64)  # connections made as soon as the address is printed wait for uvicorn
    port = sock.getsockname()[1]
    token = new_token()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={token}"
    if warning:
        print(warning, file=sys.stderr)
    print(url, flush=True)
    config = uvicorn.Config(build_app(out_dir, token, host, port), log_level="warning", access_log=False,
                            lifespan="off", proxy_headers=False, server_header=False, date_header=False)
    if open_browser:
        import webbrowser

        threading.Timer(0.3, webbrowser.open, [url]).start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops cleanly on Ctrl-C, then re-raises it: that is the way out
        pass
    print("review server stopped; every decision is in " + str(Path(out_dir) / "review.jsonl"), file=sys.stderr)
