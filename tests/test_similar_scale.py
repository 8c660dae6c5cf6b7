"""`similar` over many vectors: the two-stage ranking (coarse side file, then full sketches),
the coarse side file itself, and the bookkeeping of vectors the sketch file lacks or keeps
after they left the catalog. Small data, no timings (benchmarks/bench_scale.py has those)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import tvreg
from tvreg.catalog import sketches as sketch_index
from tvreg.similarity import compute as similarity

D = sketch_index.SKETCH_DIM


def _records(n: int, seed: int = 0) -> list[tuple[str, float, np.ndarray]]:
    """n sketches: a shared direction with weights spread over 0..0.95, plus noise; a few
    repeated as records of the same vector (as the file allows)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D)
    rows = []
    for i in range(n):
        a = 0.95 * (i % 97) / 96
        v = a * shared + np.sqrt(1 - a * a) * rng.standard_normal(D)
        norm = float(np.exp(rng.normal()))
        rows.append((hashlib.sha256(f"v{i}".encode()).hexdigest(), norm,
                     (v / np.linalg.norm(v) * norm).astype(np.float32)))
    return rows


@pytest.fixture
def sketch_file(tmp_path):
    root = str(tmp_path)
    sketch_index.append(root, "b" * 64, "a" * 64, _records(600))
    return root


def _full_ranking(table: np.ndarray, qi: int) -> list[int]:
    q = np.asarray(table["sketch"][qi], dtype=np.float32)
    key = -(table["sketch"] @ q).astype(np.float64) / table["norm"]
    return np.lexsort((table["vector_id"], key)).tolist()


def test_coarse_file_is_the_folded_unit_sketch(sketch_file):
    table = sketch_index.load(sketch_file, "b" * 64, "a" * 64)
    coarse = sketch_index.load_coarse(sketch_file, "b" * 64, "a" * 64, table)
    assert coarse is not None and len(coarse) == len(table) == 600
    assert np.array_equal(coarse["vector_id"], table["vector_id"])
    s = np.asarray(table["sketch"], dtype=np.float64)
    want = s.reshape(600, 512, 8).sum(axis=2) / table["norm"][:, None]
    assert np.allclose(coarse["sketch"], want, rtol=1e-6, atol=1e-6)
    # a coarse sketch is a CountSketch of 512 buckets: it estimates cosines too
    est = coarse["sketch"] @ coarse["sketch"][96]
    full = (s @ s[96]) / (table["norm"] * table["norm"][96])
    assert np.corrcoef(est, full)[0, 1] > 0.95


def test_coarse_file_follows_appends_and_is_replaced_when_stale(sketch_file):
    root, b, a = sketch_file, "b" * 64, "a" * 64
    assert len(sketch_index.load_coarse(root, b, a)) == 600
    more = _records(650, seed=1)[600:]
    sketch_index.append(root, b, a, more)
    file = sketch_index.coarse_path(root, b, a)
    # the append kept the side file in step: no query has to fold the new records
    assert os.path.getsize(file) == 650 * sketch_index.COARSE.itemsize
    coarse = sketch_index.load_coarse(root, b, a)
    assert len(coarse) == 650 and coarse["vector_id"][-1].decode() == more[-1][0]
    with open(file, "ab") as f:  # a torn record of an interrupted extension
        f.write(b"\x02" * 100)
    assert len(sketch_index.load_coarse(root, b, a)) == 650
    # a side file of other records (the sketch file rewritten): replaced, not trusted
    with open(file, "r+b") as f:
        f.write(b"f" * 64)
    coarse = sketch_index.load_coarse(root, b, a)
    table = sketch_index.load(root, b, a)
    assert np.array_equal(coarse["vector_id"], table["vector_id"])
    assert os.path.getsize(file) == 650 * sketch_index.COARSE.itemsize


def test_two_stages_equal_the_full_scan_when_candidates_cover_everything(sketch_file):
    table = sketch_index.load(sketch_file, "b" * 64, "a" * 64)
    coarse = sketch_index.load_coarse(sketch_file, "b" * 64, "a" * 64, table)
    for qi in (0, 96, 311):
        full = _full_ranking(table, qi)
        rows, scored = similarity._rank_sketches(table, None, qi, 600)
        assert rows.tolist() == full and scored == 600
        # coarse stage on, but keeping every row: the same order
        rows, _ = similarity._rank_sketches(table, coarse, qi, 600, candidates=599)
        assert rows.tolist()[:50] == full[:50]
        # a narrow first stage: 60 candidates scored, the same answer every time
        rows, scored = similarity._rank_sketches(table, coarse, qi, 10, candidates=60)
        assert scored == 60 and len(rows) >= 10
        again, _ = similarity._rank_sketches(table, coarse, qi, 10, candidates=60)
        assert np.array_equal(rows, again)
        if qi == 96:  # strong neighbours (cosines ~0.9) survive it
            assert len(set(rows.tolist()[:10]) & set(full[:10])) >= 9


