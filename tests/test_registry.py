"""The Python API end to end, on real fine-tuned toy checkpoints and a real registry folder."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest
import torch
from helpers import snapshot
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.errors import (
    AmbiguousRef,
    CheckpointError,
    CorruptObject,
    FormatError,
    IncompatibleCheckpoints,
    InvalidInput,
    InvalidName,
    InvalidRef,
    NonFiniteValues,
    NotFound,
    SQLError,
)

OLD = time.time() - 30 * 24 * 3600  # an mtime well past any gc grace period


# --- helpers ----------------------------------------------------------------------------------


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def reference_delta(base_path, ft_path) -> dict[str, torch.Tensor]:
    """τ = ft − base computed here, from the files, in fp32 (floating tensors only)."""
    base, ft = load_file(base_path), load_file(ft_path)
    return {n: ft[n].float() - base[n].float() for n in sorted(base) if base[n].is_floating_point()}


def assert_bit_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for n in want:
        assert got[n].dtype == want[n].dtype, n
        assert got[n].shape == want[n].shape, n
        assert torch.equal(got[n], want[n]), n
        assert _raw(got[n]) == _raw(want[n]), n  # bit for bit, -0.0 included


def object_path(reg, oid: str) -> pathlib.Path:
    return pathlib.Path(reg.root) / "objects" / oid[:2] / oid[2:]


def flip_byte(path: pathlib.Path, position: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if position is None else position
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def table_dump(reg, table: str, order: str) -> list[dict]:
    return reg.catalog.rows(f"SELECT * FROM {table} ORDER BY {order}")


def catalog_dump(reg) -> dict[str, list[dict]]:
    return {"vectors": table_dump(reg, "vectors", "vector_id"),
            "versions": table_dump(reg, "versions", "name, version"),
            "tensors": table_dump(reg, "tensors", "vector_id, name"),
            "tags": table_dump(reg, "tags", "name, tag")}


def save_variant(src, dst, edit) -> pathlib.Path:
    sd = load_file(src)
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst))
    return pathlib.Path(dst)


@pytest.fixture(scope="module")
def shared(zoo, tmp_path_factory):
    """Like ``filled``, built once per module, for tests that must leave a registry unchanged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_NO_PROGRESS", "1")
        reg = tvreg.open(tmp_path_factory.mktemp("shared") / "registry")
        for task, path in zoo.finetuned.items():
            reg.create(task, zoo.base, path, **zoo.meta[task])
    yield reg
    reg.close()


# --- create / get / export ---------------------------------------------------------------------


def test_create_then_get_is_bit_identical(reg, zoo):
    base = load_file(zoo.base)
    floating = sorted(n for n, t in base.items() if t.is_floating_point())
    n_params = sum(base[n].numel() for n in floating)
    for task, ft in zoo.finetuned.items():
        res = reg.create(task, zoo.base, ft, **zoo.meta[task])
        assert res.created and res.ref == f"{task}@1" and res.new_objects > 0
        vec = reg.get(task)
        assert vec.ref == f"{task}@1" and vec.vector_id == res.record.vector_id
        assert vec.names() == floating
        want = reference_delta(zoo.base, ft)
        assert_bit_identical(dict(vec.tensors().items()), want)
        assert_bit_identical(vec.state_dict(), want)
        assert torch.equal(vec.tensor("head.weight"), want["head.weight"])
        m = vec.manifest
        assert [(s.name, s.dtype, s.shape) for s in m.skipped] == [("position_ids", "int64", (16,))]
        assert "position_ids" not in vec.tensors()
        assert m.n_params == vec.n_params == n_params
        assert m.raw_bytes == 4 * n_params
        assert all(t.dtype == "float32" and t.source_dtype == "float32" for t in m.tensors)
        md = vec.metadata
        assert {k: md[k] for k in ("task", "dataset", "lr", "steps")} == zoo.meta[task]
        assert md["meta"] == {} and md["parents"] == [] and md["recipe"] is None
        # the vector id names the manifest: its sha256 is the id
        assert hashlib.sha256(object_path(reg, vec.vector_id).read_bytes()).hexdigest() == vec.vector_id


def test_create_bf16_checkpoints_exact_in_fp32(reg, zoo_bf16):
    for task, ft in zoo_bf16.finetuned.items():
        reg.create(task, zoo_bf16.base, ft)
        vec = reg.get(task)
        assert all(t.source_dtype == "bfloat16" and t.dtype == "float32"
                   for t in vec.manifest.tensors)
        want = reference_delta(zoo_bf16.base, ft)
        assert_bit_identical(dict(vec.tensors().items()), want)
        # fp32 holds the bf16 difference exactly: base + τ gives back the fine-tuned weights
        base, ftd = load_file(zoo_bf16.base), load_file(ft)
        for n, d in vec.tensors().items():
            assert torch.equal((base[n].float() + d).to(torch.bfloat16), ftd[n])


