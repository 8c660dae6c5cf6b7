"""Content-addressed objects: ``objects/ab/cdef…`` holds bytes whose sha256 is ``abcdef…``.

:class:`ObjectDB` maps ids to keys and verifies every read; corrupted bytes raise
:class:`CorruptObject` and are never returned. :class:`Staging` collects a write's new objects in
a scratch folder so a failed write leaves the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from tvreg.digest import is_hex_digest, sha256_hex
from tvreg.errors import CorruptObject, FormatError, RegistryError
from tvreg.storage.gclock import gc_lock, lock_new_folder
from tvreg.stores import MissingKey, Store
from tvreg.util import faults

PREFIX = "objects"


def object_key(oid: str) -> str:
    if not is_hex_digest(oid):
        raise FormatError(f"not an object id: {oid[:80]!r}")
    return f"{PREFIX}/{oid[:2]}/{oid[2:]}"


class ObjectDB:
    """Content-addressed objects in a store (``objects/ab/cdef…``): put by content, every read
    checked against its sha256."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, data: bytes) -> str:
        oid = sha256_hex(data)
        key = object_key(oid)
        while not self.store.write_new(key, data):
            try:
                self.store.touch(key)  # reused: restart its gc grace period
                break
            except MissingKey:
                continue  # deleted by a concurrent gc since: write it after all
        return oid

    def restore(self, oid: str, data: bytes) -> bool:
        """Put back object ``oid`` whose copy here is damaged or missing (``verify --repair``):
        the one write that replaces an object, since :meth:`put` skips an existing key. ``data``
        must hash to ``oid`` (else :class:`CorruptObject`, nothing written); it replaces what is
        there atomically (temporary file, fsync, ``rename(2)``, folder fsync), unless the copy
        there is intact already. True if it wrote."""
        if sha256_hex(data) != oid:
            raise CorruptObject(f"object {oid}: the bytes to restore do not match its name")
        key = object_key(oid)
        if self.check(oid) is None:  # intact (repaired meanwhile, or never damaged)
            self.store.touch(key)
            return False
        self.store.write(key, data)
        return True

    def get(self, oid: str) -> bytes:
        try:
            data = self.store.read(object_key(oid))
        except MissingKey:
            raise CorruptObject(f"object {oid} is missing") from None
        if sha256_hex(data) != oid:
            raise CorruptObject(f"object {oid} is corrupted (its sha256 does not match its name)")
        return data

    def exists(self, oid: str) -> bool:
        return self.store.exists(object_key(oid))

    def size(self, oid: str) -> int:
        return self.store.size(object_key(oid))

    def mtime(self, oid: str) -> float:
        return self.store.mtime(object_key(oid))

    def delete(self, oid: str) -> None:
        self.store.delete(object_key(oid))

    def ids(self) -> Iterator[str]:
        """Every id in the store; stray keys under ``objects/`` that are not ids are skipped."""
        for key in self.store.list(PREFIX):
            parts = key.split("/")
            if len(parts) == 3 and len(parts[1]) == 2 and is_hex_digest(parts[1] + parts[2]):
                yield parts[1] + parts[2]

    def check(self, oid: str) -> str | None:
        """Re-hash one object; a problem as one line, or None."""
        try:
            self.get(oid)
        except CorruptObject as e:
            return str(e)
        return None


class Staging:
    """New objects of one write, kept in a scratch folder until :meth:`commit`.

    Thread-safe; objects already in the store or already staged are skipped (dedup).
    """

    def __init__(self, db: ObjectDB, scratch_root: str) -> None:
        self.db = db
        os.makedirs(scratch_root, exist_ok=True)
        while True:  # locked while in use: gc removes only unlocked scratch folders
            self.dir = tempfile.mkdtemp(prefix="stage-", dir=scratch_root)
            self._lock = lock_new_folder(self.dir)
            if self._lock is not None:
                break
        self._staged: dict[str, str] = {}
        self._reused: set[str] = set()
        self._mutex = threading.Lock()
        self.committed: list[str] = []  # objects this commit added to the store

    def put(self, data: bytes) -> str:
        oid = sha256_hex(data)
        with self._mutex:
            if oid in self._staged:
                return oid
        if self.db.exists(oid):
            try:
                self.db.store.touch(object_key(oid))  # reused: restart its gc grace period
            except MissingKey:
                pass  # deleted meanwhile: stage it after all
            else:
                with self._mutex:
                    self._reused.add(oid)
                return oid
        path = os.path.join(self.dir, oid)
        faults.step("stage", oid)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with self._mutex:
            self._staged[oid] = path
        return oid

    def commit(self) -> int:
        """Move staged objects into the store (fsynced there); returns how many were new.

        Each one's mtime, and that of every existing object this write reuses, is set to now
        (an object a store with ``fresh_writes`` has just written has it already), so
        gc's grace period runs from the commit, which comes just before the manifest and record
        that reference them. A reused object that a concurrent gc deleted meanwhile fails the
        commit (its bytes were never staged), so no record can name a missing object."""
        new = 0
        written: set[str] = set()
        for oid, path in self._staged.items():
            if self.db.store.write_file(object_key(oid), path):
                new += 1
                self.committed.append(oid)
                written.add(oid)
        fresh = written if self.db.store.fresh_writes else set()
        for oid in sorted((self._reused | self._staged.keys()) - fresh):
            try:
                self.db.store.touch(object_key(oid))
            except MissingKey:
                raise RegistryError(f"object {oid} was deleted by a concurrent gc while this "
                                    "write reused it; run the command again") from None
        self._staged.clear()
        self._reused.clear()
        self.close()
        return new

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- referencing stored objects under the gc lock (storage/gclock.py) -------------------------


class Referencer(Protocol):
    """What :func:`referencing` needs of a registry: its folder, store, object database and
    lock timeout (a local registry's ``Registry`` has them)."""

    root: str
    store: Store
    objects: ObjectDB

    @property
    def lock_timeout(self) -> float: ...


@contextlib.contextmanager
def referencing(reg: Referencer, oids: Iterable[str],
                restore: Mapping[str, bytes] | None = None) -> Iterator[None]:
    """Hold the gc lock shared and check that every object of ``oids`` is stored, touching it
    (its grace period restarts). The caller writes the records that name them inside the
    block. An object that a concurrent gc deleted is written again from ``restore`` (the bytes
    of objects the caller holds, e.g. its manifest); any other fails the write with
    :class:`~tvreg.errors.RegistryError` before a record names it."""
    restore = restore or {}
    with gc_lock(reg.root, exclusive=False, timeout=reg.lock_timeout):
        for oid in sorted(set(oids)):
            try:
                reg.store.touch(object_key(oid))
            except MissingKey:
                if oid not in restore:
                    raise RegistryError(f"object {oid} was deleted by a concurrent gc before "
                                        "this write could reference it; nothing was recorded: "
                                        "run the command again") from None
                reg.objects.put(restore[oid])
        yield