def _registry_with_rows(tmp_path, zoo, n: int):
    """A registry of the toy zoo plus n synthetic vectors of its base: catalog rows and sketch
    records, correlated with `sentiment` (the bench's recipe, small)."""
    reg = tvreg.open(tmp_path / "r")
    for task, path in sorted(zoo.finetuned.items()):
        reg.create(task, zoo.base, path, **zoo.meta[task])
    vid = reg.resolve_ref("sentiment")[1]
    m = reg.manifest(vid)
    with reg.catalog.reader() as con:
        q = np.asarray(con.execute("SELECT sketch FROM vector_stats WHERE vector_id = ?",
                                   [vid]).fetchone()[0], dtype=np.float64)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = 0.9 * (i / n) ** 2
        v = a * q / np.linalg.norm(q) + np.sqrt(1 - a * a) * rng.standard_normal(D) / np.sqrt(D)
        rows.append((hashlib.sha256(f"syn{i}".encode()).hexdigest(), 1.0, v.astype(np.float32)))
    with reg.catalog.writer() as con:
        for i, (v, norm, sk) in enumerate(rows):
            con.execute("INSERT INTO vectors VALUES (?, ?, ?, 1, 0, 10, 40, 20, 'raw', '[]')",
                        [v, m.base_hash, m.arch_fingerprint])
            con.execute("INSERT INTO versions (name, version, vector_id, base_hash, "
                        "arch_fingerprint, meta, n_params, raw_bytes, stored_bytes, codec, "
                        "created_at, parents) VALUES (?, 1, ?, ?, ?, '{}', 10, 40, 20, 'raw', "
                        "now()::TIMESTAMP, '[]')", [f"syn{i:04d}", v, m.base_hash,
                                                     m.arch_fingerprint])
            con.execute("INSERT INTO vector_stats VALUES (?, ?, ?, ?, 10, 2, ?, "
                        "now()::TIMESTAMP)", [v, m.base_hash, m.arch_fingerprint, norm,
                                              sk.tolist()])
    sketch_index.append(reg.root, m.base_hash, m.arch_fingerprint, rows)
    return reg, m


@pytest.mark.parametrize("k", [1, 5, 20])
def test_similar_two_stages_equals_one(zoo, tmp_path, monkeypatch, k):
    reg, _ = _registry_with_rows(tmp_path, zoo, 120)
    one = reg.similar("sentiment", k=k)
    monkeypatch.setattr(similarity, "COARSE_CANDIDATES", 40)
    monkeypatch.setattr(similarity, "COARSE_PER_RESULT", 2)
    two = reg.similar("sentiment", k=k)
    assert [r["ref"] for r in two] == [r["ref"] for r in one]
    assert [r["cosine"] for r in two] == pytest.approx([r["cosine"] for r in one], abs=1e-9)
    assert reg.similar("sentiment", k=k) == two  # deterministic
    # exact pairs (topic, toxicity) still come exact, ranked among the estimates
    both = reg.similar("sentiment", k=200)
    assert {r["name"] for r in both if r["exact"]} == {"topic", "toxicity"}
    assert len(both) == 122


def test_vectors_missing_from_the_file_and_gone_from_the_catalog(zoo, tmp_path, monkeypatch):
    reg, m = _registry_with_rows(tmp_path, zoo, 60)
    monkeypatch.setattr(similarity, "COARSE_CANDIDATES", 20)
    monkeypatch.setattr(similarity, "COARSE_PER_RESULT", 1)
    before = reg.similar("sentiment", k=62)
    best = before[0]
    assert not best["exact"] and len(before) == 62
    # the best vector leaves the catalog; its sketch record stays in the file
    with reg.catalog.writer() as con:
        for table in ("versions", "vector_stats", "vectors"):
            con.execute(f"DELETE FROM {table} WHERE vector_id = ?", [best["vector_id"]])
    after = reg.similar("sentiment", k=5)
    assert best["vector_id"] not in {r["vector_id"] for r in after}
    assert [r["ref"] for r in after] == [r["ref"] for r in before[1:6]]
    # the second best loses its record in the file: estimated from the catalog instead
    file = sketch_index.path(reg.root, m.base_hash, m.arch_fingerprint)
    table = np.fromfile(file, dtype=sketch_index.RECORD)
    keep = table[table["vector_id"] != before[1]["vector_id"].encode()]
    os.replace(file, file + ".old")
    keep.tofile(file)
    again = reg.similar("sentiment", k=5)
    assert [r["ref"] for r in again] == [r["ref"] for r in after]
    assert again[0]["cosine"] == pytest.approx(after[0]["cosine"], abs=1e-6)
