"""The DuckDB catalog: an index over the object store, rebuilt from it by :meth:`Catalog.rebuild`.

Connections are short-lived (DuckDB lets one process write a file at a time): every operation
opens, works and closes, and a process that finds the file locked waits with backoff up to
``timeout`` seconds (``$TVREG_LOCK_TIMEOUT``, default 60) before raising :class:`CatalogBusy`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.resources
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import duckdb

from tvreg.errors import CatalogBusy, InvalidInput, RegistryError, SQLError
from tvreg.util import faults
from tvreg.util.locks import flock_until, read_holder, write_holder

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: DuckDB's own lock only
    fcntl = None  # type: ignore[assignment]
from tvreg.format.manifest import Manifest
from tvreg.format.records import TagRecord, VersionRecord

DEFAULT_TIMEOUT = 60.0
_ALLOWED_SQL = {"SELECT", "EXPLAIN"}
_BATCH = 500


def _migrations() -> list[tuple[int, str, str]]:
    folder = importlib.resources.files("tvreg.schema") / "migrations"
    out = []
    for item in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", item.name)
        if m:
            out.append((int(m.group(1)), m.group(2), item.read_text(encoding="utf-8")))
    return sorted(out)


def timestamp(text: str) -> _dt.datetime:
    """A record's UTC time (``2026-01-02T03:04:05.123456Z``) as the catalog stores it."""
    return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


_threads = threading.local()


def _held() -> dict[str, bool]:
    """The catalog locks this thread holds: path -> exclusive."""
    held = getattr(_threads, "held", None)
    if held is None:
        held = _threads.held = {}
    return held


def _lock_file(path: str) -> int | None:
    """A descriptor of the lock file ``path`` (made if needed), or None if it cannot be made."""
    from tvreg.stores.local import _FILE_MODE

    flags = getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, _FILE_MODE)
    except OSError:
        try:
            return os.open(path, os.O_RDONLY | flags)
        except OSError:
            return None


