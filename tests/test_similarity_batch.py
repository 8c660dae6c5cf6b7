"""The batch similarity pass, pending pairs past the exact limit, and the Dask engine, on real
fine-tunes of the toy model and a real LocalCluster of worker processes."""

from __future__ import annotations

import json
import shutil

import pytest

import tvreg
from tvreg.errors import FormatError, InvalidInput
from tvreg.repo.repo import Repo
from tvreg.similarity import batch, upkeep
from tvreg.testing import finetune, pretrain, save_safetensors

TABLES = {"vector_stats": "vector_id, base_hash, arch_fingerprint, norm, n_params, n_material, "
                          "sketch",
          "tensor_stats": "*",
          "similarities": "* EXCLUDE (computed_at)",
          "tensor_similarities": "*"}


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six fine-tunes of one toy base: three tasks, two seeds each."""
    folder = tmp_path_factory.mktemp("six")
    base = pretrain(seed=0)
    save_safetensors(base, folder / "base.safetensors")
    paths = {}
    for task in ("sentiment", "topic", "toxicity"):
        for seed in (0, 1):
            name = f"{task}-{seed}"
            save_safetensors(finetune(base, task, steps=10, seed=seed),
                             folder / f"{name}.safetensors")
            paths[name] = folder / f"{name}.safetensors"
    return folder / "base.safetensors", paths


def fill(root, six, **options) -> tvreg.Registry:
    base, paths = six
    reg = tvreg.open(root)
    for name, path in paths.items():
        reg.create(name, base, path, **options)
    return reg


def tables(reg) -> dict[str, list[tuple]]:
    with reg.catalog.reader() as con:
        return {t: sorted(con.execute(f"SELECT {cols} FROM {t}").fetchall())
                for t, cols in TABLES.items()}


def close(a, b, rel: float = 1e-12) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of two worker processes for the module's Dask tests."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as c:
        yield c.scheduler_address


def test_batch_pass_gives_the_pair_pass_values(six, tmp_path):
    inserted = fill(tmp_path / "a", six)  # a pair pass per insert
    batched = fill(tmp_path / "b", six, similarities=False)
    assert batched.update_similarities() == {"vectors": 6, "pairs": 15}
    want, got = tables(inserted), tables(batched)
    for t in TABLES:
        assert len(got[t]) == len(want[t]) > 0, t
        assert close(got[t], want[t]), t
    # what is counted or chosen is exact: thresholds, material counts, sign conflicts
    assert got["tensor_stats"] == want["tensor_stats"]
    counts = "vector_a, vector_b, n_both_material, n_sign_conflicts, n_matrices"
    assert batched.sql(f"SELECT {counts} FROM similarities ORDER BY 1, 2") == \
        inserted.sql(f"SELECT {counts} FROM similarities ORDER BY 1, 2")


def test_each_tensor_is_read_once_and_blocks_read_it_again(six, tmp_path, monkeypatch):
    reg = fill(tmp_path / "r", six, similarities=False)
    reads: list[tuple[str, str]] = []
    real = Repo.load_tensor

    def counted(self, entry, out=None):
        reads.append((entry.sha256, entry.name))
        return real(self, entry, out)

    monkeypatch.setattr(Repo, "load_tensor", counted)
    vids = [reg.get(n).vector_id for n in six[1]]
    n_tensors = len(reg.manifest(vids[0]).tensors)
    assert reg.update_similarities() == {"vectors": 6, "pairs": 15}
    assert len(reads) == 6 * n_tensors  # every tensor of every vector once
    one_block = tables(reg)
    # tiles of two blocks of one vector each: 3 blocks, each vector read 3 times
    largest = max(batch.tile_bytes(e.nbytes, tuple(e.shape))
                  for e in reg.manifest(vids[0]).tensors)
    assert batch.blocks(sorted(vids), reg.manifest(vids[0]), 4 * largest) == \
        [sorted(vids)[i:i + 2] for i in (0, 2, 4)]
    reads.clear()
    assert reg.rebuild_similarities(memory=4 * largest) == {"vectors": 6, "pairs": 15}
    assert len(reads) == 6 * n_tensors * 3
    blocked = tables(reg)
    for t in TABLES:
        assert close(blocked[t], one_block[t]), t


def test_pending_pairs_past_the_exact_limit(six, tmp_path):
    reg = tvreg.open(tmp_path / "r")
    reg.repo.init()
    assert reg.similarity_exact_limit == 256
    assert reg.set_similarity_exact_limit(3) == 3 and reg.similarity_exact_limit == 3
    base, paths = six
    for name, path in paths.items():
        reg.create(name, base, path)
    [status] = reg.similarity_status()
    assert (status["n_vectors"], status["n_without_stats"], status["n_pairs"],
            status["n_exact_pairs"], status["n_pending_pairs"], status["exact_limit"]) == \
        (6, 0, 15, 3, 12, 3)
    # past the limit an insert keeps the vector's spectra for the batch pass
    spectra = {p.name for p in (tmp_path / "r" / "spectra").iterdir()}
    assert spectra == {f"{reg.get(n).vector_id}.npz" for n in paths}
    rows = reg.similar("toxicity-1")
    assert len(rows) == 5 and not any(r["exact"] for r in rows)
    for r in rows:  # Chebyshev at 5 % of the sketch's variance bound (1 + cos²) / D
        assert r["bound"] == pytest.approx(((1 + r["cosine"] ** 2) / (4096 * 0.05)) ** 0.5)
        assert r["alignment"] is None and r["sign_conflict_rate"] is None
    first = reg.similar("sentiment-0")
    assert sum(r["exact"] for r in first) == 2 and all(
        r["bound"] is None for r in first if r["exact"])
    assert reg.update_similarities() == {"vectors": 0, "pairs": 12}
    [status] = reg.similarity_status()
    assert (status["n_exact_pairs"], status["n_pending_pairs"]) == (15, 0)
    exact = reg.similar("toxicity-1")
    assert all(r["exact"] and r["bound"] is None for r in exact)
    for r in rows:  # the estimates were within their bounds
        got = next(e for e in exact if e["ref"] == r["ref"])
        assert abs(got["cosine"] - r["cosine"]) <= r["bound"]
    # the limit lives in config.json, next to the remotes
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["similarity"] == {"exact_limit": 3} and config["remotes"] == {}


def test_dask_engine_gives_the_local_bits(six, tmp_path, cluster):
    local = fill(tmp_path / "r", six, similarities=False)
    local.set_similarity_exact_limit(0)  # nothing at insert: everything pending
    shutil.copytree(tmp_path / "r", tmp_path / "d")
    assert local.update_similarities() == {"vectors": 6, "pairs": 15}
    on_dask = tvreg.open(tmp_path / "d")
    assert on_dask.update_similarities(engine="dask", scheduler=cluster) == \
        {"vectors": 6, "pairs": 15}
    assert tables(on_dask) == tables(local)  # bit for bit, sketches included
    # a rebuild: with the spectra files gone, the workers compute the spectra themselves
    local.rebuild_similarities()
    on_dask.rebuild_similarities(engine="dask", scheduler=cluster)
    assert tables(on_dask) == tables(local)
    # and in blocks (each tile of two blocks is a task)
    small = 4 * max(batch.tile_bytes(e.nbytes, tuple(e.shape))
                    for e in local.manifest(local.get("topic-0").vector_id).tensors)
    local.rebuild_similarities(memory=small)
    on_dask.rebuild_similarities(engine="dask", scheduler=cluster, memory=small)
    assert tables(on_dask) == tables(local)
    # statistics only (past the limit) run as tasks too
    for reg in (local, on_dask):
        with reg.catalog.writer() as con:
            for t in TABLES:
                con.execute(f"DELETE FROM {t}")
    assert upkeep.update(local.repo, None, exact_limit=0) == {"vectors": 6, "pairs": 0}
    assert upkeep.update(on_dask.repo, None, exact_limit=0, engine="dask",
                         scheduler=cluster) == {"vectors": 6, "pairs": 0}
    assert tables(on_dask) == tables(local)


def test_cli_status_limit_and_engine(run, six, reg_path, cluster):
    base, paths = six
    run("init")
    assert "exact limit: 2" in run("similarities", "--exact-limit", "2").stderr
    for name in ("sentiment-0", "topic-0", "toxicity-0"):
        run("create", name, "--base", str(base), "--finetuned", str(paths[name]))
    [row] = json.loads(run("similarities", "--status", "--json").stdout)
    assert (row["n_vectors"], row["n_exact_pairs"], row["n_pending_pairs"],
            row["exact_limit"], row["base_names"]) == (3, 1, 2, 2, [])
    lines = run("similarities", "--status").stdout.splitlines()
    assert lines[0].split() == ["base", "vectors", "without_stats", "pairs", "exact", "pending",
                                "exact_limit"]
    assert lines[1].split()[1:] == ["3", "0", "3", "1", "2", "2"]
    r = run("similar", "toxicity-0")
    header = r.stdout.splitlines()[0].split()
    assert header == ["ref", "vector", "cosine", "±", "sign_conflicts", "alignment"]
    assert "±: its error bound" in r.stderr
    done = json.loads(run("similarities", "--engine", "dask", "--scheduler", cluster,
                          "--json").stdout)
    assert done == {"vectors": 0, "pairs": 2}
    assert json.loads(run("similarities", "--status", "--json").stdout)[0][
        "n_pending_pairs"] == 0
    assert "±" not in run("similar", "toxicity-0").stdout


@pytest.mark.parametrize("args, message", [
    (("similarities", "--engine", "spark"), "Invalid value for '--engine'"),
    (("similarities", "--workers", "2"), "--workers sizes the Dask engine's local cluster"),
    (("similarities", "--scheduler", "tcp://127.0.0.1:9"), "a scheduler address is for "
                                                           "--engine dask"),
    (("similarities", "--rebuild", "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9"),
     "cannot reach the Dask scheduler tcp://127.0.0.1:9"),
    (("similarities", "--memory", "0"), "Invalid value for '--memory'"),
    (("similarities", "--exact-limit", "-1"), "Invalid value for '--exact-limit'"),
    (("similarities", "--status", "topic-0"), "--status and --exact-limit take no REF"),
    (("similarities", "--exact-limit", "3", "--rebuild"), "take no REF and no other option"),
])
def test_bad_options_change_nothing(run, six, reg_path, args, message, monkeypatch):
    from tvreg.repo import ingest_dask

    monkeypatch.setattr(ingest_dask, "CONNECT_TIMEOUT", "1s")  # nothing listens on :9
    base, paths = six
    for name in ("sentiment-0", "topic-0"):
        run("create", name, "--base", str(base), "--finetuned", str(paths[name]))
    before = {p.relative_to(reg_path): p.read_bytes() for p in reg_path.rglob("*")
              if p.is_file() and p.name != "catalog.duckdb" and "tmp" not in p.parts}
    rows = json.loads(run("sql", "SELECT count(*) AS n FROM similarities", "--json").stdout)
    r = run(*args, code=2)
    assert message in r.stderr and "Traceback" not in r.stderr
    after = {p.relative_to(reg_path): p.read_bytes() for p in reg_path.rglob("*")
             if p.is_file() and p.name != "catalog.duckdb" and "tmp" not in p.parts}
    assert after == before
    assert json.loads(run("sql", "SELECT count(*) AS n FROM similarities", "--json").stdout) \
        == rows == [{"n": 1}]


def test_bad_limits_in_python_and_config(tmp_path):
    reg = tvreg.open(tmp_path / "r")
    reg.repo.init()
    for bad in (-1, True, "3", 2.0, None):
        with pytest.raises(InvalidInput):
            reg.set_similarity_exact_limit(bad)
    for bad in (-1, "3", True, [1]):
        config = json.loads((tmp_path / "r" / "config.json").read_text())
        config["similarity"] = {"exact_limit": bad}
        (tmp_path / "r" / "config.json").write_text(json.dumps(config))
        with pytest.raises(FormatError, match="similarity.exact_limit"):
            reg.similarity_exact_limit
    with pytest.raises(InvalidInput, match="unknown engine"):
        reg.update_similarities(engine="spark")
    with pytest.raises(InvalidInput, match="memory"):
        reg.update_similarities(memory=0)


def test_the_local_engine_never_imports_dask(six, tmp_path):
    import subprocess
    import sys

    base, paths = six
    root = str(tmp_path / "r")
    with tvreg.open(root) as reg:
        for name in ("sentiment-0", "topic-0", "toxicity-0"):
            reg.create(name, base, paths[name], similarities=False)
    code = ("import sys; from click.testing import CliRunner; from tvreg.cli.main import cli; "
            "runs = [['similarities'], ['similarities', '--rebuild'], "
            "['similarities', '--status'], ['similar', 'topic-0']]; "
            f"results = [CliRunner().invoke(cli, ['--registry', {root!r}, *a]) for a in runs]; "
            "assert all(r.exit_code == 0 for r in results), [r.output for r in results]; "
            "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