def test_tensors_to_dtype(shared, zoo):
    vec = shared.get("topic")
    want = reference_delta(zoo.base, zoo.finetuned["topic"])
    got = vec.tensors(dtype=torch.float64)
    for n in want:
        assert got[n].dtype == torch.float64
        assert torch.equal(got[n], want[n].double())


def test_export_is_bit_identical_and_names_the_vector(shared, zoo, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    for task in zoo.finetuned:
        out = folder / f"{task}.safetensors"
        size = shared.export(task, out)
        assert size == out.stat().st_size
        vec = shared.get(task)
        assert_bit_identical(load_file(out), reference_delta(zoo.base, zoo.finetuned[task]))
        with safe_open(str(out), framework="pt") as f:
            meta = f.metadata()
        assert meta["tvreg.vector_id"] == vec.vector_id
        assert meta["tvreg.base_hash"] == vec.base_hash
        assert meta["tvreg.ref"] == f"{task}@1"
        assert meta["format"] == "pt"  # transformers refuses files without it (issue 14, 4)
    # written atomically: no temp files left next to them
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}.safetensors" for t in zoo.finetuned)


def _independent_base_hash(path) -> str:
    """The rule of BaseHasher's docstring, written out with hashlib: floating tensors by name,
    u64le(len(h)) || h || u64le(len(b)) || b with h = JSON [name, dtype, shape]."""
    sd = load_file(path)
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        if not t.is_floating_point():
            continue
        header = json.dumps([name, _dtype_name(t), list(t.shape)], separators=(",", ":")).encode()
        data = _raw(t)
        h.update(struct.pack("<Q", len(header)) + header + struct.pack("<Q", len(data)) + data)
    return h.hexdigest()


def _independent_arch_fingerprint(path) -> str:
    sd = load_file(path)
    rows = sorted([n, list(t.shape), _dtype_name(t)] for n, t in sd.items())
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def test_base_hash_and_arch_fingerprint(filled, zoo, zoo_bf16):
    vecs = [filled.get(t) for t in zoo.finetuned]
    assert len({v.vector_id for v in vecs}) == 3
    assert {v.base_hash for v in vecs} == {_independent_base_hash(zoo.base)}
    assert {v.arch_fingerprint for v in vecs} == {_independent_arch_fingerprint(zoo.base)}
    rows = filled.sql("SELECT DISTINCT base_hash, arch_fingerprint FROM versions")
    assert rows == [{"base_hash": vecs[0].base_hash, "arch_fingerprint": vecs[0].arch_fingerprint}]
    # a bf16 copy of the base is another base with another architecture (dtypes differ)
    res = filled.create("bf16", zoo_bf16.base, zoo_bf16.finetuned["topic"])
    assert res.manifest.base_hash == _independent_base_hash(zoo_bf16.base) != vecs[0].base_hash
    assert res.manifest.arch_fingerprint == _independent_arch_fingerprint(zoo_bf16.base)
    assert res.manifest.arch_fingerprint != vecs[0].arch_fingerprint


def _write_sharded(src, directory: pathlib.Path) -> pathlib.Path:
    sd = load_file(src)
    names = sorted(sd)
    directory.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(directory / shard))
        weight_map.update({k: shard for k in keys})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return directory


def test_other_checkpoint_formats_give_the_same_vector(reg, zoo, tmp_path):
    ft = zoo.finetuned["sentiment"]
    ref = reg.create("st", zoo.base, ft)
    pt_base, pt_ft = tmp_path / "base.pt", tmp_path / "ft.pt"
    torch.save(load_file(zoo.base), pt_base)
    torch.save(load_file(ft), pt_ft)
    sh_base = _write_sharded(zoo.base, tmp_path / "base-sharded")
    sh_ft = _write_sharded(ft, tmp_path / "ft-sharded")
    for name, (b, f) in {"pt": (pt_base, pt_ft), "sharded": (sh_base, sh_ft),
                         "mixed": (pt_base, sh_ft)}.items():
        res = reg.create(name, b, f)
        assert res.created
        assert res.record.vector_id == ref.record.vector_id, name
        assert res.new_objects == 0, name  # every blob and the manifest deduplicated
    assert_bit_identical(dict(reg.get("mixed").tensors().items()), reference_delta(zoo.base, ft))


# --- versions, refs, tags ----------------------------------------------------------------------


def _record_files(reg) -> list[str]:
    return sorted(p.relative_to(reg.root).as_posix() for p in pathlib.Path(reg.root, "refs").rglob("*.json"))


