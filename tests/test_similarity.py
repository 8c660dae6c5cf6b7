"""Precomputed similarities on real stored vectors of real fine-tuned models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tvreg
from tvreg.errors import InvalidInput, NotFound
from tvreg.similarity import compute as similarity
from tvreg.similarity import upkeep
from tvreg.testing import TASKS, finetune, make_toy_zoo, pretrain, save_safetensors

TABLES = ("vector_stats", "tensor_stats", "similarities", "tensor_similarities")


def stored_vector(reg, ref) -> dict[str, np.ndarray]:
    """The vector as stored (float32 deltas), in float64, by tensor name."""
    return {n: t.double().reshape(-1).numpy() for n, t in reg.get(ref).state_dict().items()}


def table(reg, name: str) -> list[tuple]:
    cols = {"vector_stats": "vector_id, base_hash, arch_fingerprint, norm, n_params, n_material, sketch",
            "similarities": "vector_a, vector_b, dot, norm_a, norm_b, cosine, n_both_material, "
                            "n_sign_conflicts, sign_conflict_rate"}.get(name, "*")
    with reg.catalog.reader() as con:
        return sorted(con.execute(f"SELECT {cols} FROM {name}").fetchall())


def test_cosines_match_numpy_on_stored_vectors(filled):
    refs = ["sentiment", "topic", "toxicity"]
    vecs = {r: stored_vector(filled, r) for r in refs}
    ids = {r: filled.get(r).vector_id for r in refs}
    flat = {r: np.concatenate([vecs[r][n] for n in sorted(vecs[r])]) for r in refs}
    rows = {(r["vector_a"], r["vector_b"]): r for r in filled.sql("SELECT * FROM similarities")}
    assert len(rows) == 3
    for i, a in enumerate(refs):
        for b in refs[i + 1:]:
            key = tuple(sorted((ids[a], ids[b])))
            row = rows[key]
            want = flat[a] @ flat[b] / (np.linalg.norm(flat[a]) * np.linalg.norm(flat[b]))
            assert abs(row["cosine"] - want) < 1e-9
            assert abs(row["dot"] - flat[a] @ flat[b]) < 1e-9 * np.linalg.norm(flat[a]) * np.linalg.norm(flat[b])
            # per tensor, and the sign conflicts among parameters material in both
            per_tensor = {r["tensor"]: r for r in filled.sql(
                f"SELECT * FROM tensor_similarities WHERE vector_a = '{key[0]}' AND vector_b = '{key[1]}'")}
            assert set(per_tensor) == set(vecs[a])
            both = conflicts = 0
            for n, xa in vecs[a].items():
                xb = vecs[b][n]
                ta = similarity.material_threshold(xa.astype(np.float32))
                tb = similarity.material_threshold(xb.astype(np.float32))
                ma = (np.abs(xa) >= ta) & (xa != 0)
                mb = (np.abs(xb) >= tb) & (xb != 0)
                nb = int(np.sum(ma & mb))
                nc = int(np.sum(ma & mb & (np.sign(xa) != np.sign(xb))))
                both, conflicts = both + nb, conflicts + nc
                t = per_tensor[n]
                assert (t["n_both_material"], t["n_sign_conflicts"]) == (nb, nc)
                na, nbn = np.linalg.norm(xa), np.linalg.norm(xb)
                if na and nbn:
                    assert abs(t["cosine"] - xa @ xb / (na * nbn)) < 1e-9
            assert (row["n_both_material"], row["n_sign_conflicts"]) == (both, conflicts)
            assert row["sign_conflict_rate"] == pytest.approx(conflicts / both, abs=0)


def test_norms_and_thresholds_match_numpy(filled):
    vid = filled.get("topic").vector_id
    vec = stored_vector(filled, "topic")
    stats = {r["tensor"]: r for r in filled.sql(f"SELECT * FROM tensor_stats WHERE vector_id = '{vid}'")}
    for n, x in vec.items():
        assert abs(stats[n]["norm"] - np.linalg.norm(x)) < 1e-9 * max(1.0, np.linalg.norm(x))
        mags = np.sort(np.abs(x))
        k = min(x.size - 1, int(x.size * 0.8))
        if x.size <= similarity.THRESHOLD_SAMPLE:  # exact percentile on small tensors
            assert stats[n]["threshold"] == mags[k]
    total = np.linalg.norm(np.concatenate(list(vec.values())))
    [row] = filled.sql(f"SELECT norm FROM vector_stats WHERE vector_id = '{vid}'")
    assert abs(row["norm"] - total) < 1e-9 * total


def same_values(got: list[tuple], want: list[tuple], rel: float = 1e-12) -> bool:
    """Rows equal, floats to ``rel`` (a batch pass sums in another order than an insert's pair
    pass), everything else exactly."""
    def close(a, b) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return a == b or abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        return a == b
    return len(got) == len(want) and all(close(g, w) for g, w in zip(got, want))


def test_insert_order_and_rebuild_do_not_change_anything(zoo, tmp_path):
    tasks = list(zoo.finetuned)
    regs = []
    for order in (tasks, tasks[::-1]):
        reg = tvreg.open(tmp_path / f"reg-{len(regs)}")
        for task in order:
            reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task])
        regs.append(reg)
    for name in TABLES:
        first = [r for r in table(regs[0], name)]
        assert first and first == table(regs[1], name), name
    before = {name: table(regs[0], name) for name in TABLES}
    counts = regs[0].rebuild_similarities()
    assert counts == {"vectors": 3, "pairs": 3}
    for name in TABLES:  # the batch pass: the same values but for the last bits of its sums
        assert same_values(table(regs[0], name), before[name], rel=1e-12), name
    assert table(regs[0], "tensor_stats") == before["tensor_stats"]  # thresholds, norms: exact
    assert regs[0].update_similarities() == {"vectors": 0, "pairs": 0}  # idempotent


def test_similar_and_matrix(filled):
    rows = filled.similar("sentiment", k=5)
    assert [r["ref"] for r in rows] == sorted((r["ref"] for r in rows),
                                              key=lambda ref: -next(x["cosine"] for x in rows if x["ref"] == ref))
    assert {r["ref"] for r in rows} == {"topic@1", "toxicity@1"}
    assert all(r["exact"] and -1 <= r["cosine"] <= 1 for r in rows)
    assert len(filled.similar("sentiment", k=1)) == 1
    with pytest.raises(InvalidInput):
        filled.similar("sentiment", k=0)
    with pytest.raises(NotFound):
        filled.similar("nope")
    m = filled.similarity_matrix()
    assert m.labels == ["sentiment@1", "topic@1", "toxicity@1"]
    assert np.allclose(np.diag(m.values), 1.0) and np.allclose(m.values, m.values.T)
    by_ref = {r["ref"]: r["cosine"] for r in rows}
    assert m.values[0, 1] == by_ref["topic@1"] and m.values[0, 2] == by_ref["toxicity@1"]
    assert json.loads(json.dumps(m.to_json()))["labels"] == m.labels
    # SQL: the view has both directions
    got = filled.sql("SELECT other_name FROM similar_versions WHERE name = 'topic' ORDER BY 1")
    assert [r["other_name"] for r in got] == ["sentiment", "toxicity"]


def test_matrix_skips_refs_of_another_base(filled, tmp_path):
    other = make_toy_zoo(tmp_path / "other", tasks=("topic",), seed=1)
    filled.create("other-topic", other.base, other.finetuned["topic"])
    m = filled.similarity_matrix(["sentiment", "other-topic", "topic"])
    assert m.labels == ["sentiment@1", "topic@1"]
    assert [s["ref"] for s in m.skipped] == ["other-topic@1"]
    assert "another base model" in m.skipped[0]["reason"]
    # NAME@N refs are read from the catalog instead: the same matrix
    by_version = filled.similarity_matrix(["sentiment@1", "other-topic@1", "topic@1"])
    assert by_version.to_json() == m.to_json()
    with pytest.raises(InvalidInput, match="2 bases"):
        filled.similarity_matrix()  # latest of every name spans two bases
    # vectors of different bases are never paired
    oid = filled.get("other-topic").vector_id
    assert not filled.sql(f"SELECT * FROM similarities WHERE '{oid}' IN (vector_a, vector_b)")
    assert filled.similar("other-topic") == []


def test_zero_vector_has_no_cosine_and_no_nan(filled, zoo):
    filled.create("nothing", zoo.base, zoo.base)  # τ = 0
    rows = {r["ref"]: r for r in filled.similar("sentiment", k=10)}
    assert rows["nothing@1"]["cosine"] is None
    assert rows["nothing@1"] == rows[list(rows)[-1]]  # undefined sorts last
    m = filled.similarity_matrix(["nothing", "sentiment"])
    text = json.dumps(m.to_json(), allow_nan=False)  # raises on NaN
    assert json.loads(text)["matrix"][0] == [None, None]
    [row] = filled.sql("SELECT cosine FROM similar_versions WHERE name = 'nothing' AND other_name = 'topic'")
    assert row["cosine"] is None


def test_gc_and_reindex_keep_rows_consistent(filled):
    import pathlib

    vid = filled.get("toxicity").vector_id
    pathlib.Path(filled.root, "refs", "toxicity", "1.json").unlink()
    filled.reindex()  # toxicity's vector is no longer indexed: its rows go
    for name in TABLES:
        cols = "vector_id" if name in ("vector_stats", "tensor_stats") else "vector_a || vector_b"
        assert not filled.sql(f"SELECT * FROM {name} WHERE {cols} LIKE '%{vid}%'")
    assert len(filled.sql("SELECT * FROM similarities")) == 1  # sentiment-topic kept
    filled.gc(grace_seconds=0)
    assert len(filled.sql("SELECT * FROM similarities")) == 1


def test_no_similarities_on_create_then_update(zoo, tmp_path):
    reg = tvreg.open(tmp_path / "r")
    for task in zoo.finetuned:
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    assert not reg.sql("SELECT * FROM similarities") and not reg.sql("SELECT * FROM vector_stats")
    with pytest.raises(NotFound, match="tvreg similarities"):
        reg.similar("topic")
    assert reg.update_similarities(["topic"]) == {"vectors": 3, "pairs": 3}
    assert len(reg.sql("SELECT * FROM similarities")) == 3


def test_beyond_the_exact_limit_queries_use_sketches(zoo, tmp_path):
    reg = tvreg.open(tmp_path / "r")
    for task in zoo.finetuned:
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    counts = upkeep.update(reg, None, exact_limit=2)
    assert counts == {"vectors": 3, "pairs": 0}
    rows = reg.similar("sentiment")
    assert len(rows) == 2 and not any(r["exact"] for r in rows)
    assert all(-1.5 < r["cosine"] < 1.5 for r in rows)
    # the matrix estimates every pair from the catalog's sketches, whatever the refs' form
    reg.tag("topic@1", "prod")
    m = reg.similarity_matrix(["sentiment@1", "topic@1", "toxicity@1"])
    same = reg.similarity_matrix(["sentiment", "topic@prod", "toxicity"])
    assert same.labels == m.labels == ["sentiment@1", "topic@1", "toxicity@1"]
    assert same.vector_ids == m.vector_ids
    assert np.array_equal(same.values, m.values) and np.array_equal(same.exact, m.exact)
    assert not m.exact[0, 1] and m.exact[0, 0]
    with reg.catalog.reader() as con:
        sketch = {v: (n, np.asarray(s, dtype=np.float64)) for v, n, s in con.execute(
            "SELECT vector_id, norm, sketch FROM vector_stats").fetchall()}
    (na, a), (nb, b) = sketch[m.vector_ids[0]], sketch[m.vector_ids[1]]
    assert m.values[0, 1] == m.values[1, 0] == float(a @ b) / (na * nb)
    with pytest.raises(NotFound, match="sentiment@9"):
        reg.similarity_matrix(["sentiment@1", "sentiment@9"])


# --- the sketch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fifty(tmp_path_factory):
    """50 real fine-tunes of one small base (3 tasks, several seeds, step counts and rates)."""
    work = tmp_path_factory.mktemp("fifty")
    base_model = pretrain(seed=0, width=32)
    base = save_safetensors(base_model, work / "base.safetensors")
    reg = tvreg.open(work / "registry")
    for i in range(50):
        model = finetune(base_model, TASKS[i % len(TASKS)], steps=2 + i % 5,
                         lr=(3e-3, 1e-2, 3e-2)[i % 3], seed=i)
        ft = save_safetensors(model, work / f"ft{i}.safetensors")
        reg.create(f"v{i:02d}", base, ft, similarities=False)
    reg.update_similarities()
    yield reg
    reg.close()


def test_sketch_error_is_within_its_bound(fifty):
    """|estimate − exact| of the cosine: RMS ≤ √(2/D) and at most 5 % of pairs beyond 0.1
    (Chebyshev with the same variance bound), on all 1,225 pairs of 50 real vectors."""
    exact = {(r["vector_a"], r["vector_b"]): r["cosine"] for r in fifty.sql("SELECT * FROM similarities")}
    assert len(exact) == 50 * 49 // 2
    with fifty.catalog.reader() as con:
        sk = {v: (n, np.asarray(s, dtype=np.float64))
              for v, n, s in con.execute("SELECT vector_id, norm, sketch FROM vector_stats").fetchall()}
    errors = np.array([sk[a][1] @ sk[b][1] / (sk[a][0] * sk[b][0]) - c
                       for (a, b), c in exact.items()])
    bound = math.sqrt(2 / similarity.SKETCH_DIM)
    spread = np.ptp(list(exact.values()))
    assert spread > 0.3  # the pairs are not all alike: related and unrelated tasks
    assert math.sqrt(np.mean(errors ** 2)) <= bound
    assert np.mean(np.abs(errors) > 0.1) <= 0.05


def test_sketch_is_linear_and_matches_a_direct_count_sketch():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(200_000).astype(np.float32)
    b = rng.standard_normal(200_000).astype(np.float32)
    sa, sb, sab = (np.zeros(similarity.SKETCH_DIM) for _ in range(3))
    similarity.sketch_add(sa, "w", a)
    similarity.sketch_add(sb, "w", b)
    similarity.sketch_add(sab, "w", a + b)
    assert np.allclose(sa + sb, sab, atol=1e-3)
    # the definition: bucket = top 12 bits of A·j + B, sign = top bit of C·j + E (mod 2^64)
    A, B, C, E = (int(x) for x in similarity._hash_parameters("w"))
    direct = np.zeros(similarity.SKETCH_DIM)
    for j in range(0, a.size, 997):  # a sample of positions, checked one by one
        bucket = ((A * j + B) % 2 ** 64) >> 52
        sign = -1.0 if ((C * j + E) % 2 ** 64) >> 63 else 1.0
        direct[bucket] += sign * float(a[j])
    sparse = np.zeros_like(a)
    sparse[::997] = a[::997]
    check = np.zeros(similarity.SKETCH_DIM)
    similarity.sketch_add(check, "w", sparse)
    assert np.allclose(check, direct, atol=1e-6)


# --- the sketch file ---------------------------------------------------------------------------


def test_sketch_file_and_catalog_give_the_same_estimates(zoo, tmp_path):
    import shutil

    from tvreg.catalog import sketches as sketch_index

    reg = tvreg.open(tmp_path / "r")
    for task in zoo.finetuned:
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    assert upkeep.update(reg, None, exact_limit=0) == {"vectors": 3, "pairs": 0}
    m = reg.manifest(reg.get("topic").vector_id)
    table = sketch_index.load(reg.root, m.base_hash, m.arch_fingerprint)
    assert len(table) == 3 and sorted(table["vector_id"].astype(str)) == sorted(
        r["vector_id"] for r in reg.sql("SELECT vector_id FROM vector_stats"))
    from_file = reg.similar("topic")
    shutil.rmtree(tmp_path / "r" / "sketches")  # a cache: queries fall back to the catalog
    from_catalog = reg.similar("topic")
    assert [r["ref"] for r in from_file] == [r["ref"] for r in from_catalog]
    for a, b in zip(from_file, from_catalog):
        assert not a["exact"] and abs(a["cosine"] - b["cosine"]) < 1e-5
    reg.rebuild_similarities()  # exact pairs again; the rebuild rewrites the sketch file
    assert len(sketch_index.load(reg.root, m.base_hash, m.arch_fingerprint)) == 3
    assert all(r["exact"] for r in reg.similar("topic"))


def test_sketch_file_drops_a_torn_record_before_appending(tmp_path):
    from tvreg.catalog import sketches as sketch_index

    rng = np.random.default_rng(1)
    rows = [(f"{i:064x}", float(i), rng.standard_normal(similarity.SKETCH_DIM)) for i in range(3)]
    sketch_index.append(str(tmp_path), "b" * 64, "a" * 64, rows[:2])
    file = sketch_index.path(str(tmp_path), "b" * 64, "a" * 64)
    with open(file, "ab") as f:  # an append interrupted half-way
        f.write(b"\x01" * 1000)
    assert len(sketch_index.load(str(tmp_path), "b" * 64, "a" * 64)) == 2
    sketch_index.append(str(tmp_path), "b" * 64, "a" * 64, rows[2:])
    table = sketch_index.load(str(tmp_path), "b" * 64, "a" * 64)
    assert [v.decode() for v in table["vector_id"]] == [r[0] for r in rows]
    assert np.allclose(table["sketch"][2], rows[2][2].astype(np.float32))
    assert table["norm"].tolist() == [0.0, 1.0, 2.0]
    assert sketch_index.load(str(tmp_path), "c" * 64, "a" * 64) is None
