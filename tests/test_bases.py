"""Stored bases (`tvreg base …`, `Registry.add_base`): real toy checkpoints, a real registry and
catalog, real remotes (a directory, moto's S3 server, an HTTP server)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from helpers import new_remote, snapshot
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.errors import (
    CorruptObject,
    IncompatibleCheckpoints,
    InvalidInput,
    NotFound,
    ReadOnlyRegistry,
)


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _object(reg, oid: str) -> pathlib.Path:
    return pathlib.Path(reg.root, "objects", oid[:2], oid[2:])


def _same_files(a, b) -> None:
    ta, tb = load_file(a), load_file(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert ta[k].view(-1).view(torch.uint8).equal(tb[k].view(-1).view(torch.uint8)), k


def _stored(root) -> dict:
    """What a write could change: objects, records, bases (not the catalog's file)."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith("catalog.duckdb")}


@pytest.fixture
def based(reg, zoo):
    """A registry holding the toy base (named toy) and sentiment@1, topic@1."""
    reg.add_base(zoo.base, name="toy")
    for task in ("sentiment", "topic"):
        reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task], similarities=False)
    return reg


# --- add, dedup, names --------------------------------------------------------------------------


def test_add_stores_every_tensor_bit_for_bit_under_the_base_hash(reg, zoo):
    res = reg.add_base(zoo.base)
    assert res.created and res.new_objects == len(load_file(zoo.base)) + 1  # blobs + manifest
    created = reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], similarities=False)
    assert res.base_hash == created.record.base_hash  # hashed as vectors hash their base
    doc = json.loads(pathlib.Path(reg.root, "bases", f"{res.base_hash}.json").read_bytes())
    assert doc["format"] == "tvreg.base/1" and doc["manifest"] == res.record.manifest
    ck = reg.stored_base(res.base_hash)
    original = load_file(zoo.base)
    assert ck.names() == sorted(original) and "position_ids" in ck.names()  # int64 kept
    for name, t in original.items():
        got = ck.tensor(name)
        assert got.dtype == t.dtype and torch.equal(got, t), name
        assert ck.info(name).dtype == str(t.dtype).removeprefix("torch.")
    buf = torch.empty(original["head.weight"].numel(), dtype=torch.float32)
    assert torch.equal(ck.tensor("head.weight", out=buf), original["head.weight"])
    assert reg.stored_base("0" * 64) is None


def test_second_add_writes_nothing_and_says_so(run, reg_path, zoo):
    run("base", "add", str(zoo.base))
    before = _stored(reg_path)
    out = run("base", "add", str(zoo.base), "--json")
    doc = json.loads(out.stdout)
    assert doc["created"] is False and doc["new_objects"] == 0
    assert "already stored, nothing written" in out.stderr
    assert _stored(reg_path) == before


def test_add_repairs_a_base_whose_blob_was_lost(reg, zoo):
    res = reg.add_base(zoo.base)
    blob = sorted(reg.manifest(res.record.manifest).blob_ids())[0]
    _object(reg, blob).unlink()
    assert not reg.verify().ok
    again = reg.add_base(zoo.base)
    assert not again.created and again.new_objects == 1
    assert reg.verify().ok


def test_names_move_and_resolve_with_hash_prefixes(run, reg, zoo, zoo_bf16):
    a = reg.add_base(zoo.base, name="toy")
    assert a.previous is None
    b = reg.add_base(zoo_bf16.base, name="toy")  # moves the name
    assert b.previous == a.base_hash
    assert reg.base("toy").base_hash == b.base_hash
    assert reg.base(a.base_hash[:8]).base_hash == a.base_hash
    assert reg.base(a.base_hash).base_hash == a.base_hash
    doc, previous = reg.name_base(a.base_hash[:10], "fp32")
    assert (doc.base_hash, previous) == (a.base_hash, None)
    assert reg.name_base("fp32", "fp32")[1] == a.base_hash  # unchanged
    rows = {r["base_hash"]: r for r in reg.bases()}
    assert rows[a.base_hash]["names"] == ["fp32"] and rows[b.base_hash]["names"] == ["toy"]
    assert rows[b.base_hash]["n_floating"] == rows[b.base_hash]["n_tensors"] - 1
    with pytest.raises(InvalidInput, match="hash prefix of 8-64"):
        reg.base(a.base_hash[:7].upper())
    with pytest.raises(NotFound, match="no stored base named"):
        reg.base("nope")
    r = run("base", "show", "nope", code=2)
    assert "no stored base named or with a hash starting with 'nope'" in r.stderr
    out = json.loads(run("base", "show", "toy", "--json", "--tensors").stdout)
    assert out["names"] == ["toy"] and len(out["tensors"]) == out["n_tensors"]
    assert "toy" in run("base", "ls").stdout
    assert "moved from" in run("base", "name", "fp32", "toy").stderr


