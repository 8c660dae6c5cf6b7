"""Named remotes in ``config.json``: where a registry's objects and records are shared.

A remote is an fsspec URL (a directory or ``file://``, ``s3://``, ``memory://``, ``http(s)://``
read-only, ``gs://``, ``az://``...) plus fsspec storage options (``endpoint_url=...``).
Credentials come from the backend's usual sources (AWS environment variables and profiles for
S3) and are never stored: options whose names look like secrets are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvreg.digest import parse_json
from tvreg.errors import InvalidInput, InvalidName, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_OPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
#: option names that carry credentials: never written to config.json
_SECRET = re.compile(r"(key|secret|token|password|passwd|credential|session|sas|signature)",
                     re.IGNORECASE)
_ALLOWED_SECRET_LOOKALIKES = {"anon", "use_ssl", "requester_pays"}
READ_ONLY_PROTOCOLS = {"http", "https"}


@dataclass(frozen=True)
class Remote:
    """A named remote of ``config.json``: its URL and fsspec options (never credentials)."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "file"
        return scheme.lower()

    @property
    def writable(self) -> bool:
        return self.protocol not in READ_ONLY_PROTOCOLS

    @property
    def listable(self) -> bool:
        """Whether its keys can be listed (HTTP cannot: its index says what it holds)."""
        return self.protocol not in READ_ONLY_PROTOCOLS

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "options": dict(self.options)}

    def reader(self) -> Store:
        """The store to read from: :meth:`store`, listed through the remote index where the
        backend cannot list (HTTP)."""
        from tvreg.remote.index import IndexListedStore

        store = self.store()
        return store if self.listable else IndexListedStore(store)

    def store(self) -> Store:
        """The remote's object layout as a store (a local directory gets :class:`LocalStore`)."""
        from tvreg.stores import FsspecStore, LocalStore

        if self.protocol == "file":
            store: Store = LocalStore(self.url.removeprefix("file://"))
        else:
            try:
                store = FsspecStore.from_url(self.url, **self.options)
            except (ImportError, ValueError, TypeError) as e:
                raise InvalidInput(f"remote {self.name}: cannot open {self.url}: "
                                   f"{' '.join(str(e).split())[:300]}") from None
        store.label = f"remote {self.name} ({self.url})"
        return store


def validate_remote_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(f"invalid remote name {name!r}: 1-64 characters, a lowercase letter "
                          "first, then lowercase letters, digits, '_' or '-'")
    return name


def parse_options(items: tuple[str, ...] | list[str], flag: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` items into storage options; values are JSON scalars if they parse as one."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _OPTION.fullmatch(key):
            raise InvalidInput(f"invalid {flag} {item!r}: expected KEY=VALUE")
        if _SECRET.search(key) and key not in _ALLOWED_SECRET_LOOKALIKES:
            raise InvalidInput(f"{flag} {key} looks like a credential; tvreg never stores "
                               "credentials: use the backend's own sources (for S3: "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)")
        if key in options:
            raise InvalidInput(f"{flag} {key} given twice")
        try:
            parsed = parse_json(value)
            options[key] = parsed if isinstance(parsed, (bool, int, float, str)) or parsed is None \
                else value
        except ValueError:
            options[key] = value
    return options


def check_url(url: str) -> str:
    import fsspec

    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        raise InvalidInput(f"invalid remote URL {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme != "file" and scheme not in fsspec.available_protocols():
        raise InvalidInput(f"unknown remote URL scheme {scheme!r} in {url!r}")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise InvalidInput("remote URLs must not carry credentials (user:password@host); use "
                           "the backend's own credential sources")
    return url


def normalize_url(url: str) -> str:
    """Plain paths become absolute ``file://`` URLs (so a remote means the same from anywhere)."""
    import os

    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    if url.startswith("file://"):
        return "file://" + os.path.abspath(url.removeprefix("file://"))
    return url


def load(reg: Repo) -> dict[str, Remote]:
    """The named remotes of ``config.json``."""
    config = reg.check_config()
    raw = config.get("remotes", {})
    if not isinstance(raw, dict):
        from tvreg.errors import FormatError

        raise FormatError(f"{reg.root}/config.json: remotes must be an object")
    out = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            from tvreg.errors import FormatError

            raise FormatError(f"{reg.root}/config.json: remote {name!r} is malformed")
        out[name] = Remote(name, spec["url"], dict(spec.get("options") or {}))
    return out


def _save(reg: Repo, remotes: dict[str, Remote]) -> None:
    config = reg.check_config()
    config["remotes"] = {n: r.to_json() for n, r in sorted(remotes.items())}
    reg.store.write("config.json", json.dumps(config, indent=2).encode() + b"\n")


def add(reg: Repo, name: str, url: str, options: dict[str, Any] | None = None) -> Remote:
    """Add remote ``name`` to ``config.json`` (creating the registry if needed)."""
    reg.require_writable()
    validate_remote_name(name)
    remote = Remote(name, normalize_url(check_url(url)), dict(options or {}))
    for key in remote.options:
        if _SECRET.search(key) and key not in _ALLOWED_SECRET_LOOKALIKES:
            raise InvalidInput(f"option {key} looks like a credential; tvreg never stores it")
    if not reg.exists:
        reg.init()
    remotes = load(reg)
    if name in remotes:
        raise InvalidInput(f"remote {name} already exists ({remotes[name].url}); "
                           f"`tvreg remote rm {name}` first")
    remotes[name] = remote
    _save(reg, remotes)
    return remote


def remove(reg: Repo, name: str) -> Remote:
    """Remove remote ``name`` from ``config.json``."""
    reg.require_writable()
    remotes = load(reg)
    if name not in remotes:
        raise NotFound(f"no remote {name!r} (known: {', '.join(sorted(remotes)) or 'none'})")
    gone = remotes.pop(name)
    _save(reg, remotes)
    return gone


def get(reg: Repo, name: str) -> Remote:
    """Remote ``name``; :class:`NotFound` (naming the known ones) if there is none."""
    remotes = load(reg)
    if name not in remotes:
        raise NotFound(f"no remote {name!r} (known: {', '.join(sorted(remotes)) or 'none'}); "
                       f"add one with `tvreg remote add {name} URL`")
    return remotes[name]