def test_versioning(reg, zoo):
    base, ft = zoo.base, zoo.finetuned["sentiment"]
    meta = zoo.meta["sentiment"]
    first = reg.create("sent", base, ft, **meta)
    assert first.created and first.ref == "sent@1"
    objects_before = set(reg.objects.ids())

    again = reg.create("sent", base, ft, **meta)
    assert not again.created
    assert again.ref == "sent@1" and again.record == first.record
    assert _record_files(reg) == ["refs/sent/1.json"]

    relabeled = reg.create("sent", base, ft, **{**meta, "lr": 3e-4}, meta={"seed": 1})
    assert relabeled.created and relabeled.ref == "sent@2"
    assert relabeled.record.vector_id == first.record.vector_id
    assert relabeled.new_objects == 0
    assert set(reg.objects.ids()) == objects_before  # nothing new stored at all

    other = reg.create("sent", base, zoo.finetuned["topic"], **meta)
    assert other.created and other.ref == "sent@3"
    assert other.record.vector_id != first.record.vector_id
    # re-creating an older version's content makes a new version (latest changes)
    back = reg.create("sent", base, ft, **meta)
    assert back.ref == "sent@1" and not back.created

    assert [r.version for r in reg.versions("sent")] == [1, 2, 3]
    assert _record_files(reg) == ["refs/sent/1.json", "refs/sent/2.json", "refs/sent/3.json"]
    assert [(r["version"], r["lr"]) for r in reg.log("sent")] == [(3, 0.01), (2, 3e-4), (1, 0.01)]
    assert reg.log("sent")[1]["meta"] == {"seed": 1}
    rows = reg.sql("SELECT version, vector_id FROM versions WHERE name = 'sent' ORDER BY version")
    assert [r["vector_id"] for r in rows] == [first.record.vector_id] * 2 + [other.record.vector_id]


def test_ref_resolution(filled, zoo):
    filled.create("sentiment", zoo.base, zoo.finetuned["topic"])  # sentiment@2
    v1, v2 = filled.get("sentiment@1"), filled.get("sentiment@2")
    assert filled.get("sentiment").ref == "sentiment@2"
    assert filled.get("sentiment").vector_id == v2.vector_id
    assert v1.version == 1 and v1.vector_id != v2.vector_id
    topic = filled.get("topic")
    by_prefix = filled.get(topic.vector_id[:8])
    assert by_prefix.vector_id == topic.vector_id and by_prefix.ref == "topic@1"
    assert filled.get(topic.vector_id).vector_id == topic.vector_id
    # sentiment@2 shares its content with topic@1: the prefix names the first version made
    assert v2.vector_id == topic.vector_id
    # names win over id prefixes
    filled.create(v1.vector_id[:8], zoo.base, zoo.finetuned["toxicity"])
    assert filled.get(v1.vector_id[:8]).vector_id == filled.get("toxicity").vector_id
    assert filled.get(v1.vector_id[:9]).vector_id == v1.vector_id

    with pytest.raises(NotFound):
        filled.get("nosuch")
    with pytest.raises(NotFound):
        filled.get("sentiment@3")
    with pytest.raises(NotFound):
        filled.get("sentiment@prod")
    with pytest.raises(NotFound):
        filled.get("nosuch@1")
    with pytest.raises(NotFound):
        filled.get("f" * 64)
    with pytest.raises(NotFound):  # five hex digits are too short for a prefix: only a name
        filled.get(topic.vector_id[:5])
    for bad in ("Sentiment", "sentiment@0", "sentiment@", "@1", "sentiment@Prod", "a//b"):
        with pytest.raises(InvalidRef):
            filled.get(bad)


def test_ambiguous_prefix(filled):
    vid = filled.get("topic").vector_id
    twin = vid[:8] + ("0" if vid[8] != "0" else "1") + vid[9:]
    # another vector whose id shares the first 8 digits (as a pulled or future one could)
    con = duckdb.connect(filled.catalog.path)
    try:
        con.execute("INSERT INTO vectors SELECT ? AS vector_id, * EXCLUDE (vector_id) FROM vectors "
                    "WHERE vector_id = ?", [twin, vid])
    finally:
        con.close()
    with pytest.raises(AmbiguousRef):
        filled.get(vid[:8])
    assert filled.get(vid[:9]).vector_id == vid
    assert issubclass(AmbiguousRef, InvalidInput)


def test_tags_move(filled, zoo):
    filled.create("sentiment", zoo.base, zoo.finetuned["topic"])
    rec, previous = filled.tag("sentiment@1", "prod")
    assert previous is None and rec.version == 1
    assert filled.get("sentiment@prod").version == 1
    rec, previous = filled.tag("sentiment", "prod")
    assert previous == 1 and rec.version == 2
    assert filled.get("sentiment@prod").version == 2
    assert filled.get("sentiment@prod").vector_id == filled.get("sentiment@2").vector_id
    rec, previous = filled.tag("sentiment@prod", "stable")
    assert previous is None and rec.version == 2
    # tags persist in the store: a new handle sees them
    with tvreg.open(filled.root) as other:
        assert other.get("sentiment@prod").version == 2
    rows = filled.sql("SELECT name, tag, version FROM tags ORDER BY tag")
    assert rows == [{"name": "sentiment", "tag": "prod", "version": 2},
                    {"name": "sentiment", "tag": "stable", "version": 2}]
    with pytest.raises(InvalidName):
        filled.tag("sentiment@1", "Prod")
    with pytest.raises(InvalidName):
        filled.tag("sentiment@1", "3")
    with pytest.raises(NotFound):
        filled.tag("nosuch", "prod")


