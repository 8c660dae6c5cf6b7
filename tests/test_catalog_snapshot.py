"""The catalog read from an in-memory copy (``CatalogSnapshot``, what ``tvreg serve`` reads):
same answers as the file, copied again when the file changes and only then, sandboxed, never
holding the file, safe under many threads; and user SQL with row and time limits."""

from __future__ import annotations

import subprocess
import sys
import threading

import duckdb
import pytest

import tvreg
from tvreg.catalog.db import user_query
from tvreg.catalog.snapshot import CatalogSnapshot
from tvreg.errors import SQLError


@pytest.fixture
def snap_reg(filled):
    filled.repo.read_catalog_from_memory()
    assert isinstance(filled.catalog, CatalogSnapshot)
    return filled


QUERIES = ["SELECT name, version, vector_id, meta, parents FROM versions ORDER BY 1, 2",
           "SELECT * FROM latest ORDER BY name",
           "SELECT vector_a, vector_b, cosine, alignment FROM similarities ORDER BY 1, 2",
           "SELECT * FROM similar_versions ORDER BY 1, 2, 3, 4",
           "SELECT vector_id, name, shape FROM tensors ORDER BY 1, 2"]


def test_same_answers_as_the_file(snap_reg, reg_path):
    with tvreg.open(reg_path) as plain:
        for q in QUERIES:
            assert snap_reg.sql_table(q) == plain.sql_table(q), q
        assert snap_reg.similar("sentiment", 5) == plain.similar("sentiment", 5)
        assert snap_reg.log("topic") == plain.log("topic")


def test_copied_again_when_the_file_changes_and_only_then(snap_reg, zoo):
    snap = snap_reg.catalog
    first = snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"]
    copies = snap.copies
    for _ in range(5):
        snap_reg.sql("SELECT count(*) FROM versions")
    assert snap.copies == copies  # unchanged file: the same copy
    # a write through the same registry goes to the file; the next read copies it again
    snap_reg.create("extra", zoo.base, zoo.finetuned["topic"])
    assert snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"] == first + 1
    assert snap.copies > copies


def test_a_write_by_another_process_is_seen(snap_reg, reg_path, zoo):
    before = snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"]
    code = ("import tvreg, sys; r = tvreg.open(sys.argv[1]); "
            "r.create('other', sys.argv[2], sys.argv[3]); r.close()")
    subprocess.run([sys.executable, "-c", code, str(reg_path), str(zoo.base),
                    str(zoo.finetuned["toxicity"])], check=True, timeout=120)
    assert snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"] == before + 1


def test_the_copy_is_sandboxed(snap_reg, tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with snap_reg.catalog.reader() as con:
        with pytest.raises(duckdb.Error, match="disabled|Permission"):
            con.execute(f"SELECT * FROM read_csv('{tmp_path / 'x.csv'}')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
    with pytest.raises(SQLError, match="not allowed"):
        snap_reg.sql("DELETE FROM versions")


def test_the_file_is_not_held_between_reads(snap_reg, reg_path):
    """A writer in another process opens the file at once: the snapshot holds no connection
    to it (DuckDB would refuse a read-write open while one is open elsewhere)."""
    snap_reg.sql("SELECT count(*) FROM versions")
    code = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "c.execute('CREATE TABLE probe (x INT)'); c.execute('DROP TABLE probe'); c.close()")
    subprocess.run([sys.executable, "-c", code, str(reg_path / "catalog.duckdb")], check=True,
                   timeout=60)


def test_many_threads_read_while_a_process_writes(snap_reg, reg_path, zoo):
    errors: list[BaseException] = []
    counts: list[list[int]] = []
    stop = threading.Event()

    def reader():
        seen: list[int] = []
        counts.append(seen)
        while not stop.is_set():
            try:
                seen.append(snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"])
                snap_reg.sql_table("SELECT * FROM latest", max_rows=10, timeout=5)
                snap_reg.similar("topic", 3)
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    code = ("import tvreg, sys; r = tvreg.open(sys.argv[1]); "
            "[r.create(f'w{i}', sys.argv[2], sys.argv[3], task=str(i)) for i in range(3)]; "
            "r.close()")
    try:
        subprocess.run([sys.executable, "-c", code, str(reg_path), str(zoo.base),
                        str(zoo.finetuned["sentiment"])], check=True, timeout=300)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    # a thread never sees the catalog go back (other threads may read the previous copy while
    # one thread copies the file again)
    assert all(seen and seen == sorted(seen) for seen in counts)
    assert max(seen[-1] for seen in counts) == 6
    assert snap_reg.sql("SELECT count(*) AS n FROM versions")[0]["n"] == 6


def test_user_query_row_and_time_limits():
    con = duckdb.connect(":memory:")
    cols, rows = user_query(con, "SELECT * FROM range(100)", max_rows=7)
    assert cols == ["range"] and len(rows) == 8  # one more than asked: the caller sees a cut
    cols, rows = user_query(con, "SELECT * FROM range(5)", max_rows=7)
    assert len(rows) == 5
    with pytest.raises(SQLError, match=r"stopped after 0.2s \(the time limit\)"):
        user_query(con, "SELECT count(*) FROM range(10000000000000) a, range(10) b",
                   timeout=0.2)
    assert user_query(con, "SELECT 42 AS x", timeout=5) == (["x"], [(42,)])  # still usable
