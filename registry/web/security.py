"""The web view's guard, one ASGI middleware in front of every route and static file:

- read-only: GET and HEAD only, anything else ``405`` with ``Allow: GET, HEAD``;
- the token (``tvreg serve --token``, or one it generated), checked on every request: from the
  ``token`` query parameter (which also sets an HttpOnly cookie, and for a page redirects to the
  same address without it, as Jupyter does), an ``Authorization: Bearer`` header, or the cookie;
- without a token (loopback only), requests must name a loopback host in ``Host`` (a page of
  another site that resolves its own name to 127.0.0.1 cannot read the registry: DNS rebinding);
- on every response: a Content-Security-Policy (scripts and styles from this server only, no
  inline script, no frames, no form posting elsewhere), ``nosniff``, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

COOKIE = "tvreg_token"
ALLOWED_METHODS = ("GET", "HEAD")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """Read-only, token and Host checks, and security headers (see the module's doc)."""

    def __init__(self, app: Any, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if scope["method"] not in ALLOWED_METHODS:
            await _plain(send, 405, "405 method not allowed: this server is read-only "
                                    "(GET and HEAD only)", [(b"allow", b"GET, HEAD")])
            return
        if self.token is None:
            if not is_loopback(_host_of(headers.get("host", ""))):
                await _plain(send, 403, "403 forbidden: the Host header must name a loopback "
                                        "address (serve with --token to be reached by name)")
                return
            await self.app(scope, receive, _secured(send))
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None:
            if not self._matches(given):
                await _plain(send, 403, "403 forbidden: wrong token")
                return
            cookie = _cookie(given)
            path = scope["path"]
            if not path.startswith("/api/"):  # a page: the same address without the token
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                location = (scope.get("root_path", "") + path + ("?" + rest if rest else ""))
                await _plain(send, 303, "see other", [(b"location", location.encode()),
                                                      (b"set-cookie", cookie)])
                return
            await self.app(scope, receive, _secured(send, [(b"set-cookie", cookie)]))
            return
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self._matches(auth[7:].strip()):
            await self.app(scope, receive, _secured(send))
            return
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            jar = SimpleCookie()
        if COOKIE in jar and self._matches(jar[COOKIE].value):
            await self.app(scope, receive, _secured(send))
            return
        await _plain(send, 403, "403 forbidden: this server needs its token (open the address "
                                "`tvreg serve` printed, with ?token=…, or send "
                                "Authorization: Bearer TOKEN)")

    def _matches(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode(), self.token.encode())


def _cookie(token: str) -> bytes:
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()


def _secured(send: Any, extra: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message = dict(message)
            message["headers"] = [*message.get("headers", []),
                                  *(h for h in HEADERS if h[0] not in names), *(extra or [])]
        await send(message)
    return wrapped


async def _plain(send: Any, status: int, text: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *HEADERS, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
