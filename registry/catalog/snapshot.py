"""A catalog read from an in-memory copy of its file: for a long-running reader with many
concurrent requests (``tvreg serve``).

:class:`~tvreg.catalog.db.Catalog` opens the file for every read (DuckDB lets one process write
a file at a time, so nobody may hold it open). That costs ~10 ms per query, and DuckDB refuses a
second connection with another configuration while one is open in the process (a sandboxed SQL
console beside a plain read). :class:`CatalogSnapshot` reads instead from an in-memory copy of
the file, made under the catalog's shared lock and made again when the file changes (its size or
time, or its write-ahead log's): queries take a cursor of the copy (milliseconds, any number of
threads), the file is held only while it is copied, so writers in other processes never wait on
the reader for longer than a copy. Writes (``writer``) go to the file as usual.

The copy is sandboxed like ``tvreg sql`` (no file or network access, configuration locked) for
every read, the sandboxed ones and the others alike: the catalog's own reads need neither.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import duckdb

from tvreg.catalog.db import Catalog, sandbox
from tvreg.errors import RegistryError

_Signature = tuple[tuple[int, int] | None, tuple[int, int] | None]


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class CatalogSnapshot(Catalog):
    """A :class:`Catalog` whose reads come from an in-memory copy of the file, copied again when
    the file changes (checked at most every ``check_interval`` seconds; 0: on every read)."""

    def __init__(self, path: str, timeout: float | None = None, *,
                 check_interval: float = 0.0) -> None:
        super().__init__(path, timeout)
        self.check_interval = check_interval
        self._copy: duckdb.DuckDBPyConnection | None = None
        self._signature: _Signature | None = None
        self._checked = 0.0
        self._copying = threading.Lock()
        #: how many copies were made (for tests and the benchmark)
        self.copies = 0

    def _file_signature(self) -> _Signature:
        return _stat(self.path), _stat(self.path + ".wal")

    def _make_copy(self) -> tuple[duckdb.DuckDBPyConnection, _Signature]:
        if not self._migrated or not os.path.exists(self.path):
            self._ensure_migrated()
        copy = duckdb.connect(":memory:")
        try:
            deadline = time.monotonic() + self.timeout
            # the shared lock: no tvreg writer changes the file while it is copied
            with self._serialized(False, deadline):
                signature = self._file_signature()
                path = self.path.replace("'", "''")
                try:
                    copy.execute(f"ATTACH '{path}' AS catalog_file (READ_ONLY)")
                    copy.execute("COPY FROM DATABASE catalog_file TO memory")
                    copy.execute("DETACH catalog_file")
                except duckdb.Error as e:
                    raise RegistryError(f"cannot read catalog {self.path}: "
                                        f"{' '.join(str(e).split())}") from None
            sandbox(copy)
        except BaseException:
            copy.close()
            raise
        return copy, signature

    def current(self) -> duckdb.DuckDBPyConnection:
        """The in-memory copy, copied again first if the file changed. While one thread copies,
        the others keep reading the copy they have (there is always one after the first)."""
        now = time.monotonic()
        if self._copy is not None and now - self._checked < self.check_interval:
            return self._copy
        self._checked = now
        if self._copy is not None and self._file_signature() == self._signature:
            return self._copy
        if self._copy is not None and not self._copying.acquire(blocking=False):
            return self._copy  # another thread is copying: read the previous copy meanwhile
        if self._copy is None:
            self._copying.acquire()
        try:
            if self._copy is None or self._file_signature() != self._signature:
                copy, signature = self._make_copy()
                self._copy, self._signature = copy, signature  # the old copy closes when unused
                self.copies += 1
            return self._copy
        finally:
            self._copying.release()

    @contextlib.contextmanager
    def reader(self, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of the current copy (always sandboxed)."""
        cursor = self.current().cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def close(self) -> None:
        """Drop the copy (a later read copies the file again)."""
        with self._copying:
            self._copy, self._signature = None, None
