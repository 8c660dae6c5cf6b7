"""The remote index: a remote's versions and tags as two Parquet tables (docs/format.md §9).

``tvreg push`` rewrites ``index/versions.parquet`` and ``index/tags.parquet`` after its records
and tags, so ``ls --remote`` and ``sql --remote`` answer with one or two reads and no tensors,
and remotes that cannot list keys (HTTP) still say what they hold. The columns are those of
the catalog's ``versions`` and ``tags`` tables (``schema/remote_index.sql``). The index is
derived data: the records and tags are the truth, and each push rebuilds the index from a
listing of them (reusing the rows of records it has seen, which never change).
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol

import duckdb

from tvreg.errors import FormatError, InvalidInput, NotFound, TvregError
from tvreg.format.manifest import Manifest
from tvreg.format.records import record_key, tag_key
from tvreg.storage.documents import (
    or_none,
    parse_record_key,
    read_many,
    read_record,
    read_tag,
    record_keys,
    tag_keys,
)
from tvreg.stores import MissingKey, Store
from tvreg.stores.base import is_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.records import VersionRecord


class Source(Protocol):
    """What the index needs of a remote (a :class:`tvreg.remote.config.Remote`)."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def listable(self) -> bool: ...

    def store(self) -> Store: ...

VERSIONS_KEY = "index/versions.parquet"
TAGS_KEY = "index/tags.parquet"
_TABLES = {"versions": VERSIONS_KEY, "tags": TAGS_KEY}


def _ddl() -> str:
    return (importlib.resources.files("tvreg.schema") / "remote_index.sql").read_text("utf-8")


def _stored_columns() -> str:
    """The ``versions`` columns ``versions.parquet`` holds (the catalog's, without the codec
    columns derived from ``recipe``)."""
    from tvreg.catalog.db import VERSION_COLUMNS

    return ", ".join(VERSION_COLUMNS)


def _derive_codec_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ``codec_spec``, ``rel_l2`` and ``cosine_to_exact`` from ``recipe`` with the very
    function the catalog fills its own with (:func:`tvreg.catalog.db.codec_values`)."""
    import json

    from tvreg.catalog.db import CODEC_COLUMNS, codec_values, insert_rows

    rows = []
    for name, version, recipe in con.execute(
            "SELECT name, version, recipe FROM versions WHERE recipe IS NOT NULL").fetchall():
        values = codec_values(json.loads(recipe))
        if values[0] is not None:
            rows.append((name, version, *values))
    if not rows:
        return
    con.execute("CREATE TEMP TABLE derived (name VARCHAR, version INTEGER, codec_spec VARCHAR, "
                "rel_l2 DOUBLE, cosine_to_exact DOUBLE)")
    insert_rows(con, "derived", rows)
    con.execute(f"UPDATE versions SET {', '.join(f'{c} = d.{c}' for c in CODEC_COLUMNS)} "
                "FROM derived d WHERE versions.name = d.name AND versions.version = d.version")
    con.execute("DROP TABLE derived")


def _insert_versions(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    from tvreg.catalog.db import VERSION_COLUMNS, insert_rows

    insert_rows(con, "versions", rows, VERSION_COLUMNS)


@dataclass
class Index:
    """Rows in the column order of ``schema/remote_index.sql``."""

    versions: list[tuple] = field(default_factory=list)
    tags: list[tuple] = field(default_factory=list)
    #: the record keys the store listed when this index was built (not written)
    listed: frozenset[str] = frozenset()

    def record_keys(self) -> list[str]:
        return [record_key(row[0], row[1]) for row in self.versions]

    def tag_keys(self) -> list[str]:
        return [tag_key(row[0], row[1]) for row in self.tags]


def records_of(index: Index) -> dict[str, VersionRecord]:
    """The version records an index describes, by key. They are what a push of those records
    wrote, but unverified (no seal): use them as hints, e.g. to skip re-reading records that
    an unchanged push would only compare with its own (docs/format.md §9.2)."""
    import datetime as _dt
    import json

    from tvreg.format.records import Metadata, VersionRecord

    out = {}
    for row in index.versions:
        (name, version, vid, base, arch, task, dataset, lr, steps, meta, _n, _raw, _stored,
         _codec, created, parents, recipe) = row
        try:
            if isinstance(created, _dt.datetime):
                created = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            rec = VersionRecord(name, version, vid, base, arch,
                                Metadata(task, dataset, lr, steps, json.loads(meta)), created,
                                tuple(json.loads(parents)),
                                None if recipe is None else json.loads(recipe))
        except (TypeError, ValueError, TvregError):
            continue  # a row that is not a valid record is no hint
        out[rec.key] = rec
    return out


def load_into(con: duckdb.DuckDBPyConnection, store: Store) -> bool:
    """Create the index's tables (and the ``latest`` view) in ``con`` from the remote's
    Parquet files; False (tables left empty) when the remote has no index."""
    con.execute(_ddl())
    con.execute("CREATE VIEW latest AS SELECT * FROM versions QUALIFY "
                "row_number() OVER (PARTITION BY name ORDER BY version DESC) = 1")
    with tempfile.TemporaryDirectory(prefix="tvreg-index-") as tmp:
        found = False
        for table, key in _TABLES.items():
            try:
                data = store.read(key)
            except MissingKey:
                continue
            path = os.path.join(tmp, table + ".parquet")
            with open(path, "wb") as f:
                f.write(data)
            into = f"versions ({_stored_columns()})" if table == "versions" else table
            try:
                con.execute(f"INSERT INTO {into} SELECT * FROM read_parquet(?)", [path])
            except duckdb.Error:
                # DuckDB's text quotes our SQL (INSERT … read_parquet(?)): say what it means
                raise FormatError(f"the index of {store} is unreadable: {key} is corrupt or not "
                                  "a tvreg index table; push again to rewrite the index")\
                    from None
            found = True
    _derive_codec_columns(con)
    return found


def read(store: Store) -> Index | None:
    """The remote's index, or None when it has none."""
    con = duckdb.connect()
    try:
        if not load_into(con, store):
            return None
        return Index(con.execute(f"SELECT {_stored_columns()} FROM versions "
                                 "ORDER BY name, version").fetchall(),
                     con.execute("SELECT * FROM tags ORDER BY name, tag").fetchall())
    finally:
        con.close()