# --- bad input leaves the registry as it was ---------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(zoo, tmp_path_factory):
    ft = zoo.finetuned["sentiment"]
    d = tmp_path_factory.mktemp("bad")

    def nan(sd):
        sd["mlp.fc2.weight"][3, 5] = float("nan")

    def inf(sd):
        sd["norm.bias"][0] = float("inf")

    def extra(sd):
        sd["extra.weight"] = torch.zeros(2)

    return {
        "missing_tensor": save_variant(ft, d / "missing.safetensors", lambda sd: sd.pop("head.bias")),
        "extra_tensor": save_variant(ft, d / "extra.safetensors", extra),
        "shape": save_variant(ft, d / "shape.safetensors",
                              lambda sd: sd.update({"mlp.fc1.weight": sd["mlp.fc1.weight"][:, :-1]})),
        # floating tensors may differ in dtype (tests/test_mixed_dtypes.py); integer ones not
        "dtype": save_variant(ft, d / "dtype.safetensors",
                              lambda sd: sd.update({"position_ids": sd["position_ids"].int()})),
        "nan": save_variant(ft, d / "nan.safetensors", nan),
        "inf": save_variant(ft, d / "inf.safetensors", inf),
        "garbage": _write(d / "garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
    }


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case,error,names", [
    ("missing_tensor", IncompatibleCheckpoints, ["head.bias"]),
    ("extra_tensor", IncompatibleCheckpoints, ["extra.weight"]),
    ("shape", IncompatibleCheckpoints, ["mlp.fc1.weight"]),
    ("dtype", IncompatibleCheckpoints, ["position_ids"]),
    ("nan", NonFiniteValues, ["mlp.fc2.weight"]),
    ("inf", NonFiniteValues, ["norm.bias"]),
    ("garbage", CheckpointError, ["garbage.safetensors"]),
])
def test_bad_checkpoints_leave_registry_unchanged(shared, zoo, bad_checkpoints, case, error, names):
    before = snapshot(shared.root)
    with pytest.raises(error) as info:
        shared.create("sentiment", zoo.base, bad_checkpoints[case], **zoo.meta["sentiment"])
    for n in names:
        assert n in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(shared.root) == before
    # the other way round too (the bad file as the base)
    if case not in ("nan", "inf"):
        with pytest.raises(error):
            shared.create("sentiment", bad_checkpoints[case], zoo.base)
        assert snapshot(shared.root) == before
    assert shared.verify().ok


def test_bad_arguments_leave_registry_unchanged(shared, zoo, tmp_path):
    before = snapshot(shared.root)
    base, ft = zoo.base, zoo.finetuned["sentiment"]
    attempts = [
        (CheckpointError, dict(name="x", base=tmp_path / "nope.safetensors", finetuned=ft)),
        (CheckpointError, dict(name="x", base=base, finetuned=tmp_path / "nope")),
        (InvalidName, dict(name="Bad Name", base=base, finetuned=ft)),
        (InvalidName, dict(name="../escape", base=base, finetuned=ft)),
        (InvalidName, dict(name="x.json", base=base, finetuned=ft)),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, meta={"bad key": 1})),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, meta={"k": [1]})),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, lr=-1.0)),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, lr=float("nan"))),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, steps=True)),
        (InvalidInput, dict(name="x", base=base, finetuned=ft, task="")),
    ]
    for error, kwargs in attempts:
        with pytest.raises(error):
            shared.create(**kwargs)
        assert snapshot(shared.root) == before, kwargs
    assert shared.verify().ok


def test_allow_nonfinite_stores_nan(filled, zoo, bad_checkpoints):
    res = filled.create("nan", zoo.base, bad_checkpoints["nan"], allow_nonfinite=True)
    assert res.created
    got = filled.get("nan").tensor("mlp.fc2.weight")
    want = reference_delta(zoo.base, bad_checkpoints["nan"])["mlp.fc2.weight"]
    assert torch.isnan(got[3, 5]) and int(torch.isnan(got).sum()) == 1
    assert _raw(got) == _raw(want)
    assert filled.verify().ok


@pytest.mark.parametrize("case", ["nan", "missing_tensor", "garbage"])
def test_failed_first_create_leaves_no_folder(reg, reg_path, zoo, bad_checkpoints, case):
    assert not reg_path.exists()
    with pytest.raises(tvreg.TvregError):
        reg.create("x", zoo.base, bad_checkpoints[case])
    assert not reg_path.exists()
    with pytest.raises(InvalidName):
        reg.create("X", zoo.base, zoo.finetuned["topic"])
    with pytest.raises(CheckpointError):
        reg.create("x", zoo.base, reg_path.parent / "missing.safetensors")
    assert not reg_path.exists()
    with pytest.raises(NotFound):
        reg.ls()
    assert not reg_path.exists()
    # and the registry works afterwards
    assert reg.create("x", zoo.base, zoo.finetuned["topic"]).ref == "x@1"


