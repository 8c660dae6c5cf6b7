"""Subspace alignment beside the cosine (docs/similarity.md): values against an independent numpy
SVD of the stored tensors, its properties on constructed vectors, the CLI, SQL, the catalog
migration and the rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tvreg
from tvreg.catalog import db as catalog_module
from tvreg.errors import InvalidInput
from tvreg.similarity import compute as similarity
from tvreg.similarity import upkeep
from tvreg.testing import save_safetensors

SHARE = 0.95  # the documented norm share of the top singular subspace


def stored(reg, ref) -> dict[str, np.ndarray]:
    """The vector as stored (float32 deltas), in float64, by tensor name, in its shape."""
    return {n: t.double().numpy() for n, t in reg.get(ref).state_dict().items()}


def reference_energies(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(‖Π_B A‖²_F, ‖A‖²_F) by numpy.linalg.svd of B: Π_B projects onto B's top-k singular
    vectors of its short side (left if rows <= columns, else right), k the smallest rank whose
    singular values hold SHARE of ‖B‖_F."""
    u, s, vt = np.linalg.svd(b, full_matrices=False)
    if not s.any():
        return 0.0, float(np.sum(a * a))
    share = np.sqrt(np.cumsum(s ** 2) / np.sum(s ** 2))
    k = int(np.argmax(share >= SHARE - 1e-15)) + 1
    if b.shape[0] <= b.shape[1]:
        proj = u[:, :k] @ (u[:, :k].T @ a)
    else:
        proj = (a @ vt[:k].T) @ vt[:k]
    return float(np.sum(proj * proj)), float(np.sum(a * a))