def write(store: Store, index: Index) -> None:
    """Write both tables (versions first: a tag in the index always names an indexed version)."""
    from tvreg.catalog.db import insert_rows

    con = duckdb.connect()
    try:
        con.execute(_ddl())
        _insert_versions(con, index.versions)
        insert_rows(con, "tags", index.tags)
        with tempfile.TemporaryDirectory(prefix="tvreg-index-") as tmp:
            for table, key in _TABLES.items():
                path = os.path.join(tmp, table + ".parquet")
                columns = _stored_columns() if table == "versions" else "*"
                con.execute(f"COPY (SELECT {columns} FROM {table} ORDER BY ALL) TO '{path}' "
                            "(FORMAT parquet, COMPRESSION zstd)")
                with open(path, "rb") as f:
                    store.write(key, f.read())
    finally:
        con.close()


def build(store: Store, manifest_of: Callable[[str], Manifest], *,
          previous: Index | None = None, keys: list[str] | None = None,
          workers: int = 16) -> Index:
    """The index of what ``store`` holds now (``keys``: its record keys, if just listed). Rows
    of ``previous`` are reused for the records it has (records never change); only new records
    and their manifests are read."""
    from tvreg.catalog.db import tag_row, version_row

    keys = record_keys(store) if keys is None else keys
    known = {(row[0], row[1]): row for row in (previous.versions if previous else [])}
    rows = [known[nv] for nv in map(parse_record_key, keys) if nv in known]
    fresh = [k for k in keys if parse_record_key(k) not in known]
    records = [r for r in read_many(or_none(lambda k: read_record(store, k)), fresh,
                                    workers=workers) if r is not None]
    vids = sorted({r.vector_id for r in records})
    manifests = dict(zip(vids, read_many(or_none(manifest_of), vids, workers=workers), strict=True))
    rows += [version_row(r, m) for r in records if (m := manifests[r.vector_id]) is not None]
    held = {(row[0], row[1], row[2]) for row in rows}
    tags = [t for t in read_many(or_none(lambda k: read_tag(store, k)), tag_keys(store),
                                 workers=workers)
            if t is not None and (t.name, t.version, t.vector_id) in held]
    return Index(sorted(rows, key=lambda row: (row[0], row[1])),
                 sorted((tag_row(t) for t in tags), key=lambda row: (row[0], row[1])),
                 frozenset(keys))


