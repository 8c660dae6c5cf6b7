"""A remote opened read-only by URL: ``tvreg.open("s3://bucket/team")``.

Version records and tags are read from the remote; objects are fetched on first use, checked
against their sha256 and kept in a local cache shared by every remote (``$TVREG_CACHE``, else
``~/.cache/tvreg``; objects are content-addressed, so one copy serves all). The catalog that
``ls``, ``sql`` and ref resolution use lives in the cache too, one per remote, and is rebuilt
from the remote's records the first time a registry object needs it (manifests come through
the cache, so a reopen reads only what is new). It is a read-only :class:`~tvreg.repo.repo.Repo`:
every write is refused with :class:`ReadOnlyRegistry` by the one check all writers make
(``require_writable``); pull into a local registry to change things.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NoReturn

from tvreg.digest import sha256_hex
from tvreg.errors import CorruptObject, InvalidInput, NotFound, ReadOnlyRegistry
from tvreg.remote.index import VERSIONS_KEY
from tvreg.repo.repo import CONFIG_FORMAT, Repo
from tvreg.storage.objects import ObjectDB, object_key
from tvreg.stores import LocalStore, MissingKey, Store


def default_cache() -> str:
    return os.environ.get("TVREG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tvreg")


def is_url(path: Any) -> bool:
    """Whether ``tvreg.open`` treats ``path`` as a remote's URL (a plain path is a registry)."""
    return isinstance(path, str) and "://" in path


class CachedObjectDB(ObjectDB):
    """A remote's objects through a local cache; every object is verified before it is cached
    or returned, and a damaged cache entry is fetched again."""

    def __init__(self, remote: Store, cache: Store) -> None:
        super().__init__(cache)
        self.remote = remote

    def get(self, oid: str) -> bytes:
        try:
            return super().get(oid)
        except CorruptObject:
            pass  # not cached yet (or damaged there): fetch it
        key = object_key(oid)
        try:
            data = self.remote.read(key)
        except MissingKey:
            raise CorruptObject(f"object {oid} is missing on {self.remote!r}") from None
        if sha256_hex(data) != oid:
            raise CorruptObject(f"object {key} on {self.remote!r} is corrupted (its sha256 "
                                "does not match its name)")
        self.store.write(key, data)
        return data

    def exists(self, oid: str) -> bool:
        return super().exists(oid) or self.remote.exists(object_key(oid))

    def size(self, oid: str) -> int:
        return self.remote.size(object_key(oid))

    def mtime(self, oid: str) -> float:
        return self.remote.mtime(object_key(oid))

    def ids(self):
        return ObjectDB(self.remote).ids()

    def put(self, data: bytes) -> NoReturn:
        raise ReadOnlyRegistry(f"{self.remote!r} is opened read-only")

    def delete(self, oid: str) -> NoReturn:
        raise ReadOnlyRegistry(f"{self.remote!r} is opened read-only")


class RemoteRepo(Repo):
    """A remote opened read-only by URL: records and tags read there, objects through the
    cache, the catalog rebuilt in the cache on the first read (:meth:`refresh` reads the
    remote's records again). :meth:`Repo.require_writable` refuses every write."""

    writable = False

    def __init__(self, url: str, *, options: dict[str, Any] | None = None,
                 cache: str | os.PathLike | None = None, check_tensors: bool = False) -> None:
        from tvreg.remote.config import Remote, check_url, normalize_url

        self.url = normalize_url(check_url(url))
        self.options = dict(options or {})
        self.cache = os.path.abspath(os.fspath(cache if cache is not None else default_cache()))
        key = hashlib.sha256(json.dumps([self.url, self.options], sort_keys=True).encode())
        super().__init__(os.path.join(self.cache, "remotes", key.hexdigest()[:16]),
                         check_tensors=check_tensors)
        remote = Remote("url", self.url, self.options)
        self.store = remote.reader()
        self.store.label = self.url  # a registry opened by URL: messages name the URL
        self.objects = CachedObjectDB(self.store, LocalStore(self.cache))
        self._fresh = False

    def __repr__(self) -> str:
        return f"<tvreg.Registry {self.url} (read-only, cache {self.root})>"

    @property
    def label(self) -> str:
        return self.url

    @property
    def exists(self) -> bool:
        if self.store.exists(VERSIONS_KEY):
            return True
        try:
            return next(iter(self.store.list("refs")), None) is not None
        except InvalidInput:  # cannot list (HTTP) and has no index: nothing to read
            return False

    def check_config(self) -> dict[str, Any]:
        """A remote has no config of its own here (and no remotes)."""
        return {"format": CONFIG_FORMAT, "remotes": {}}

    def require(self) -> None:
        """The first read refreshes the cached catalog from the remote's records."""
        if self._fresh:
            return
        if not self.exists:
            raise NotFound(f"no tvreg registry at {self.url} (nothing was pushed there)")
        os.makedirs(self.root, exist_ok=True)
        self.reindex()
        self._fresh = True

    def refresh(self) -> None:
        """Read the remote's records again (new pushes since this object first read them)."""
        self._fresh = False
        self.require()
