"""Running the web view: the bind address and token rules, the URL printed, uvicorn, and the
catalog of a registry opened by URL read again every so often."""

from __future__ import annotations

import gc
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput, TvregError
from tvreg.web.security import is_loopback

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.registry import Registry

MISSING = ("tvreg serve needs the web extra (starlette, uvicorn, jinja2): "
           "pip install 'tvreg[web]'")


def require_web_extra() -> None:
    """:class:`InvalidInput` naming the extra if starlette, uvicorn or jinja2 is missing."""
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InvalidInput(MISSING) from None


def check_bind(host: str, token: str | None) -> tuple[str | None, bool]:
    """The token to require, and whether it was generated now: a loopback ``host`` needs none
    (a given one is still required); any other host needs one, and gets a generated one (printed
    with the URL, as Jupyter does) if none is given."""
    if not host or any(c.isspace() for c in host):
        raise InvalidInput(f"invalid --host {host!r}")
    if token is not None:
        if len(token) < 8 or any(c.isspace() or not c.isprintable() for c in token):
            raise InvalidInput("invalid --token: at least 8 printable characters, no spaces")
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


def url_of(host: str, port: int, token: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port)."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"invalid --port {port}: 0 to 65535")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InvalidInput(f"invalid --host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _refresher(reg: Registry, every: float, stop: threading.Event) -> threading.Thread:
    """A thread that reads a registry opened by URL again every ``every`` seconds (new pushes
    appear; the pages keep reading the previous catalog meanwhile)."""
    def loop() -> None:
        while not stop.wait(every):
            try:
                reg.refresh()
            except TvregError as e:  # unreachable now: say so, keep serving what was read
                print(f"tvreg serve: warning: could not read {reg.repo.label} again: {e}",
                      file=sys.stderr, flush=True)
    thread = threading.Thread(target=loop, name="tvreg-serve-refresh", daemon=True)
    thread.start()
    return thread


def serve(reg: Registry, host: str = "127.0.0.1", port: int = 8000, *,
          token: str | None = None, refresh_every: float = 60.0,
          sql_rows: int | None = None, sql_timeout: float | None = None,
          on_ready: Callable[[str, bool], Any] | None = None, log_level: str = "warning") -> None:
    """Serve ``reg`` read-only on ``host:port`` until interrupted. ``on_ready(url, generated)``
    is called with the address to open (with the token, if one is required) once the socket
    listens. A registry opened by URL is read again every ``refresh_every`` seconds."""
    require_web_extra()
    import uvicorn

    from tvreg.web.app import SQL_ROWS, SQL_TIMEOUT, create_app

    token, generated = check_bind(host, token)
    if refresh_every <= 0:
        raise InvalidInput(f"invalid --refresh {refresh_every:g}: seconds, more than 0")
    app = create_app(reg, token=token, sql_rows=sql_rows or SQL_ROWS,
                     sql_timeout=sql_timeout or SQL_TIMEOUT)
    sock = bind(host, port)
    stop = threading.Event()
    if not reg.repo.writable:
        _refresher(reg, refresh_every, stop)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                            server_header=False, proxy_headers=False, timeout_keep_alive=5,
                            limit_concurrency=1000)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url_of(host, sock.getsockname()[1], token), generated)
    # what is loaded by now lives as long as the server: out of the cyclic collector's full
    # passes, which otherwise walk it every few requests (~15 ms each, 60 ms with torch loaded)
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