def test_catalog_reindex_and_sql(based):
    before = based.sql("SELECT * FROM bases"), based.sql("SELECT * FROM base_names")
    pathlib.Path(based.catalog.path).unlink()
    counts = based.reindex()
    assert (counts["bases"], counts["base_names"], counts["problems"]) == (1, 1, [])
    assert (based.sql("SELECT * FROM bases"), based.sql("SELECT * FROM base_names")) == before
    rows = based.sql("SELECT v.name, n.name AS base FROM versions v JOIN base_names n "
                     "USING (base_hash) ORDER BY v.name")
    assert rows == [{"name": "sentiment", "base": "toy"}, {"name": "topic", "base": "toy"}]
    assert based.bases()[0]["n_versions"] == 2


# --- apply without --base, export ---------------------------------------------------------------


def test_apply_without_base_is_bit_identical_to_apply_with_it(run, based, zoo, tmp_path):
    run("apply", "0.5*sentiment + topic", "--base", str(zoo.base), "-o", str(tmp_path / "a.safetensors"))
    r = run("apply", "0.5*sentiment + topic", "-o", str(tmp_path / "b.safetensors"))
    assert "stored base" in r.stderr
    run("apply", "0.5*sentiment + topic", "--base", "toy", "-o", str(tmp_path / "c.safetensors"),
        "--dtype", "bfloat16")
    _same_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    run("apply", "0.5*sentiment + topic", "--base", str(zoo.base), "-o", str(tmp_path / "d.safetensors"),
        "--dtype", "bfloat16")
    _same_files(tmp_path / "c.safetensors", tmp_path / "d.safetensors")
    assert based.apply("sentiment", output=tmp_path / "e.safetensors") > 0
    # the Python search uses it too
    res = based.search_coefficients("sentiment", lambda sd: float(sd["head.bias"].sum()), [0, 1])
    assert len(res["rows"]) == 2