def test_create_while_another_process_is_initializing(reg, reg_path, zoo):
    """A registry folder with only the layout folders and the temp file of config.json (another
    process is between making them and linking config.json in place) is not "a non-empty folder
    that is not a registry"."""
    for sub in ("objects", "refs", "tags", "tmp"):
        (reg_path / sub).mkdir(parents=True)
    (reg_path / ".tmp-config").write_bytes(b'{"format": "tvreg.regi')
    assert reg.create("x", zoo.base, zoo.finetuned["topic"]).ref == "x@1"
    assert reg.verify().ok


def test_refuses_a_foreign_folder(reg, reg_path, zoo):
    reg_path.mkdir()
    (reg_path / "thesis.tex").write_text("precious")
    with pytest.raises(InvalidInput):
        reg.create("x", zoo.base, zoo.finetuned["topic"])
    assert snapshot(reg_path) == {"thesis.tex": b"precious"}


# --- catalog and SQL ---------------------------------------------------------------------------


def test_sql_sees_versions(filled, zoo):
    filled.create("sentiment", zoo.base, zoo.finetuned["sentiment"], task="sentiment",
                  dataset="sst2", lr=2e-5, steps=7, meta={"seed": 3, "note": "x"})
    rows = filled.sql("SELECT name, version, task, dataset, lr, steps, meta FROM versions "
                      "ORDER BY name, version")
    assert [(r["name"], r["version"]) for r in rows] == [
        ("sentiment", 1), ("sentiment", 2), ("topic", 1), ("toxicity", 1)]
    for r in rows[:1] + rows[2:]:
        assert {k: r[k] for k in ("task", "dataset", "lr", "steps")} == zoo.meta[r["name"]]
        assert r["meta"] == {}
    assert (rows[1]["task"], rows[1]["dataset"], rows[1]["lr"], rows[1]["steps"]) == \
        ("sentiment", "sst2", 2e-5, 7)
    assert rows[1]["meta"] == {"seed": 3, "note": "x"}
    assert filled.sql("SELECT count(*) AS n FROM versions WHERE meta->>'$.seed' = '3'") == [{"n": 1}]
    latest = filled.sql("SELECT name, version FROM latest ORDER BY name")
    assert [(r["name"], r["version"]) for r in latest] == [("sentiment", 2), ("topic", 1),
                                                           ("toxicity", 1)]
    n = filled.sql("SELECT count(*) AS n FROM tensors t JOIN versions v USING (vector_id) "
                   "WHERE v.name = 'topic'")
    assert n == [{"n": len(filled.get("topic").names())}]
    assert filled.sql("EXPLAIN SELECT 1")  # EXPLAIN is allowed
    cols, table = filled.sql_table("SELECT name FROM versions WHERE version = 99")
    assert cols == ["name"] and table == []


@pytest.mark.parametrize("query", [
    "INSERT INTO tags VALUES ('topic', 'x', 1, 'y', now())",
    "DELETE FROM versions",
    "UPDATE versions SET lr = 1",
    "DROP TABLE versions",
    "CREATE TABLE t (x INTEGER)",
    "COPY versions TO '{out}/dump.csv'",
    "ATTACH '{out}/other.db' AS other",
    "EXPORT DATABASE '{out}/export'",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "INSTALL httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/*')",
    "EXPLAIN ANALYZE COPY versions TO '{out}/dump.csv'",
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE versions",
    "SELEC name FROM versions",
    "SELECT nosuchcolumn FROM versions",
    "SELECT * FROM nosuchtable",
    "",
])
def test_sql_refuses_writes_and_files(shared, tmp_path, query):
    out = tmp_path / "out"
    out.mkdir()
    before = catalog_dump(shared)
    catalog_bytes = pathlib.Path(shared.catalog.path).read_bytes()
    with pytest.raises(SQLError) as info:
        shared.sql(query.format(out=out))
    assert "\n" not in str(info.value)
    assert catalog_dump(shared) == before
    assert pathlib.Path(shared.catalog.path).read_bytes() == catalog_bytes
    assert list(out.iterdir()) == []
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message


# --- reindex -----------------------------------------------------------------------------------


def test_deleted_catalog_is_rebuilt_on_next_read(filled, zoo):
    filled.tag("topic@1", "prod")
    before = catalog_dump(filled)
    ls_before = filled.ls()
    os.remove(filled.catalog.path)
    assert filled.ls() == ls_before  # the same handle, in the same process
    assert catalog_dump(filled) == before
    os.remove(filled.catalog.path)
    with tvreg.open(filled.root) as fresh:  # a new process would do this
        assert fresh.sql("SELECT name, version FROM versions ORDER BY name") == [
            {"name": n, "version": 1} for n in sorted(zoo.finetuned)]
        assert fresh.get("topic@prod").version == 1
        assert catalog_dump(fresh) == before