def _is_lock_error(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


class Catalog:
    """The DuckDB catalog of one registry (``catalog.duckdb``): schema migrations, the write lock,
    rebuilds from the store, and sandboxed read-only SQL."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        if timeout is None:
            text = os.environ.get("TVREG_LOCK_TIMEOUT", str(DEFAULT_TIMEOUT))
            try:
                timeout = float(text)
            except ValueError:
                timeout = -1.0
            if not timeout >= 0:
                raise InvalidInput(f"invalid $TVREG_LOCK_TIMEOUT {text!r}: seconds, a number >= 0")
        self.timeout = timeout
        self._migrated = False

    # --- connections ---------------------------------------------------------------------------

    def _open(self, read_only: bool, config: dict[str, Any] | None = None,
              deadline: float | None = None):
        """A DuckDB connection; waits while another process (not tvreg: tvreg's processes
        wait in :meth:`_serialized` first) holds the file."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only, config=config or {})
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    raise RegistryError(f"cannot open catalog {self.path}: {e}") from None
                if time.monotonic() >= deadline:
                    holder = re.search(r"PID \d+", str(e))
                    raise CatalogBusy(self._busy(holder.group(0) if holder else None)) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def _busy(self, holder: str | None) -> str:
        return (f"catalog {self.path} stayed locked by another process"
                f"{' (' + holder + ')' if holder else ''} for {self.timeout:g}s; "
                "retry, or raise $TVREG_LOCK_TIMEOUT")

    @contextlib.contextmanager
    def _serialized(self, exclusive: bool, deadline: float) -> Iterator[None]:
        """Hold ``PATH.lock`` (``flock(2)``; shared for a reader, exclusive for a writer) from
        before a connection opens until after it closes, waiting up to ``deadline``.

        DuckDB's own file lock is not enough: with processes opening and closing the file at a
        high rate, DuckDB 2.0 loses transactions it reported as committed (measured: ~1% of
        the commits of 8 processes; benchmarks/bench_concurrency.py, scenario duckdb-raw).
        With this lock no two processes' connections ever meet. A thread that holds it already
        (a nested connection) does not take it again."""
        held = _held()
        mode = held.get(self.path)
        if fcntl is None or (mode is not None and (mode or not exclusive)):
            yield
            return
        fd = _lock_file(self.path + ".lock")
        if fd is None:  # cannot be created (a read-only folder): nobody can write here anyway
            yield
            return
        try:
            if not flock_until(fd, exclusive=exclusive, deadline=deadline):
                # a reader waits only on a writer, which wrote its PID there
                pid = None if exclusive else read_holder(fd)
                raise CatalogBusy(self._busy(f"PID {pid}" if pid else None)) from None
            if exclusive:
                with contextlib.suppress(OSError):  # a read-only lock file (_lock_file)
                    write_holder(fd)
            held[self.path] = exclusive
            try:
                yield
            finally:
                del held[self.path]
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _connection(self, read_only: bool, config: dict[str, Any] | None = None
                    ) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.timeout
        with self._serialized(not read_only, deadline):
            con = self._open(read_only, config, deadline)
            try:
                yield con
            finally:
                con.close()

    @contextlib.contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        if not os.path.exists(self.path):
            self._migrated = False  # deleted since we migrated it: the new file needs the schema
        faults.step("begin", self.path)  # opening may create the file or replay its WAL
        with self._connection(read_only=False) as con:
            if not self._migrated:
                self._migrate(con)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            faults.step("commit", self.path)
            con.execute("COMMIT")
            faults.step("close", self.path)  # committed, not yet checkpointed: only in the WAL

    @contextlib.contextmanager
    def reader(self, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self._migrated or not os.path.exists(self.path):
            self._ensure_migrated()
        config = ({"enable_external_access": False, "lock_configuration": True} if sandboxed
                  else None)
        with self._connection(read_only=True, config=config) as con:
            yield con

    def _ensure_migrated(self) -> None:
        """Readers need the schema; check it read-only and take the write lock only to migrate."""
        if os.path.exists(self.path):
            with self._connection(read_only=True) as con:
                try:
                    have = {r[0] for r in con.execute("SELECT version FROM schema_migrations")
                            .fetchall()}
                except duckdb.Error:
                    have = None
            # every known migration applied, by number (not the highest alone: migrations from
            # different branches may land out of order, e.g. 4 before 3)
            if have == {m[0] for m in _migrations()}:
                self._migrated = True
                return
        with self.writer():
            pass

    def _migrate(self, con) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                    "applied_at TIMESTAMP NOT NULL)")
        done = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
        known = _migrations()
        unknown = done - {m[0] for m in known}
        if unknown:
            raise RegistryError(f"catalog {self.path} has schema version {max(unknown)}, which "
                                f"this tvreg does not know (it knows up to {known[-1][0]}); "
                                "upgrade tvreg")
        for number, name, ddl in known:
            if number in done:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(ddl)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            [number, name, _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)])
                faults.step("commit", self.path)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._migrated = True

    def schema_version(self) -> int:
        with self.reader() as con:
            row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
            assert row is not None  # an aggregate always has a row
            return row[0]

    # --- writes ----------------------------------------------------------------------------------

    def index(self, records: Sequence[VersionRecord], manifests: dict[str, Manifest]) -> None:
        """Add (or refresh) version records and their vectors in one transaction."""
        with self.writer() as con:
            self._insert(con, records, manifests)

    def _insert(self, con, records: Sequence[VersionRecord], manifests: dict[str, Manifest]
                ) -> None:
        vids = sorted({r.vector_id for r in records})
        known = set()
        if vids:
            known = {row[0] for row in con.execute(
                "SELECT vector_id FROM vectors WHERE vector_id IN (SELECT unnest(?))", [vids]
            ).fetchall()}
        new = [v for v in vids if v not in known]
        insert_rows(con, "vectors", [_vector_row(v, manifests[v]) for v in new])
        insert_rows(con, "tensors", [row for v in new for row in _tensor_rows(v, manifests[v])])
        for r in records:
            con.execute("DELETE FROM versions WHERE name = ? AND version = ?", [r.name, r.version])
        insert_rows(con, "versions", [version_row(r, manifests[r.vector_id]) + codec_columns(r)
                                      for r in records], VERSION_COLUMNS + CODEC_COLUMNS)

    def set_tag(self, name: str, tag: str, current: Callable[[], TagRecord | None]) -> None:
        """Index tag ``NAME@tag`` as ``current()`` reads it from the store (None: no tag),
        called while this process holds the write lock, so that the last writer indexes what
        the last tag file says."""
        with self.writer() as con:
            found = current()
            con.execute("DELETE FROM tags WHERE name = ? AND tag = ?", [name, tag])
            if found is not None:
                insert_rows(con, "tags", [tag_row(found)])

    def rebuild(self, load: Callable[[], tuple[Iterable[VersionRecord], dict[str, Manifest],
                                               Iterable[TagRecord]]],
                also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        """Replace the whole index in one transaction (readers see the old or the new one).

        ``load`` lists the store and runs while this process holds the write lock: every writer
        indexes its version under that lock after storing it, so a version stored before the
        listing is in it, and one stored after is indexed by its writer once the rebuild is done.
        Listing first and locking after would drop a version indexed in between. ``also``
        rebuilds other tables (the stored bases) in the same transaction.
        """
        with self.writer() as con:
            records, manifests, tags = load()
            records, tags = list(records), list(tags)
            for table in ("tags", "versions", "tensors", "vectors"):
                con.execute(f"DELETE FROM {table}")
            self._insert(con, records, manifests)
            insert_rows(con, "tags", [tag_row(t) for t in tags])
            # similarities of vectors still stored are kept (they are derived data)
            prune_similarity_rows(con)
            if also is not None:
                also(con)

    def forget_vectors(self, vector_ids: Iterable[str]) -> None:
        """Drop the rows of vectors gc deleted, except those a version names by now: a
        concurrent write may have stored such a vector again (its manifest and blobs) and
        indexed a version of it since."""
        ids = sorted(set(vector_ids))
        if not ids:
            return
        with self.writer() as con:
            ids = [r[0] for r in con.execute(
                "SELECT unnest(?) AS v EXCEPT SELECT vector_id FROM versions", [ids]).fetchall()]
            if not ids:
                return
            for table in ("tensors", "vectors"):
                con.execute(f"DELETE FROM {table} WHERE vector_id IN (SELECT unnest(?))", [ids])
            forget_similarity_rows(con, ids)

    # --- reads -----------------------------------------------------------------------------------

    def rows(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        with self.reader() as con:
            cur = con.execute(query, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None
            ) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement for a user: SELECT (incl. DESCRIBE/SHOW) or EXPLAIN only,
        on a connection that can neither write the catalog nor touch any other file (limits:
        :func:`user_query`)."""
        with self.reader(sandboxed=True) as con:
            return user_query(con, query, max_rows=max_rows, timeout=timeout)


def sandbox(con: duckdb.DuckDBPyConnection) -> None:
    """No file or network access from here on, and no way to turn it back on."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def user_query(con: duckdb.DuckDBPyConnection, query: str, *, max_rows: int | None = None,
               timeout: float | None = None) -> tuple[list[str], list[tuple]]:
    """One user statement on a sandboxed connection: SELECT (incl. DESCRIBE/SHOW) or EXPLAIN.
    JSON columns (meta, parents, recipe, …) come back as values, not as text.

    ``max_rows``: fetch at most ``max_rows + 1`` rows (one more than shown tells the caller the
    result was cut); ``timeout``: interrupt the statement after that many seconds
    (:class:`SQLError`). ``tvreg serve``'s console sets both; ``tvreg sql`` neither."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise SQLError(_one_line(e)) from None
    if len(statements) != 1:
        raise SQLError(f"expected one SQL statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _ALLOWED_SQL:
        # DuckDB files INSTALL under LOAD; name the statement the user actually wrote
        words = query.lstrip().split(None, 1)
        if kind == "LOAD" and words and words[0].upper() in ("INSTALL", "FORCE"):
            kind = "INSTALL"
        raise SQLError(f"tvreg sql is read-only: {kind} statements are not allowed")
    timer = threading.Timer(timeout, con.interrupt) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        cur = con.execute(query)
        if not cur.description:
            return [], []
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise SQLError(f"query stopped after {timeout:g}s (the time limit)") from None
    except duckdb.Error as e:
        raise SQLError(_one_line(e)) from None
    finally:
        if timer is not None:
            timer.cancel()
    as_json = [i for i, d in enumerate(cur.description) if str(d[1]) == "JSON"]
    if as_json:
        rows = [tuple(json.loads(v) if i in as_json and isinstance(v, str) else v
                      for i, v in enumerate(row)) for row in rows]
    return cols, rows


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def insert_rows(con, table: str, rows: list[tuple], columns: Sequence[str] | None = None) -> None:
    """Multi-row INSERT in batches (much faster than executemany in DuckDB); into ``columns``
    (all of the table's, in order, if None)."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    into = f"{table} ({', '.join(columns)})" if columns else table
    for i in range(0, len(rows), _BATCH):
        batch = rows[i:i + _BATCH]
        con.execute(f"INSERT INTO {into} VALUES " + ",".join([one] * len(batch)),
                    [v for row in batch for v in row])


def insert_columns(con, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """The same as :func:`insert_rows` for rows of strings, integers and floats (None: NULL),
    through numpy columns DuckDB scans in one statement: 20x faster for tens of thousands of
    rows (tensor similarities of a batch pass)."""
    import numpy as np

    if not rows:
        return
    view = f"tvreg_rows_{uuid.uuid4().hex}"
    data = {}
    for name, values in zip(columns, zip(*rows, strict=True), strict=True):
        missing = [v is None for v in values]
        sample = next((v for v in values if v is not None), None)
        if isinstance(sample, str):
            data[name] = np.array(values, dtype=object)
            continue
        kind = np.int64 if isinstance(sample, int) and not isinstance(sample, bool) \
            else np.float64
        filled = np.array([0 if v is None else v for v in values], dtype=kind)
        if kind is np.float64 and np.isnan(filled).any():
            # a scanned NaN becomes NULL: keep NaN (allow_nonfinite vectors) the slow way
            insert_rows(con, table, rows, list(columns))
            return
        data[name] = np.ma.masked_array(filled, mask=missing) if any(missing) else filled
    con.register(view, data)
    try:
        names = ", ".join(columns)
        con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {view}")
    finally:
        con.unregister(view)


def _vector_row(vid: str, m: Manifest) -> tuple:
    return (vid, m.base_hash, m.arch_fingerprint, len(m.tensors), len(m.skipped), m.n_params,
            m.raw_bytes, m.stored_bytes, m.codec_label, json.dumps([s.name for s in m.skipped]))


def _tensor_rows(vid: str, m: Manifest) -> list[tuple]:
    return [(vid, t.name, t.dtype, t.source_dtype, list(t.shape), t.numel, t.nbytes,
             t.stored_nbytes, len(t.chunks), t.codecs.label, t.sha256) for t in m.tensors]


#: the columns of :func:`version_row` (migration 1; also the remote index's versions table)
VERSION_COLUMNS = ("name", "version", "vector_id", "base_hash", "arch_fingerprint", "task",
                   "dataset", "lr", "steps", "meta", "n_params", "raw_bytes", "stored_bytes",
                   "codec", "created_at", "parents", "recipe")
#: the columns of :func:`codec_columns` (migration 4; the remote index derives them on load)
CODEC_COLUMNS = ("codec_spec", "rel_l2", "cosine_to_exact")


def codec_columns(r: VersionRecord) -> tuple:
    """``(codec_spec, rel_l2, cosine_to_exact)`` from a record's recipe (docs/format.md §8.2),
    NULLs when the recipe names no codec."""
    return codec_values(r.recipe)


def codec_values(recipe: Any) -> tuple:
    """:func:`codec_columns` of a recipe (a version record's, or one read back from JSON)."""
    recipe = recipe if isinstance(recipe, dict) else {}
    spec = recipe.get("codec")
    if not isinstance(spec, str):
        return (None, None, None)
    found = recipe.get("error")
    error = found if isinstance(found, dict) else {}
    return (spec, _number(error.get("rel_l2")), _number(error.get("cosine")))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def version_row(r: VersionRecord, m: Manifest) -> tuple:
    md = r.metadata
    return (r.name, r.version, r.vector_id, r.base_hash, r.arch_fingerprint, md.task, md.dataset,
            md.lr, md.steps, json.dumps(md.meta, sort_keys=True), m.n_params, m.raw_bytes,
            m.stored_bytes, m.codec_label, timestamp(r.created_at), json.dumps(list(r.parents)),
            None if r.recipe is None else json.dumps(r.recipe, sort_keys=True))


def tag_row(t: TagRecord) -> tuple:
    return (t.name, t.tag, t.version, t.vector_id, timestamp(t.updated_at))


# --- rows of derived similarity data (tables of schema/migrations; filled by tvreg.similarity)

#: the columns tvreg.similarity fills, in the order of its rows (migrations 2 and 5)
SIMILARITY_COLUMNS = ("vector_a", "vector_b", "dot", "norm_a", "norm_b", "cosine",
                      "n_both_material", "n_sign_conflicts", "sign_conflict_rate", "computed_at",
                      "alignment", "n_matrices")
TENSOR_SIMILARITY_COLUMNS = ("vector_a", "vector_b", "tensor", "dot", "cosine", "n_both_material",
                             "n_sign_conflicts", "sign_conflict_rate", "alignment")



def forget_similarity_rows(con, vector_ids: list[str]) -> None:
    """Delete the rows of these vectors (inside a catalog transaction)."""
    for table in ("vector_stats", "tensor_stats"):
        con.execute(f"DELETE FROM {table} WHERE vector_id IN (SELECT unnest(?))", [vector_ids])
    for table in ("similarities", "tensor_similarities"):
        con.execute(f"DELETE FROM {table} WHERE vector_a IN (SELECT unnest(?)) "
                    f"OR vector_b IN (SELECT unnest(?))", [vector_ids, vector_ids])


def prune_similarity_rows(con) -> None:
    """Delete rows of vectors the catalog no longer lists (after a rebuild of the index)."""
    gone = [r[0] for r in con.execute(
        "SELECT vector_id FROM vector_stats WHERE vector_id NOT IN (SELECT vector_id FROM vectors) "
        "UNION SELECT vector_a FROM similarities "
        "WHERE vector_a NOT IN (SELECT vector_id FROM vectors) "
        "UNION SELECT vector_b FROM similarities "
        "WHERE vector_b NOT IN (SELECT vector_id FROM vectors)"
    ).fetchall()]
    if gone:
        forget_similarity_rows(con, gone)
