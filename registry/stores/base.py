"""The store contract: a flat namespace of ``/``-separated keys holding immutable-ish bytes.

A store knows nothing of hashes or JSON; :mod:`tvreg.storage.objects` and
:mod:`tvreg.format.records` give keys their meaning. Every implementation must pass the contract in
:mod:`tvreg.testing.store`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator

from tvreg.errors import InvalidInput, NotFound

_KEY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*")


class MissingKey(NotFound):
    """The key does not exist in the store."""


def check_key(key: str) -> str:
    """Keys are relative, ``/``-separated, with parts of ``[A-Za-z0-9_][A-Za-z0-9._@-]*``: no
    absolute paths, no ``.``/``..``, no hidden or temporary names, so no key escapes the store."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(p) for p in parts):
        raise InvalidInput(f"invalid store key {key[:80]!r}")
    return key


def is_key(text: str) -> bool:
    """Whether ``text`` is a valid key (:func:`check_key`). Listings yield only keys: a file
    whose name no valid key can have (hidden, temporary, ``..``, an empty part, other
    characters) is not part of a registry, so it is never listed, read or copied."""
    return bool(text) and all(_KEY_PART.fullmatch(p) for p in text.split("/"))


class Store(abc.ABC):
    """Abstract store. Writes are atomic: a reader sees the whole value or no key at all."""

    #: whether :meth:`write_new` is a true exclusive create (no check-then-write race)
    supports_exclusive_create: bool = True
    #: whether writes are allowed at all
    writable: bool = True
    #: whether :meth:`write_file` creates its key with the time of the write itself, so a
    #: commit need not touch what it has just written (an object store's PUT; a local folder
    #: links in a staged file, which keeps the time it was staged)
    fresh_writes: bool = False
    #: how messages name this store ("remote NAME (URL)" once a remote sets it); ``str(store)``
    #: is this, else the store's URL or path, never a Python repr
    label: str = ""

    def __str__(self) -> str:
        return self.label or self.location()

    def location(self) -> str:
        """The store's URL or path, for messages."""
        return repr(self)

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The value of ``key``; raises :class:`MissingKey`."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Atomically create or replace ``key``."""

    @abc.abstractmethod
    def write_new(self, key: str, data: bytes) -> bool:
        """Atomically create ``key`` only if absent. True if created, False if it existed."""

    @abc.abstractmethod
    def write_file(self, key: str, path: str) -> bool:
        """Create ``key`` from the local file ``path`` (consumed) unless ``key`` exists."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def mtime(self, key: str) -> float:
        """Last modification time (seconds since the epoch)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def touch(self, key: str) -> None:
        """Set the modification time of ``key`` to now (gc keeps recently touched objects)."""

    def clean_temporary(self, older_than: float, dry_run: bool = False) -> int:
        """Remove leftovers of interrupted writes older than ``older_than`` seconds; returns how
        many there were. Stores whose writes leave nothing behind keep this default."""
        return 0

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """All keys under the folder ``prefix`` (recursive), in no particular order."""