def test_apply_checks_a_stored_base_like_a_file(based, zoo_bf16, tmp_path):
    other = based.add_base(zoo_bf16.base, name="bf16")
    with pytest.raises(IncompatibleCheckpoints, match="stored base bf16 is not the vectors'"):
        based.apply("sentiment", "bf16", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and other.created


def test_apply_with_no_stored_base_is_exit_2_and_writes_nothing(run, reg_path, filled, tmp_path):
    before = snapshot(reg_path)
    r = run("apply", "sentiment", "-o", str(tmp_path / "m.safetensors"), code=2)
    h = filled.get("sentiment").base_hash
    assert (f"no stored base for {h[:12]}…: pass --base P or run `tvreg base add P`"
            in r.stderr)
    assert not (tmp_path / "m.safetensors").exists()
    assert snapshot(reg_path) == before
    r = run("apply", "sentiment", "--base", "no-such-thing", "-o", str(tmp_path / "m.safetensors"), code=2)
    assert "no such file or directory, nor a stored base name" in r.stderr


def test_export_round_trip_is_bit_exact(run, based, zoo, tmp_path):
    out = tmp_path / "base-out.safetensors"
    run("base", "export", "toy", str(out))
    _same_files(out, zoo.base)
    again = based.add_base(out)
    assert not again.created and again.new_objects == 0


# --- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_are_exit_2_and_leave_the_registry_as_it_was(run, reg_path, based, zoo,
                                                              tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    ints = tmp_path / "ints.safetensors"
    save_file({"a": torch.arange(4)}, str(ints))
    # same floating tensors as the stored base, other int buffer: one hash, two contents
    sd = load_file(zoo.base)
    sd["position_ids"] = sd["position_ids"].flip(0).contiguous()
    twin = tmp_path / "twin.safetensors"
    save_file(sd, str(twin))
    before = snapshot(reg_path)
    cases = [
        (("base", "add", str(text)), "unknown checkpoint format"),
        (("base", "add", str(tmp_path / "missing.safetensors")), "no such file"),
        (("base", "add", str(ints)), "no floating tensors"),
        (("base", "add", str(zoo.base), "--name", "Bad Name"), "invalid name"),
        (("base", "add", str(twin)), "other non-floating tensors (position_ids)"),
        (("base", "show", "deadbeef"), "no stored base"),
        (("base", "export", "nope", str(tmp_path / "o.safetensors")), "no stored base"),
        (("base", "export", "toy", str(tmp_path / "no" / "o.safetensors")), "does not exist"),
        (("base", "name", "nope", "x"), "no stored base"),
    ]
    for args, expected in cases:
        r = run(*args, code=2)
        assert expected in r.stderr, (args, r.stderr)
        assert snapshot(reg_path) == before, args


def test_a_new_registry_is_made_only_once_the_base_is_stored(tmp_path, zoo):
    root = tmp_path / "new"
    with pytest.raises(InvalidInput):
        tvreg.open(root).add_base(tmp_path / "missing.safetensors")
    assert not root.exists()
    with tvreg.open(root) as reg:
        assert reg.add_base(zoo.base).created and reg.bases()[0]["n_versions"] == 0


# --- gc and verify ------------------------------------------------------------------------------


def test_gc_keeps_base_objects(reg, zoo, tmp_path):
    res = reg.add_base(zoo.base)
    rep = reg.gc(grace_seconds=0)
    assert rep.deleted_objects == 0
    reg.export_base(res.base_hash[:8], tmp_path / "x.safetensors")
    _same_files(tmp_path / "x.safetensors", zoo.base)
    # without the record nothing keeps them
    pathlib.Path(reg.root, "bases", f"{res.base_hash}.json").unlink()
    assert reg.gc(grace_seconds=0).deleted_objects == res.new_objects


def test_gc_refuses_when_a_base_record_is_damaged(reg, zoo):
    res = reg.add_base(zoo.base)
    _flip(pathlib.Path(reg.root, "bases", f"{res.base_hash}.json"))
    with pytest.raises(tvreg.FormatError, match="gc refused"):
        reg.gc(grace_seconds=0)


def test_verify_catches_a_flipped_byte_in_a_base_blob(run, based):
    rep = based.verify(deep=True)
    assert rep.ok and rep.bases == 1 and rep.base_names == 1
    assert rep.tensors == 2 * 12 + 13  # two vectors and the base, every tensor decoded
    rec = based.base("toy")
    blob = sorted(based.manifest(rec.manifest).blob_ids())[0]
    _flip(_object(based, blob))
    rep = based.verify()
    assert f"object {blob} is corrupted (its sha256 does not match its name)" in rep.problems
    assert f"base {rec.base_hash[:12]} is incomplete or corrupted" in rep.problems
    r = run("verify", code=1)
    assert "1 bases" in r.stderr
    with pytest.raises(CorruptObject):
        based.stored_base(rec.base_hash).tensor(
            next(t.name for t in based.manifest(rec.manifest).tensors
                 if any(c.blob == blob for c in t.chunks)))


def test_verify_reports_names_of_missing_bases_and_a_stale_catalog(based):
    rec = based.base("toy")
    pathlib.Path(based.root, "bases", f"{rec.base_hash}.json").unlink()
    problems = based.verify().problems
    assert f"base name toy points at base {rec.base_hash[:12]}, which is not stored" in problems
    assert any("catalog is out of date (0 base(s) missing, 1 extra)" in p for p in problems)


def test_deep_verify_recomputes_the_base_hash(reg, zoo, tmp_path):
    """A manifest rewritten with consistent blobs and sha256s but another base hash: only the
    deep check, which rehashes the decoded tensors, can tell."""
    from tvreg.format.bases import BaseRecord
    from tvreg.format.manifest import Manifest

    res = reg.add_base(zoo.base)
    m = reg.manifest(res.record.manifest)
    forged = Manifest("f" * 64, m.arch_fingerprint, m.tensors, ())
    fid = reg.objects.put(forged.to_bytes())
    rec = BaseRecord.of(forged, fid, res.record.created_at)
    reg.store.write_new(rec.key, rec.to_bytes())
    reg.reindex()
    assert reg.verify().ok
    deep = reg.verify(deep=True).problems
    assert deep == [f"base ffffffffffff: its tensors hash to {res.base_hash[:12]}, not to its "
                    "base hash", "base ffffffffffff is incomplete or corrupted"]


# --- remotes ------------------------------------------------------------------------------------


@pytest.fixture(params=["dir", "s3"])
def remote_url(request, tmp_path):
    return new_remote(request.param, tmp_path, request)


def test_push_and_pull_with_base(based, tmp_path, remote_url, zoo):
    url, options = remote_url
    based.add_remote("origin", url, options)
    first = based.push(with_base=True)
    assert (first.bases_sent, first.base_names_sent) == (1, 1)
    again = based.push(with_base=True)
    assert (again.objects_sent, again.bases_sent, again.base_names_sent) == (0, 0, 0)
    with tvreg.open(tmp_path / "clone") as clone:
        clone.add_remote("origin", url, options)
        rep = clone.pull(with_base=True, similarities=False)
        assert (rep.bases_fetched, rep.base_names_set, rep.versions_fetched) == (1, 1, 2)
        assert clone.base("toy").base_hash == based.base("toy").base_hash
        clone.apply("sentiment - topic", output=tmp_path / "clone.safetensors")
        based.apply("sentiment - topic", zoo.base, tmp_path / "origin.safetensors")
        _same_files(tmp_path / "clone.safetensors", tmp_path / "origin.safetensors")
        assert clone.verify(deep=True).ok
        assert clone.pull(with_base=True).bases_fetched == 0


def test_pull_with_base_of_a_remote_without_it_writes_nothing(run, filled, tmp_path, reg_path):
    filled.add_remote("origin", str(tmp_path / "remote"))
    filled.push()
    with tvreg.open(tmp_path / "clone") as clone:
        clone.add_remote("origin", str(tmp_path / "remote"))
        before = snapshot(clone.root)
        with pytest.raises(NotFound, match="remote origin has no stored base .* pull without "
                           "--with-base, or push it there with `tvreg push --with-base`"):
            clone.pull("origin", ["sentiment"], with_base=True)
        assert snapshot(clone.root) == before
    # and pushing bases that are not stored here is refused before anything is sent
    remote_before = snapshot(tmp_path / "remote")
    r = run("push", "--with-base", code=2)
    assert "no stored base for" in r.stderr and "run `tvreg base add P` first" in r.stderr
    assert snapshot(tmp_path / "remote") == remote_before


def test_a_remote_opened_by_url_serves_its_bases(based, tmp_path, serve_http):
    folder = tmp_path / "served"
    based.add_remote("origin", str(folder))
    based.push(with_base=True)
    for url in ("file://" + str(folder), serve_http(folder)):
        with tvreg.open(url, cache=tmp_path / f"cache-{len(url)}") as remote:
            remote.apply("sentiment", output=tmp_path / "u.safetensors")
            based.apply("sentiment", "toy", tmp_path / "l.safetensors")
            _same_files(tmp_path / "u.safetensors", tmp_path / "l.safetensors")
            assert remote.base("toy").base_hash == based.base("toy").base_hash
            # an HTTP remote cannot list bases/: ls shows none there (its index lists versions)
            assert len(remote.bases()) == (1 if url.startswith("file:") else 0)
            with pytest.raises(ReadOnlyRegistry):
                remote.add_base(tmp_path / "l.safetensors")
    # pull over HTTP: base records are read by their keys (bases/ cannot be listed there, so
    # base names do not come along)
    with tvreg.open(tmp_path / "clone") as clone:
        clone.add_remote("web", serve_http(folder))
        rep = clone.pull("web", with_base=True, similarities=False)
        assert (rep.bases_fetched, rep.base_names_set) == (1, 0)
        clone.apply("sentiment", output=tmp_path / "c.safetensors")
        _same_files(tmp_path / "c.safetensors", tmp_path / "l.safetensors")


# --- documents: format, schemas, strict parsing -------------------------------------------------


def _schema(name: str):
    import importlib.resources

    import jsonschema

    text = (importlib.resources.files("tvreg.schema") / "json" / f"{name}.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_documents_follow_their_schemas_and_broken_ones_are_refused(based):
    from tvreg.errors import FormatError
    from tvreg.format.bases import BaseName, BaseRecord
    from tvreg.format.records import seal

    root = pathlib.Path(based.root)
    rec = json.loads((root / "bases" / f"{based.base('toy').base_hash}.json").read_bytes())
    name = json.loads((root / "bases" / "names" / "toy.json").read_bytes())
    manifest = json.loads(_object(based, rec["manifest"]).read_bytes())
    assert not list(_schema("base").iter_errors(rec))
    assert not list(_schema("base-name").iter_errors(name))
    assert not list(_schema("manifest").iter_errors(manifest))  # a base's manifest is one too
    assert {t["dtype"] for t in manifest["tensors"]} == {"float32", "int64"}
    body = {k: v for k, v in rec.items() if k != "checksum"}
    broken = {"extra key": {**body, "names": ["toy"]}, "bad format": {**body, "format": "x"},
              "bad hash": {**body, "base_hash": "F" * 64},
              "negative size": {**body, "n_params": -1},
              "bool size": {**body, "raw_bytes": True}, "bad time": {**body, "created_at": "now"}}
    for label, doc in broken.items():
        with pytest.raises(FormatError):
            BaseRecord.from_bytes(seal(doc), label)
        if label != "bool size":  # JSON Schema integers accept no booleans either
            assert list(_schema("base").iter_errors({**doc, "checksum": "0" * 64})), label
    nbody = {k: v for k, v in name.items() if k != "checksum"}
    for doc in ({**nbody, "name": "Bad"}, {**nbody, "base_hash": "1"}, {**nbody, "x": 1}):
        with pytest.raises(FormatError):
            BaseName.from_bytes(seal(doc))
        assert list(_schema("base-name").iter_errors({**doc, "checksum": "0" * 64}))
    # a record copied to another base's key is refused
    other = root / "bases" / f"{'e' * 64}.json"
    other.write_bytes((root / "bases" / f"{rec['base_hash']}.json").read_bytes())
    with pytest.raises(FormatError, match="base record names"):
        based.base("e" * 64)