def test_deleted_catalog_then_create_keeps_every_version(filled, zoo):
    os.remove(filled.catalog.path)
    filled.create("new", zoo.base, zoo.finetuned["topic"])
    names = [r["name"] for r in filled.sql("SELECT name FROM versions ORDER BY name")]
    assert names == ["new", "sentiment", "topic", "toxicity"]
    assert filled.verify().ok


def test_reindex_rebuilds_identical_tables(filled, zoo):
    filled.create("sentiment", zoo.base, zoo.finetuned["topic"], meta={"k": "v"})
    filled.tag("sentiment@1", "prod")
    filled.tag("topic", "stable")
    before = catalog_dump(filled)
    assert len(before["versions"]) == 4 and len(before["tags"]) == 2
    assert len(before["tensors"]) == 3 * 12
    counts = filled.reindex()
    assert counts == {"versions": 4, "vectors": 3, "tags": 2, "bases": 0, "base_names": 0,
                      "problems": []}
    assert catalog_dump(filled) == before
    # and from nothing
    os.remove(filled.catalog.path)
    with tvreg.open(filled.root) as fresh:
        fresh.reindex()
        assert catalog_dump(fresh) == before


def test_reindex_skips_and_reports_corrupt_records(filled):
    flip_byte(pathlib.Path(filled.root, "refs", "topic", "1.json"))
    counts = filled.reindex()
    assert counts["versions"] == 2
    assert len(counts["problems"]) == 1 and counts["problems"][0].startswith("refs/topic/1.json")
    assert [r["name"] for r in filled.ls()] == ["sentiment", "toxicity"]


def test_reindex_skips_versions_whose_manifest_is_gone(filled):
    vid = filled.get("topic@1").vector_id
    pathlib.Path(filled.root, "objects", vid[:2], vid[2:]).unlink()
    counts = filled.reindex()
    assert counts["versions"] == 2 and "manifest" in counts["problems"][0]
    assert "missing" in counts["problems"][0]


# --- verify ------------------------------------------------------------------------------------


def test_verify_ok(shared):
    rep = shared.verify()
    assert rep.ok, rep.problems
    assert rep.versions == 3 and rep.tags == 0
    assert rep.objects == len(list(shared.objects.ids()))
    assert rep.bytes == sum(p.stat().st_size for p in pathlib.Path(shared.root, "objects").rglob("*")
                            if p.is_file())


def test_verify_deep_decodes_every_tensor(filled, monkeypatch):
    vectors = {r["vector_id"] for r in filled.sql("SELECT vector_id FROM versions")}
    rep = filled.verify(deep=True)
    assert rep.ok, rep.problems
    assert rep.tensors == sum(len(filled.manifest(v).tensors) for v in vectors) > 0
    assert filled.verify().tensors == 0
    # a decoder that no longer reproduces the stored bytes (a broken upgrade, say): the blobs'
    # hashes still match, so only decoding and checking the tensors' sha256 can tell
    from tvreg.codecs import BgZstd

    good = BgZstd.decode_into

    def broken(self, data, dest, pool=None):
        good(self, data, dest, pool)
        dest[:1] ^= 1

    monkeypatch.setattr(BgZstd, "decode_into", broken)
    assert filled.verify().ok
    rep = filled.verify(deep=True)
    assert not rep.ok and sum("sha256" in p for p in rep.problems) == rep.tensors
    name = filled.get("topic").names()[0]
    filled.get("topic").tensors()[name]  # by default reads trust the checked blobs
    with pytest.raises(CorruptObject, match="sha256"):
        tvreg.open(filled.root, check_tensors=True).get("topic").tensors()[name]


def test_verify_finds_flipped_blob_and_reads_refuse_it(filled, tmp_path):
    vec = filled.get("sentiment")
    entry = vec.manifest.tensor("mlp.fc1.weight")
    blob = entry.chunks[0].blob
    flip_byte(object_path(filled, blob))
    rep = filled.verify()
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert blob in text and "sentiment@1" in text
    assert "topic" not in text and "toxicity" not in text
    with pytest.raises(CorruptObject):
        filled.get("sentiment").tensors()["mlp.fc1.weight"]
    with pytest.raises(CorruptObject):
        filled.get("sentiment").state_dict()
    assert filled.get("sentiment").tensors()["head.weight"].shape == (4, 32)  # others still read
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorruptObject):
        filled.export("sentiment", out / "tv.safetensors")
    assert list(out.iterdir()) == []  # no partial file, no temp file
    filled.export("topic", out / "topic.safetensors")


def test_verify_finds_flipped_record(filled):
    flip_byte(pathlib.Path(filled.root, "refs", "topic", "1.json"))
    rep = filled.verify()
    assert not rep.ok
    assert any("refs/topic/1.json" in p for p in rep.problems)
    with pytest.raises(FormatError):
        filled.get("topic@1")


