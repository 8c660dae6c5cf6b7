"""FsspecStore: the store contract over any fsspec filesystem (memory, S3, GCS, Azure, HTTP).

Each key is one object at ``ROOT/KEY``. A value is written with a single put of the whole
bytes (``pipe_file``), which object stores apply atomically; exclusive create opens the path in
mode ``"xb"`` (fsspec's exclusive create; s3fs sends a conditional put with ``If-None-Match``).
A local directory is better served by :class:`~tvreg.stores.LocalStore` (fsync, link(2)).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterator
from typing import Any

from tvreg.errors import RemoteError, TvregError
from tvreg.stores.base import MissingKey, Store, check_key, is_key
from tvreg.util import faults


def _timestamp(info: dict[str, Any]) -> float | None:
    for field in ("mtime", "LastModified", "last_modified", "created", "updated"):
        v = info.get(field)
        if v is None:
            continue
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, _dt.datetime):
            return (v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp()
        if isinstance(v, str):
            try:
                parsed = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
            aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
            return aware.timestamp()
    return None


def _backend_failure(e: BaseException) -> bool:
    """Errors of the storage backend (network, auth, service), as opposed to tvreg's own or a
    programming error: OSError (what fsspec maps most failures to) and the exceptions of the
    HTTP/cloud client libraries underneath (botocore, aiohttp, requests, azure, google)."""
    if isinstance(e, TvregError):
        return False
    if isinstance(e, (OSError, TimeoutError, ConnectionError)):
        return True
    module = type(e).__module__.split(".", 1)[0]
    if module in _BACKENDS:
        return True
    # a storage option the backend does not take (``--option anon=true`` for HTTP) surfaces as
    # a TypeError raised inside the client library, on the first request
    return isinstance(e, TypeError) and _raised_in(e, _BACKENDS | {"fsspec", "s3fs"})


_BACKENDS = frozenset({"botocore", "aiobotocore", "aiohttp", "requests", "urllib3", "azure",
                       "google", "gcsfs", "adlfs"})


def _raised_in(e: BaseException, packages: frozenset[str] | set[str]) -> bool:
    """Whether the innermost frame of ``e``'s traceback is in one of ``packages``."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).split(".", 1)[0] in packages


def _translated(method):
    """Backend failures become one-line :class:`RemoteError`s that name the store."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not _backend_failure(e):
                raise
            text = " ".join(str(e).split())[:300] or type(e).__name__
            if isinstance(e, TypeError):  # bad configuration, not a failing backend
                from tvreg.errors import InvalidInput

                raise InvalidInput(f"{self}: the backend rejected an option ({text}); check "
                                   "the remote's options (tvreg remote add --option)") from None
            if isinstance(e, PermissionError):
                text = f"access denied ({text}); check the backend's credentials"
            raise RemoteError(f"{self}: {text}") from None
    return wrapper


class FsspecStore(Store):
    """A store on any fsspec filesystem (S3, memory, HTTP read-only, …) under a root path."""

    #: write_file uploads the bytes: the key's time is the write's (a touch of it would be a
    #: download and an upload again on S3)
    fresh_writes = True

    def __init__(self, fs: Any, root: str, *, writable: bool = True) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.writable = writable

    @classmethod
    def from_url(cls, url: str, **storage_options: Any) -> FsspecStore:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        writable = fs.protocol not in ("http", "https") and not (
            isinstance(fs.protocol, tuple) and set(fs.protocol) & {"http", "https"})
        return cls(fs, root, writable=writable)

    def __repr__(self) -> str:
        return f"<FsspecStore {self.fs.protocol}:{self.root}>"

    def location(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        root = self.root.split("://", 1)[-1] if protocol in ("http", "https") else self.root
        return f"{protocol}://{root}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def _check_writable(self) -> None:
        if not self.writable:
            from tvreg.errors import InvalidInput

            raise InvalidInput(f"{self} is read-only")

    def _is_file(self, path: str) -> bool:
        try:
            return self.fs.isfile(path)
        except (FileNotFoundError, NotADirectoryError):
            return False

    # --- reads -----------------------------------------------------------------------------------

    @_translated
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:  # one request: a key that is a folder fails like a missing one (or, over HTTP,
            # returns a listing page, which no reader accepts as a record or an object)
            return bytes(self.fs.cat_file(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MissingKey(f"no such key {key!r} in {self}") from None

    @_translated
    def exists(self, key: str) -> bool:
        return self._is_file(self._path(key))

    @_translated
    def _info(self, key: str) -> dict[str, Any]:
        path = self._path(key)
        try:
            info = self.fs.info(path)
        except (FileNotFoundError, NotADirectoryError):
            raise MissingKey(f"no such key {key!r} in {self}") from None
        if info.get("type") != "file":
            raise MissingKey(f"no such key {key!r} in {self}")
        return info

    def size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def mtime(self, key: str) -> float:
        t = _timestamp(self._info(key))
        if t is None:  # a backend that reports no time: the safe side for gc is "just now"
            import time

            return time.time()
        return t

    @_translated
    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root if not prefix else self._path(prefix)
        try:
            found = self.fs.find(base, withdirs=False)
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        root = self.root.strip("/")
        head = root + "/" if root else ""
        keys = []
        for path in found:
            path = path.lstrip("/")
            rel = path[len(head):] if path.startswith(head) else ""
            # only what a valid key names, as is, not normalised: temporary or hidden entries
            # some tools leave next to objects (".x", "x_$folder$") and names with "..", "//"
            # or other characters (an S3 key may hold any) are not part of the registry
            if not is_key(rel):
                continue
            if prefix and not (rel == prefix or rel.startswith(prefix + "/")):
                continue
            keys.append(rel)
        return iter(keys)

    # --- writes ----------------------------------------------------------------------------------

    @_translated
    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._check_writable()
        faults.step("put", key)
        self.fs.pipe_file(path, bytes(data))

    @_translated
    def write_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        self._check_writable()
        faults.step("put-new", key)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(bytes(data))
        except FileExistsError:
            return False
        return True

    def write_file(self, key: str, path: str) -> bool:
        target = self._path(key)  # validate before consuming the source
        self._check_writable()
        with open(path, "rb") as f:
            data = f.read()
        try:
            return self.write_new(key, data) if target else False
        finally:
            os.unlink(path)

    @_translated
    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_writable()
        faults.step("delete", key)
        try:
            if self._is_file(path):
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    @_translated
    def touch(self, key: str) -> None:
        path = self._path(key)
        self._check_writable()
        if not self._is_file(path):
            raise MissingKey(f"no such key {key!r} in {self}")
        faults.step("touch", key)
        try:
            self.fs.touch(path, truncate=False)
        except (NotImplementedError, ValueError, TypeError):
            self.fs.pipe_file(path, bytes(self.fs.cat_file(path)))  # rewrite: a new time
