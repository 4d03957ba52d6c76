"""Who may talk to the review server: the token, its cookie, and Host/Origin checks.

Every request passes ``Guard`` (a plain ASGI middleware) before any route runs:

- Host must be the served address (``127.0.0.1:PORT``, ``localhost:PORT``): a page on another
  site whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name and is refused.
- Origin, when sent, must be the served address; a write (anything but GET/HEAD) from a browser
  always sends it, so a cross-site form or fetch is refused before it is read.
- The token: ``?token=...`` in the printed URL (answered with an HttpOnly, SameSite=Strict cookie
  and a redirect to the same path without the token), then the cookie; scripts may send
  ``Authorization: Bearer TOKEN``. Cookies are not scoped by port, so the cookie's name carries it.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from curation.errors import ConfigError

SAFE_METHODS = ("GET", "HEAD")
LOOPBACK_NAMES = ("localhost",)


def new_token() -> str:
    """A random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def cookie_name(port: int) -> str:
    """The cookie that carries the token for the server on ``port``."""
    return f"hv_review_{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``; the warning to print when allowed.

    Raises:
        ConfigError: ``host`` is not a loopback address and ``allow_remote`` is False.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(f"--host {host} is not a loopback address: anyone on that network could reach the "
                          "page; keep the default 127.0.0.1, or add --allow-remote if you mean it")
    return (f"warning: serving on {host}: the token in the printed URL is the only protection; "
            "share it with no one and stop the server (Ctrl-C) when done")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host header values this server answers (None: any IP literal, for a wildcard bind)."""
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        return None
    names = {_bracket(host)}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1"}
    return {f"{n}:{port}" for n in names}


def host_ok(value: str, allowed: set[str] | None) -> bool:
    """Whether a Host header (``name:port``) is one this server answers.

    A wildcard bind (``allowed`` None) answers IP literals only: DNS rebinding needs a name.
    """
    value = value.lower()
    if allowed is not None:
        return value in allowed
    name = value.rsplit(":", 1)[0] if not value.endswith("]") else value
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


Send = Callable[[dict[str, Any]], Awaitable[None]]


class Guard:
    """ASGI middleware: Host, Origin and token checks before the app sees a request."""

    def __init__(self, app: Any, token: str, host: str, port: int):
        self.app, self.token, self.port = app, token, port
        self.allowed = allowed_hosts(host, port)
        self.cookie = cookie_name(port)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":  # lifespan only (no websockets are served)
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not host_ok(host, self.allowed):
            return await _refuse(send, 403, f"Host {host!r} is not this server's address")
        origin = headers.get("origin")
        if origin is not None and not (origin.startswith("http://") and host_ok(origin[7:], self.allowed)
                                       and origin[7:].lower() == host.lower()):
            return await _refuse(send, 403, f"Origin {origin!r} is not this server's address")
        if scope["method"] not in SAFE_METHODS and headers.get("sec-fetch-site", "same-origin") not in (
                "same-origin", "none"):
            return await _refuse(send, 403, "cross-site writes are refused")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query and scope["method"] in SAFE_METHODS:
            if not self._match(query["token"]):
                return await _refuse(send, 401, "wrong token: use the address the server printed")
            return await self._set_cookie(scope, send, {k: v for k, v in query.items() if k != "token"})
        if not self._match(self._presented(headers)):
            return await _refuse(send, 401, "no token: open the address the server printed (it holds the token)")
        return await self.app(scope, receive, send)

    def _presented(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header presents no token
            return None
        morsel = jar.get(self.cookie)
        return morsel.value if morsel else None

    def _match(self, presented: str | None) -> bool:
        return bool(presented) and secrets.compare_digest(presented.encode(), self.token.encode())

    async def _set_cookie(self, scope: dict[str, Any], send: Send, rest: dict[str, str]) -> None:
        """Trade the URL token for the cookie, and send the browser to the same page without it."""
        location = scope.get("path", "/") + (f"?{urlencode(rest)}" if rest else "")
        cookie = f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        await send({"type": "http.response.start", "status": 303, "headers": _headers(
            [("location", location), ("set-cookie", cookie), ("cache-control", "no-store"),
             ("referrer-policy", "no-referrer"), ("content-length", "0")])})
        await send({"type": "http.response.body", "body": b""})


def _headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": _headers(
        [("content-type", "application/json"), ("content-length", str(len(body)))])})
    await send({"type": "http.response.body", "body": body})