def refresh(store: Store, manifest_of: Callable[[str], Manifest], *,
            previous: Index | None | bool = True, keys: list[str] | None = None,
            workers: int = 16, rounds: int = 3) -> Index:
    """Rebuild the index after a push and write it if it changed. ``previous``: the index as
    read before (True: read it now); ``keys``: the record keys, if listed since the last write.
    If records appeared while it was written (a concurrent push), it is rebuilt again, up to
    ``rounds`` times, so the last writer's index holds what both pushed."""
    if previous is True:
        try:
            previous = read(store)
        except TvregError:
            previous = None  # unreadable: rebuilt from the records
    for _ in range(max(1, rounds)):
        index = build(store, manifest_of, previous=previous or None, keys=keys, workers=workers)
        if previous and (index.versions, index.tags) == (previous.versions, previous.tags):
            return index  # unchanged: nothing to write
        write(store, index)
        keys = None
        if set(record_keys(store)) == index.listed:
            break
        previous = index
    return index


def require_content(remote: Source, store: Store) -> None:
    """A remote that holds nothing of tvreg's is most often a wrong URL or bucket: say so."""
    if store.exists(VERSIONS_KEY) or (remote.listable and record_keys(store)):
        return
    raise NotFound(f"remote {remote.name} ({remote.url}) holds no tvreg data: nothing was pushed "
                   "there, or the URL, bucket or endpoint is wrong")


def remote_sql(remote: Source, query: str) -> tuple[list[str], list[tuple]]:
    """A user query on a remote's index (``versions``, ``tags``, ``latest``), in a sandboxed
    in-memory database. A listable remote without an index (never pushed to by this tvreg)
    is indexed on the fly from its records, without writing."""
    from tvreg.catalog.db import insert_rows, sandbox, user_query
    from tvreg.storage.objects import ObjectDB

    store = remote.store()
    require_content(remote, store)
    con = duckdb.connect()
    try:
        if not load_into(con, store):
            if not remote.listable:
                raise InvalidInput(f"remote {remote.name} ({remote.url}) has no index "
                                   f"({VERSIONS_KEY}): push to it first")
            objects = ObjectDB(store)
            index = build(store, lambda vid: Manifest.from_bytes(objects.get(vid)))
            _insert_versions(con, index.versions)
            _derive_codec_columns(con)
            insert_rows(con, "tags", index.tags)
        sandbox(con)
        return user_query(con, query)
    finally:
        con.close()


class IndexListedStore(Store):
    """A remote that cannot list its keys (HTTP): reads go to it, and the keys of its version
    records and tags come from its index (read once). Read-only."""

    writable = False
    supports_exclusive_create = False

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self._index: Index | None = None

    def __repr__(self) -> str:
        return repr(self.inner)

    def __str__(self) -> str:
        return self.label or str(self.inner)

    def _keys(self) -> list[str]:
        if self._index is None:
            index = read(self.inner)
            if index is None:
                raise InvalidInput(f"{self.inner} has no index ({VERSIONS_KEY}): it cannot be "
                                   "listed over HTTP; push to it (through a writable URL) first")
            self._index = index
        # a row whose name is no valid key (a damaged or hostile index) names nothing
        return [k for k in self._index.record_keys() + self._index.tag_keys() if is_key(k)]

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix.split("/", 1)[0] not in ("refs", "tags"):
            raise InvalidInput(f"{self.inner} cannot list {prefix or 'its keys'} over HTTP")
        return iter([k for k in self._keys() if k == prefix or k.startswith(prefix + "/")])

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def mtime(self, key: str) -> float:
        return self.inner.mtime(key)

    def _read_only(self) -> NoReturn:
        raise InvalidInput(f"{self.inner} is read-only")

    def write(self, key: str, data: bytes) -> None:
        self._read_only()

    def write_new(self, key: str, data: bytes) -> bool:
        self._read_only()

    def write_file(self, key: str, path: str) -> bool:
        self._read_only()

    def delete(self, key: str) -> None:
        self._read_only()

    def touch(self, key: str) -> None:
        self._read_only()


def remote_ls(remote: Source, all_versions: bool = False) -> list[dict]:
    """``ls`` of a remote from its index, with each version's ``base_names`` (the remote's
    base names, where its store can list them; else empty) as the local ``ls`` has them."""
    from tvreg.repo.queries import ls_query
    from tvreg.storage.documents import base_name_keys, or_none, read_base_name, read_many

    cols, rows = remote_sql(remote, ls_query(all_versions))
    store = remote.store()
    names: dict[str, list[str]] = {}
    try:
        read = or_none(lambda k: read_base_name(store, k))
        for doc in read_many(read, base_name_keys(store)):
            if doc is not None:
                names.setdefault(doc.base_hash, []).append(doc.name)
    except (TvregError, OSError):  # a store that cannot list them: the rows say none
        names = {}
    out = [dict(zip(cols, row, strict=True)) for row in rows]
    for r in out:
        r["base_names"] = sorted(names.get(r["base_hash"], []))
    return out