def reference_alignment(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Symmetrised: mean over directions of √(Σ_t ‖Π_B A_t‖² / Σ_t ‖A_t‖²)."""
    ab = [reference_energies(a, b) for a, b in pairs]
    ba = [reference_energies(b, a) for a, b in pairs]
    na, nb = sum(e[1] for e in ab), sum(e[1] for e in ba)
    if not na or not nb:
        return None
    return (np.sqrt(sum(e[0] for e in ab) / na) + np.sqrt(sum(e[0] for e in ba) / nb)) / 2


def test_alignment_matches_numpy_svd_per_tensor_and_per_pair(filled):
    refs = ["sentiment", "topic", "toxicity"]
    vecs = {r: stored(filled, r) for r in refs}
    ids = {r: filled.get(r).vector_id for r in refs}
    rows = {(r["vector_a"], r["vector_b"]): r for r in filled.sql("SELECT * FROM similarities")}
    matrices = [n for n, x in vecs["topic"].items() if x.ndim == 2]
    assert matrices and any(x.shape[0] > x.shape[1] for x in vecs["topic"].values()
                            if x.ndim == 2)  # a tall matrix too (its right singular subspace)
    for i, a in enumerate(refs):
        for b in refs[i + 1:]:
            key = tuple(sorted((ids[a], ids[b])))
            row = rows[key]
            want = reference_alignment([(vecs[a][n], vecs[b][n]) for n in matrices])
            assert 0.0 <= row["alignment"] <= 1.0
            assert abs(row["alignment"] - want) < 1e-9
            assert row["n_matrices"] == len(matrices)
            per_tensor = {r["tensor"]: r["alignment"] for r in filled.sql(
                "SELECT tensor, alignment FROM tensor_similarities "
                f"WHERE vector_a = '{key[0]}' AND vector_b = '{key[1]}'")}
            for n, xa in vecs[a].items():
                if xa.ndim != 2:
                    assert per_tensor[n] is None  # 1-D tensors have no alignment
                    continue
                assert abs(per_tensor[n] - reference_alignment([(xa, vecs[b][n])])) < 1e-9
                assert 0.0 <= per_tensor[n] <= 1.0


def test_symmetric_and_self_alignment():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 20)).astype(np.float32)
    b = rng.standard_normal((12, 20)).astype(np.float32)
    sa, sb = (similarity.spectrum(x.reshape(-1), x.shape) for x in (a, b))
    e_ab = similarity.pair_energies(sa, sb)
    e_ba = similarity.pair_energies(sb, sa)
    assert similarity.alignment([e_ab]) == similarity.alignment([e_ba])
    # a full-rank matrix with itself: the norm share of its own top-k subspace, at least 0.95
    self_value = similarity.alignment([similarity.pair_energies(sa, sa)])
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    share = np.sqrt(np.cumsum(s ** 2) / np.sum(s ** 2))
    assert self_value == pytest.approx(share[np.argmax(share >= SHARE)], abs=1e-12)
    assert SHARE <= self_value < 1.0
    # one of rank 2 holds all of itself in its top subspace
    low = (a[:, :2] @ b[:2, :]).astype(np.float32)
    sl = similarity.spectrum(low.reshape(-1), low.shape)
    assert similarity.alignment([similarity.pair_energies(sl, sl)]) == pytest.approx(1.0,
                                                                                     abs=1e-12)
    # not a matrix, and an all-zero one: undefined
    assert similarity.spectrum(a.reshape(-1), (240,)) is None
    assert similarity.alignment([similarity.pair_energies(sa, None)]) is None
    zero = np.zeros((12, 20), np.float32)
    sz = similarity.spectrum(zero.reshape(-1), zero.shape)
    assert similarity.alignment([similarity.pair_energies(sa, sz)]) is None
    assert similarity.alignment([]) is None


def _outer(u: list[float], v: list[float]) -> torch.Tensor:
    return torch.tensor(u, dtype=torch.float32)[:, None] * torch.tensor(v, dtype=torch.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Checkpoints over an all-zero base (so each delta is exactly what is written): ``one``
    has a rank-1 wide matrix, a rank-1 tall one and a bias; ``twice`` is 2 × one; ``other``'s
    matrices use rows and columns disjoint from one's (its subspaces are orthogonal to one's),
    and its bias equals one's."""
    d = tmp_path_factory.mktemp("built")
    shapes = {"wide.weight": (4, 6), "tall.weight": (8, 3), "wide.bias": (4,)}
    base = {n: torch.zeros(s) for n, s in shapes.items()}
    one = {"wide.weight": _outer([1, 2, 0, 0], [1, 0, 3, 0, 0, 0]),
           "tall.weight": _outer([1, 1, 2, 0, 0, 0, 0, 0], [2, 1, 0]),
           "wide.bias": torch.tensor([1.0, -1.0, 0.5, 2.0])}
    other = {"wide.weight": _outer([0, 0, 3, 1], [0, 1, 0, 2, 0, 1]),
             "tall.weight": _outer([0, 0, 0, 1, 5, 0, 1, 0], [0, 0, 4]),
             "wide.bias": one["wide.bias"].clone()}
    paths = {"base": save_safetensors(base, d / "base.safetensors")}
    for name, sd in (("one", one), ("twice", {n: 2 * t for n, t in one.items()}),
                     ("other", other)):
        paths[name] = save_safetensors(sd, d / f"{name}.safetensors")
    return paths


def _pair(reg, a: str, b: str) -> dict:
    [row] = reg.sql(f"SELECT * FROM similar_versions WHERE name = '{a}' AND other_name = '{b}'")
    return row


def test_same_subspace_is_1_orthogonal_subspaces_are_0(built, tmp_path):
    reg = tvreg.open(tmp_path / "r")
    for name in ("one", "twice", "other"):
        reg.create(name, built["base"], built[name])
    assert _pair(reg, "one", "twice")["alignment"] == pytest.approx(1.0, abs=1e-12)
    assert _pair(reg, "one", "twice")["cosine"] == pytest.approx(1.0, abs=1e-12)
    far = _pair(reg, "one", "other")
    assert far["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert far["cosine"] > 0.01  # the shared bias: cosine sees it, alignment (matrices only) not
    per = {r["tensor"]: r["alignment"] for r in reg.sql(
        "SELECT tensor, alignment FROM tensor_similarities")}
    assert per["wide.bias"] is None
    # by alignment, twice comes first, then other; by cosine too, but other is far behind
    assert [r["ref"] for r in reg.similar("one", by="alignment")] == ["twice@1", "other@1"]
    with pytest.raises(InvalidInput, match="--by"):
        reg.similar("one", by="angle")
    with pytest.raises(InvalidInput, match="--by"):
        reg.similarity_matrix(by="angle")
    m = reg.similarity_matrix(["one", "twice", "other"], by="alignment")
    assert m.values[0, 1] == pytest.approx(1.0) and m.values[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(m.values[0, 0]) and m.to_json()["by"] == "alignment"


def test_ranking_by_alignment_differs_from_cosine(built, tmp_path):
    """A vector with a large shared bias and orthogonal matrices ranks first by cosine and last
    by alignment."""
    d = tmp_path
    bias = {"wide.bias": 50 * torch.ones(4)}
    near = {"wide.weight": _outer([1, 2, 0, 0], [0, 1, 0, 0, 0, 0]),  # one's row space, rank 1
            "tall.weight": _outer([1, 1, 2, 0, 0, 0, 0, 0], [0, 1, 0]),
            "wide.bias": torch.tensor([1.0, 0, 0, 0])}
    far = {"wide.weight": _outer([0, 0, 3, 1], [0, 1, 0, 2, 0, 1]),
           "tall.weight": _outer([0, 0, 0, 1, 5, 0, 1, 0], [0, 0, 4]), **bias}
    query = {"wide.weight": _outer([1, 2, 0, 0], [1, 0, 3, 0, 0, 0]),
             "tall.weight": _outer([1, 1, 2, 0, 0, 0, 0, 0], [2, 1, 0]), **bias}
    reg = tvreg.open(d / "r")
    for name, sd in (("query", query), ("near", near), ("far", far)):
        reg.create(name, built["base"], save_safetensors(sd, d / f"{name}.safetensors"))
    assert [r["ref"] for r in reg.similar("query")] == ["far@1", "near@1"]
    assert [r["ref"] for r in reg.similar("query", by="alignment")] == ["near@1", "far@1"]


def test_cli_column_json_by_matrix_and_sql(run, built):
    for name in ("one", "twice", "other"):
        run("create", name, "--base", str(built["base"]), "--finetuned", str(built[name]))
    rows = json.loads(run("similar", "one", "--json", "--by", "alignment").stdout)
    assert [r["ref"] for r in rows] == ["twice@1", "other@1"]
    assert all(isinstance(r["alignment"], float) and 0 <= r["alignment"] <= 1 for r in rows)
    text = run("similar", "one", "--by", "alignment").stdout.splitlines()
    assert text[0].split() == ["ref", "vector", "cosine", "sign_conflicts", "alignment"]
    assert text[1].split()[-1] == "1.0000" and text[2].split()[-1] == "0.0000"
    data = json.loads(run("similar", "--matrix", "one", "other", "--by", "alignment",
                          "--json").stdout)
    assert data["by"] == "alignment" and data["matrix"][0][0] is None
    assert data["matrix"][0][1] == pytest.approx(0.0, abs=1e-12)
    out = json.loads(run("sql", "SELECT name, other_name, alignment FROM similar_versions "
                                "ORDER BY alignment DESC, name, other_name", "--json").stdout)
    assert out[0]["alignment"] == pytest.approx(1.0) and len(out) == 6


@pytest.mark.parametrize("args", [("similar", "one", "--by", "angle"),
                                  ("similar", "--matrix", "--by", "cos")])
def test_bad_by_exits_2_with_one_line(run, built, reg_path, args):
    run("create", "one", "--base", str(built["base"]), "--finetuned", str(built["one"]))
    before = sorted(p.name for p in reg_path.rglob("*"))
    r = run(*args, code=2)
    assert len(r.stderr.strip().splitlines()) == 1 and "--by" in r.stderr and not r.stdout
    assert sorted(p.name for p in reg_path.rglob("*")) == before


def test_estimates_have_no_alignment(zoo, tmp_path):
    reg = tvreg.open(tmp_path / "r")
    for task in zoo.finetuned:
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    upkeep.update(reg.repo, None, exact_limit=2)
    rows = reg.similar("sentiment", by="alignment")
    assert rows and all(not r["exact"] and r["alignment"] is None for r in rows)
    # no alignment to rank by: in order of the cosine estimates
    assert [r["ref"] for r in rows] == [r["ref"] for r in reg.similar("sentiment")]


def _values(reg) -> list[tuple]:
    return sorted((r["vector_a"], r["vector_b"], r["tensor"], r["alignment"]) for r in reg.sql(
        "SELECT vector_a, vector_b, tensor, alignment FROM tensor_similarities")) + sorted(
        (r["vector_a"], r["vector_b"], "", r["alignment"]) for r in reg.sql(
            "SELECT vector_a, vector_b, alignment FROM similarities"))


def _same(got: list[tuple], want: list[tuple]) -> bool:
    """The same alignments but for the last bits: a batch pass (rebuild, many pairs) sums in
    another order than an insert's pair pass."""
    return len(got) == len(want) and all(
        g[:3] == w[:3] and (g[3] == w[3] or (g[3] is not None and w[3] is not None
                                             and abs(g[3] - w[3]) <= 1e-12))
        for g, w in zip(got, want))


def test_migration_of_an_older_catalog_then_upkeep(filled):
    """A catalog from before migration 5 (no alignment columns, the old view) gets them on first
    use, NULL; `update_similarities` computes its old pairs again, to the same values."""
    want = _values(filled)
    path = filled.repo.catalog.path
    import duckdb

    con = duckdb.connect(path)
    ddl = next(sql for number, _, sql in catalog_module._migrations() if number == 2)
    con.execute("DROP VIEW similar_versions")
    for table in ("similarities", "tensor_similarities"):
        con.execute(f"ALTER TABLE {table} DROP COLUMN alignment")
    con.execute("ALTER TABLE similarities DROP COLUMN n_matrices")
    con.execute(ddl[ddl.index("CREATE VIEW similar_versions"):])
    con.execute("DELETE FROM schema_migrations WHERE version = 5")
    con.close()
    with tvreg.open(filled.root) as later:
        rows = later.sql("SELECT alignment, n_matrices, cosine FROM similarities")
        assert len(rows) == 3 and all(r["alignment"] is None and r["n_matrices"] is None
                                      and r["cosine"] is not None for r in rows)
        assert all(r["alignment"] is None for r in later.similar("topic"))
        assert later.update_similarities() == {"vectors": 0, "pairs": 3}
        assert _same(_values(later), want)
        assert later.update_similarities() == {"vectors": 0, "pairs": 0}


def test_rebuild_recomputes_alignment(run, filled, reg_path):
    want = _values(filled)
    with filled.catalog.writer() as con:
        con.execute("UPDATE similarities SET alignment = 0.5")
        con.execute("UPDATE tensor_similarities SET alignment = NULL")
    run("similarities", "--rebuild")
    with tvreg.open(reg_path) as again:
        assert _same(_values(again), want)


# --- spectra files: the cache of per-matrix spectra ---------------------------------------------


def _spectra_files(reg) -> set[str]:
    folder = reg.repo.root + "/spectra"
    import os

    return {n for n in os.listdir(folder) if n.endswith(".npz")} if os.path.isdir(folder) else set()


def test_spectra_files_spare_the_partners_and_change_no_value(zoo, tmp_path, monkeypatch):
    """Storing a vector computes the spectra of its own matrices only: its partners' come from
    their spectra files. Values are the same with the files, without them, and with a damaged
    one."""
    reg = tvreg.open(tmp_path / "r")
    tasks = list(zoo.finetuned)
    for task in tasks[:2]:
        reg.create(task, zoo.base, zoo.finetuned[task])
    ids = {t: reg.get(t).vector_id for t in tasks[:2]}
    assert _spectra_files(reg) == {f"{v}.npz" for v in ids.values()}
    calls = []
    real = similarity.spectrum
    monkeypatch.setattr(similarity, "spectrum", lambda v, s: calls.append(s) or real(v, s))
    reg.create(tasks[2], zoo.base, zoo.finetuned[tasks[2]])
    matrices = sum(len(t.shape) == 2 for t in reg.manifest(reg.get(tasks[2]).vector_id).tensors)
    assert len(calls) == matrices  # the new vector's; not 3 × that
    want = _values(reg)
    import shutil

    shutil.rmtree(reg.repo.root + "/spectra")
    assert reg.rebuild_similarities() == {"vectors": 3, "pairs": 3}
    assert _same(_values(reg), want) and len(_spectra_files(reg)) == 3
    # a torn file is computed again (and not trusted)
    torn = reg.repo.root + f"/spectra/{ids[tasks[0]]}.npz"
    with open(torn, "r+b") as f:
        f.truncate(100)
    with reg.catalog.writer() as con:
        con.execute("DELETE FROM similarities")
    calls.clear()
    assert reg.update_similarities() == {"vectors": 0, "pairs": 3}
    assert _same(_values(reg), want)
    assert 0 < len(calls) < 3 * matrices
    # a vector the catalog no longer lists loses its file, a dead writer its temporary file
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    folder = reg.repo.root + "/spectra/"
    for pid in (dead, str(os.getpid())):
        with open(folder + f"{ids[tasks[1]]}.npz.{pid}.1.tmp", "wb") as f:
            f.write(b"torn")
    with reg.catalog.writer() as con:
        con.execute("DELETE FROM vectors WHERE vector_id = ?", [ids[tasks[0]]])
    reg.update_similarities()
    assert f"{ids[tasks[0]]}.npz" not in _spectra_files(reg)
    assert sorted(n for n in os.listdir(folder) if n.endswith(".tmp")) == [
        f"{ids[tasks[1]]}.npz.{os.getpid()}.1.tmp"]  # a live process's file stays


def test_matrices_above_the_size_cap_get_no_alignment(zoo, tmp_path, monkeypatch):
    """A matrix whose short side is above ALIGNMENT_MAX_SIDE gets no alignment (NULL), is not
    counted in n_matrices, and costs no spectrum; the pair's alignment covers the others."""
    monkeypatch.setattr(similarity, "ALIGNMENT_MAX_SIDE", 31)  # leaves out the 32-wide ones
    reg = tvreg.open(tmp_path / "r")
    for task in list(zoo.finetuned)[:2]:
        reg.create(task, zoo.base, zoo.finetuned[task])
    shapes = {t.name: t.shape for t in reg.manifest(reg.get("sentiment").vector_id).tensors}
    small = [n for n, s in shapes.items() if len(s) == 2 and min(s) <= 31]
    big = [n for n, s in shapes.items() if len(s) == 2 and min(s) > 31]
    assert small and big
    per_tensor = {r["tensor"]: r["alignment"]
                  for r in reg.sql("SELECT tensor, alignment FROM tensor_similarities")}
    assert all(per_tensor[n] is None for n in big)
    assert all(per_tensor[n] is not None for n in small)
    row = reg.sql("SELECT alignment, n_matrices FROM similarities")[0]
    vecs = {r: stored(reg, r) for r in ("sentiment", "topic")}
    want = reference_alignment([(vecs["sentiment"][n], vecs["topic"][n]) for n in small])
    assert row["n_matrices"] == len(small) and abs(row["alignment"] - want) < 1e-9