def test_verify_finds_flipped_tag(filled):
    filled.tag("topic", "prod")
    flip_byte(pathlib.Path(filled.root, "tags", "topic", "prod.json"))
    rep = filled.verify()
    assert any("tags/topic/prod.json" in p for p in rep.problems)


def test_verify_finds_missing_blob(filled):
    vec = filled.get("toxicity")
    blob = vec.manifest.tensor("embed.weight").chunks[0].blob
    object_path(filled, blob).unlink()
    rep = filled.verify()
    assert not rep.ok
    assert any(blob in p and "missing" in p for p in rep.problems)
    assert any("toxicity@1" in p for p in rep.problems)
    with pytest.raises(CorruptObject):
        filled.get("toxicity").tensors()["embed.weight"]


def test_verify_finds_corrupt_manifest(filled):
    vid = filled.get("topic").vector_id
    flip_byte(object_path(filled, vid))
    rep = filled.verify()
    assert any(vid in p for p in rep.problems)
    assert any("topic@1" in p for p in rep.problems)
    with pytest.raises(CorruptObject):
        filled.get("topic")


def test_verify_finds_stale_catalog(filled):
    pathlib.Path(filled.root, "refs", "topic", "1.json").unlink()
    rep = filled.verify()
    assert any("catalog" in p for p in rep.problems)
    filled.reindex()
    assert filled.verify().ok


# --- gc ----------------------------------------------------------------------------------------


def test_gc(filled):
    referenced = set(filled.objects.ids())
    for oid in referenced:  # referenced objects are never collected, however old
        os.utime(object_path(filled, oid), (OLD, OLD))
    old_orphan = filled.objects.put(b"left behind by a crashed create")
    os.utime(object_path(filled, old_orphan), (OLD, OLD))
    new_orphan = filled.objects.put(b"being written by a create right now")
    old_scratch = pathlib.Path(filled.scratch, "stage-old")
    old_scratch.mkdir()
    (old_scratch / "x").write_bytes(b"x")
    os.utime(old_scratch, (OLD, OLD))
    new_scratch = pathlib.Path(filled.scratch, "stage-new")
    new_scratch.mkdir()

    before = snapshot(filled.root)
    dry = filled.gc(dry_run=True)
    assert (dry.deleted_objects, dry.kept_recent, dry.scratch_removed) == (1, 1, 1)
    assert dry.deleted_bytes == len(b"left behind by a crashed create")
    assert snapshot(filled.root) == before

    rep = filled.gc()
    assert (rep.deleted_objects, rep.kept_recent, rep.scratch_removed) == (1, 1, 1)
    assert set(filled.objects.ids()) == referenced | {new_orphan}
    assert not object_path(filled, old_orphan).exists()
    assert not old_scratch.exists() and new_scratch.exists()
    assert filled.verify().ok
    assert filled.gc().deleted_objects == 0
    # with no grace period the recent orphan goes too, and nothing referenced does
    filled.gc(grace_seconds=0)
    assert set(filled.objects.ids()) == referenced
    assert filled.verify().ok
    for name in ("sentiment", "topic", "toxicity"):
        assert len(filled.get(name).state_dict()) == 12


def test_gc_keeps_objects_of_every_version(filled, zoo):
    # sentiment@2 points at another vector; sentiment@1's objects are still referenced by @1
    filled.create("sentiment", zoo.base, zoo.finetuned["topic"])
    ids = set(filled.objects.ids())
    filled.gc(grace_seconds=0)
    assert set(filled.objects.ids()) == ids
    assert filled.verify().ok


def test_gc_refuses_when_a_manifest_is_missing(filled):
    vid = filled.get("topic").vector_id
    object_path(filled, vid).unlink()
    ids = set(filled.objects.ids())
    with pytest.raises(FormatError):
        filled.gc(grace_seconds=0)
    assert set(filled.objects.ids()) == ids


# --- concurrency -------------------------------------------------------------------------------


_WORKER = textwrap.dedent("""
    import json, os, sys, time
    import tvreg
    root, me, base, ft, go = sys.argv[1:6]
    open(go + "." + me, "w").close()
    deadline = time.time() + 120
    while not os.path.exists(go):
        if time.time() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    refs = []
    with tvreg.open(root) as reg:
        for k in range(3):
            refs.append(reg.create("shared", base, ft, steps=k, meta={"proc": me}).ref)
        refs.append(reg.create("own-" + me, base, ft, meta={"proc": me}).ref)
    print(json.dumps(refs))
""")


