"""The remote index (schema/remote_index.sql, written by push as Parquet) against the catalog
that the real migrations create: its ``versions`` and ``tags`` columns are the catalog's tables
of the same names (docs/format.md §9), names, types and nullability, in order.

The catalog's last three ``versions`` columns (migration 4: the lossy codec a version was
stored with and its error) are derived from the record's recipe; ``versions.parquet`` holds
the recipe, and a reader derives them when it loads the file, as the catalog does."""

from __future__ import annotations

import pathlib

import duckdb
import pytest

import tvreg
from tvreg.catalog.db import VERSION_COLUMNS
from tvreg.remote.index import TAGS_KEY, VERSIONS_KEY, remote_sql

#: catalog ``versions`` columns derived from ``recipe``: not in the Parquet file, computed on load
DERIVED = ("codec_spec", "rel_l2", "cosine_to_exact")


def _described(columns: list[str], rows: list[tuple]) -> list[tuple]:
    """(name, type, nullable) of each column of a DESCRIBE, in order."""
    at = {c: columns.index(c) for c in ("column_name", "column_type", "null")}
    return [(r[at["column_name"]], r[at["column_type"]], r[at["null"]]) for r in rows]


@pytest.fixture
def pushed(tmp_path, zoo):
    """(registry, remote): one real vector and a tag, pushed to a folder remote."""
    root = tmp_path / "pushed"
    reg = tvreg.open(root / "registry")
    task, path = next(iter(zoo.finetuned.items()))
    reg.create(task, zoo.base, path, **zoo.meta[task])
    reg.tag(f"{task}@1", "prod")
    reg.recode(f"{task}@1", "int8", name="lossy", similarities=False)
    remote = reg.add_remote("origin", str(root / "remote"))
    reg.push()
    yield reg, remote
    reg.close()


def _tables(pushed, table: str, tmp: pathlib.Path) -> tuple[list, list, list]:
    """DESCRIBE ``table`` in the catalog, in the remote index as ``sql --remote`` loads it, and
    of the Parquet file push wrote (which keeps names and types, not NOT NULL)."""
    reg, remote = pushed
    catalog = _described(*reg.catalog.sql(f"DESCRIBE {table}"))
    index = _described(*remote_sql(remote, f"DESCRIBE {table}"))
    key = {"versions": VERSIONS_KEY, "tags": TAGS_KEY}[table]
    path = tmp / f"{table}.parquet"
    path.write_bytes(remote.store().read(key))
    con = duckdb.connect()
    try:
        rel = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)])
        parquet = _described([d[0] for d in rel.description], rel.fetchall())
    finally:
        con.close()
    return catalog, index, parquet


def test_remote_index_versions_columns_are_the_catalogs(pushed, tmp_path):
    catalog, index, parquet = _tables(pushed, "versions", tmp_path)
    assert index == catalog
    assert [c[:2] for c in parquet] == [c[:2] for c in index[:len(parquet)]]
    assert tuple(c[0] for c in parquet) == VERSION_COLUMNS  # the rows push writes (version_row)
    assert tuple(c[0] for c in index[len(parquet):]) == DERIVED


def test_the_derived_columns_hold_the_catalogs_values(pushed):
    reg, remote = pushed
    query = ("SELECT name, version, codec_spec, rel_l2, cosine_to_exact FROM versions "
             "ORDER BY name, version")
    local = [tuple(r.values()) for r in reg.sql(query)]
    assert [r[2] for r in local] == ["int8", None]  # lossy@1 recoded, the other lossless
    assert remote_sql(remote, query)[1] == local
    assert [tuple(r.values()) for r in reg.remote_sql("origin", query)] == local


def test_remote_index_tags_columns_are_the_catalogs(pushed, tmp_path):
    catalog, index, parquet = _tables(pushed, "tags", tmp_path)
    assert index == catalog
    assert [c[:2] for c in parquet] == [c[:2] for c in index]
