"""The web view of a registry (layer L7, beside ``testing/``): ``tvreg serve``, a read-only
Starlette app of server-rendered pages and a JSON API (docs/web.md). Needs the ``web`` extra
(starlette, uvicorn, jinja2)."""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "create_app": "app",
    "WebView": "app",
    "Guard": "security",
    "is_loopback": "security",
    "serve": "server",
    "check_bind": "server",
}

__all__ = ["Guard", "WebView", "check_bind", "create_app", "is_loopback", "serve"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