@pytest.mark.parametrize("initialized", [True, False], ids=["existing", "new-registry"])
def test_concurrent_creates_from_two_processes(reg, reg_path, zoo, tmp_path, initialized):
    if initialized:
        reg.init()
    go = tmp_path / "go"
    fts = {"a": zoo.finetuned["sentiment"], "b": zoo.finetuned["topic"]}
    procs = {me: subprocess.Popen([sys.executable, "-c", _WORKER, str(reg_path), me, str(zoo.base),
                                   str(ft), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, ft in fts.items()}
    try:
        deadline = time.time() + 120
        while not all(pathlib.Path(f"{go}.{me}").exists() for me in procs):
            assert all(p.poll() is None for p in procs.values()), \
                {me: p.communicate() for me, p in procs.items()}
            assert time.time() < deadline
            time.sleep(0.01)
        go.touch()
        outs = {me: p.communicate(timeout=240) for me, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert {me: p.returncode for me, p in procs.items()} == {"a": 0, "b": 0}, outs
    refs = {me: json.loads(out) for me, (out, _err) in outs.items()}
    shared = refs["a"][:3] + refs["b"][:3]
    assert sorted(shared) == [f"shared@{i}" for i in range(1, 7)]  # distinct, no gaps
    assert refs["a"][3] == "own-a@1" and refs["b"][3] == "own-b@1"

    vector_of = {me: reg.create("probe-" + me, zoo.base, ft).record.vector_id
                 for me, ft in fts.items()}
    records = reg.versions("shared")
    assert [r.version for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        me = r.metadata.meta["proc"]
        assert r.vector_id == vector_of[me]
        assert r.ref in refs[me]
    assert sorted((r.metadata.meta["proc"], r.metadata.steps) for r in records) == \
        [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    rows = reg.sql("SELECT name, version FROM versions ORDER BY name, version")
    assert [(r["name"], r["version"]) for r in rows] == \
        [("own-a", 1), ("own-b", 1), ("probe-a", 1), ("probe-b", 1)] + \
        [("shared", i) for i in range(1, 7)]
    rep = reg.verify()
    assert rep.ok, rep.problems
    assert not list(pathlib.Path(reg.scratch).iterdir())


_SLOW_REINDEX = textwrap.dedent("""
    import os, sys, time
    import tvreg
    from tvreg.repo.repo import Repo
    root, listed, proceed = sys.argv[1:4]
    readable = Repo.readable

    def paused(self, prefix, read, problems):
        found = readable(self, prefix, read, problems)
        if prefix == "refs":  # the store is listed; hold the rebuild open until told to go on
            open(listed, "w").close()
            deadline = time.time() + 60
            while not os.path.exists(proceed) and time.time() < deadline:
                time.sleep(0.005)
        return found

    Repo.readable = paused
    with tvreg.open(root) as reg:
        print(reg.reindex()["versions"])
""")


def test_a_version_indexed_during_a_reindex_is_not_lost(filled, reg_path, zoo, tmp_path):
    """reindex lists the store under the catalog's write lock: a version created while it runs
    waits for the rebuild and is indexed after it, instead of being indexed and then wiped."""
    import threading

    listed, proceed = tmp_path / "listed", tmp_path / "proceed"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_REINDEX, str(reg_path), str(listed),
                             str(proceed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not listed.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.005)
        made = []
        creator = threading.Thread(target=lambda: made.append(
            filled.create("late", zoo.base, zoo.finetuned["topic"]).ref))
        creator.start()
        creator.join(timeout=2.0)  # blocks on the catalog lock while the rebuild holds it
        proceed.touch()
        out, err = proc.communicate(timeout=120)
        creator.join(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.split() == ["3"] and made == ["late@1"]
    names = [r["name"] for r in filled.sql("SELECT name FROM versions ORDER BY name")]
    assert names == ["late", "sentiment", "topic", "toxicity"]


def test_create_with_many_versions_reads_only_candidates(reg, zoo, monkeypatch):
    """Past a few dozen versions, create reads only the versions the catalog does not show
    under another vector; the dedup rule and the numbering are unchanged."""
    from tvreg.repo.repo import Repo
    from tvreg.repo.write import READ_ALL_VERSIONS as _READ_ALL_VERSIONS

    tasks = list(zoo.finetuned)
    n = _READ_ALL_VERSIONS + 6
    for i in range(n):
        task = tasks[i % 3]
        reg.create("many", zoo.base, zoo.finetuned[task], steps=i, similarities=False)
    read = []
    real = Repo.read_record
    monkeypatch.setattr(Repo, "read_record", lambda self, key: read.append(key) or real(self, key))
    again = reg.create("many", zoo.base, zoo.finetuned[tasks[1]], steps=4, similarities=False)
    assert (again.created, again.record.version) == (False, 5)  # the same content exists as @5
    assert len(read) == len([i for i in range(n) if i % 3 == 1])  # only topic's versions
    read.clear()
    new = reg.create("many", zoo.base, zoo.finetuned[tasks[1]], steps=999, similarities=False)
    assert (new.created, new.record.version) == (True, n + 1)
    os.remove(reg.catalog.path)  # no catalog: every version is read
    read.clear()
    assert reg.create("many", zoo.base, zoo.finetuned[tasks[2]], steps=5,
                      similarities=False).record.version == 6
