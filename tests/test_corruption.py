"""Damaged bytes, on purpose: a flipped, truncated, extended or deleted byte of any object
(blob, manifest), record, tag, base record or base name is detected on read, by `verify` and by
`pull` (the remote's copy damaged), and `verify --repair REMOTE` puts back what a remote holds
intact. Each case damages a fresh copy of one real registry (and of its pushed directory
remote). benchmarks/bench_corruption.py runs the same checks over 1,000+ random flips."""

from __future__ import annotations

import json
import pathlib
import random
import shutil
import uuid

import pytest
import torch
from helpers import snapshot

import tvreg
from tvreg.errors import CorruptObject, FormatError, NotFound, ReadOnlyRegistry
from tvreg.storage.objects import object_key

DAMAGE = (CorruptObject, FormatError)


# --- the registry every case damages a copy of -------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, zoo):
    """A registry with three vectors, a composed version, a tag, a stored base with a name and
    an exact-mode vector (read through that base), pushed with its base to a directory remote.
    Never changed: tests damage copies."""
    root = tmp_path_factory.mktemp("corruption")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_NO_PROGRESS", "1")
        with tvreg.open(root / "registry") as reg:
            for task, path in zoo.finetuned.items():
                reg.create(task, zoo.base, path, **zoo.meta[task], similarities=False)
            reg.tag("topic@1", "prod")
            reg.save_composition("mix", reg.resolve("topic - 0.5*toxicity"), similarities=False)
            reg.add_base(zoo.base, "toy")
            reg.create("exact", zoo.base, zoo.finetuned["sentiment"], exact=True,
                       similarities=False)
            reg.add_remote("origin", str(root / "remote"))
            reg.push(with_base=True)
    return root


@pytest.fixture
def copy(pristine, tmp_path):
    """A fresh copy of the registry (its remote `origin` is the pristine remote)."""
    shutil.copytree(pristine / "registry", tmp_path / "registry")
    with tvreg.open(tmp_path / "registry") as reg:
        yield reg


def _keys(reg) -> dict[str, str]:
    """One key of each kind, chosen so that each is read by known refs only."""
    vectors = {r: reg.get(r).manifest for r in ("sentiment", "topic", "toxicity", "mix", "exact")}
    base = reg.base("toy")
    base_manifest = reg.manifest(base.manifest)
    others = set().union(*(m.blob_ids() for r, m in vectors.items() if r != "sentiment"),
                         base_manifest.blob_ids())
    only_sentiment = sorted(vectors["sentiment"].blob_ids() - others)[0]
    head = base_manifest.tensor("head.weight").chunks[0].blob
    return {"blob": object_key(only_sentiment),
            "manifest": object_key(reg.get("topic").vector_id),
            "record": "refs/toxicity/1.json",
            "tag": "tags/topic/prod.json",
            "base record": base.key,
            "base name": "bases/names/toy.json",
            "base manifest": object_key(base.manifest),
            "base blob": object_key(head)}


#: the reads each kind's damage must fail (the others must still read, exactly)
AFFECTED = {"blob": {"sentiment"},
            "manifest": {"topic", "topic@prod"},
            "record": {"toxicity"},
            "tag": {"topic@prod"},
            "base record": {"exact", "base:toy", "base:hash"},
            "base name": {"base:toy"},
            "base manifest": {"exact", "base:toy", "base:hash"},
            "base blob": {"exact", "base:toy", "base:hash"}}
READS = ("sentiment", "topic", "topic@prod", "toxicity", "mix", "exact", "base:toy", "base:hash")


def _read(reg, what: str, out: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor a read gives: a version's (decoded, blobs checked), or a stored base's as
    exported to a safetensors file (by name or by hash prefix)."""
    from safetensors.torch import load_file

    if what.startswith("base:"):
        ref = "toy" if what == "base:toy" else reg.sql("SELECT base_hash FROM bases")[0]["base_hash"][:12]
        path = out / f"{uuid.uuid4().hex}.safetensors"
        reg.export_base(ref, path)
        return load_file(path)
    return reg.get(what).state_dict()


@pytest.fixture(scope="module")
def expected(pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("reads")
    with tvreg.open(pristine / "registry") as reg:
        return {what: _read(reg, what, out) for what in READS}


def _flip(path: pathlib.Path, position: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def _check_detected(reg, key: str, kind: str, expected, out: pathlib.Path) -> None:
    """verify names the damaged key; every read of it fails with a damage error; every other
    read still gives exactly what it gave before."""
    from tvreg.repo.repo import _BASE_MANIFESTS as _MANIFESTS

    rep = reg.verify()
    assert not rep.ok and key in rep.damaged, (key, rep.problems)
    for what in READS:
        _MANIFESTS.clear()  # as in a fresh process (this one keeps verified base manifests)
        if what in AFFECTED[kind]:
            with pytest.raises(DAMAGE):
                _read(reg, what, out)
        else:
            got = _read(reg, what, out)
            assert got.keys() == expected[what].keys()
            assert all(torch.equal(got[n], expected[what][n]) for n in got), what


# --- detection: on read and by verify ----------------------------------------------------------


def _positions(size: int, seed: str) -> list[int]:
    rng = random.Random(seed)
    return sorted({0, size - 1, rng.randrange(size), rng.randrange(size)})


@pytest.mark.parametrize("kind", sorted(AFFECTED))
def test_flipped_byte_is_detected_on_read_and_by_verify(copy, kind, expected, tmp_path):
    """The first byte, the last, and two random ones (seeded) of one file of each kind, each
    flipped alone (masks 0x01, 0x80, 0xFF: low bit, high bit, all bits)."""
    key = _keys(copy)[kind]
    path = pathlib.Path(copy.root, key)
    original = path.read_bytes()
    for i, position in enumerate(_positions(len(original), kind)):
        _flip(path, position, (0x01, 0x80, 0xFF, 0x20)[i % 4])
        _check_detected(copy, key, kind, expected, tmp_path)
        path.write_bytes(original)
    assert copy.verify().ok


@pytest.mark.parametrize("kind", ["blob", "manifest", "record", "base record"])
@pytest.mark.parametrize("how", ["truncated", "extended", "emptied", "deleted", "3 bytes"])
def test_truncated_extended_or_deleted_file_is_detected(copy, kind, how, expected, tmp_path):
    key = _keys(copy)[kind]
    path = pathlib.Path(copy.root, key)
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-1])
    elif how == "extended":
        path.write_bytes(data + b"\n")
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "deleted":
        path.unlink()
    else:
        for position in (1, len(data) // 2, len(data) - 2):
            _flip(path, position)
    if how == "deleted" and kind in ("record", "base record"):
        # a deleted document is gone, not damaged: the catalog still lists it, so verify names
        # it, and a read of it finds nothing
        rep = copy.verify()
        assert rep.damaged.get(key) == "missing", rep.problems
        return
    _check_detected(copy, key, kind, expected, tmp_path)


def test_corrupt_bytes_are_never_exported(copy, tmp_path):
    _flip(pathlib.Path(copy.root, _keys(copy)["blob"]), 7)
    with pytest.raises(CorruptObject):
        copy.export("sentiment", tmp_path / "tv.safetensors")
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*"))
    with pytest.raises(CorruptObject):
        copy.apply("sentiment", None, tmp_path / "model.safetensors")
    assert not list(tmp_path.glob("*.safetensors"))


def test_cli_verify_reports_each_damaged_file(copy, run):
    keys = _keys(copy)
    for kind in ("blob", "record", "tag", "base name"):
        _flip(pathlib.Path(copy.root, keys[kind]), 3)
    r = run("--registry", copy.root, "verify", "--json", code=1)
    damaged = json.loads(r.stdout)["damaged"]
    assert damaged == {keys[k]: "corrupted" for k in ("blob", "record", "tag", "base name")}


# --- detection: on pull, the remote's copy damaged ---------------------------------------------


def _remote_copy(pristine, tmp_path) -> pathlib.Path:
    dest = tmp_path / "remote"
    shutil.copytree(pristine / "remote", dest)
    return dest


@pytest.mark.parametrize("kind", sorted(AFFECTED))
def test_flipped_byte_on_the_remote_is_detected_on_pull(pristine, tmp_path, kind):
    with tvreg.open(pristine / "registry") as reg:
        key = _keys(reg)[kind]
    remote = _remote_copy(pristine, tmp_path)
    path = remote / key
    _flip(path, len(path.read_bytes()) // 3)
    clone = tvreg.open(tmp_path / "clone")
    clone.add_remote("origin", str(remote))
    before = snapshot(tmp_path / "clone" / "refs")
    if kind in ("tag", "base name"):
        # movable pointers: the versions are pulled, the damaged one is not, and is reported
        rep = clone.pull(with_base=True)
        assert rep.versions_fetched == 5
        assert [p for p in rep.problems if key in p] and len(rep.problems) == 1
        assert not (tmp_path / "clone" / key).exists()
        assert clone.verify(deep=True).ok
        return
    with pytest.raises(CorruptObject, match=key.replace(".", r"\.")):
        clone.pull(with_base=True)
    assert snapshot(tmp_path / "clone" / "refs") == before  # no version was pulled
    assert clone.verify().ok  # and what was kept of the objects is intact


def test_cli_pull_warns_about_a_damaged_remote_tag(pristine, tmp_path, run):
    remote = _remote_copy(pristine, tmp_path)
    _flip(remote / "tags/topic/prod.json", 10)
    clone = str(tmp_path / "clone")
    run("--registry", clone, "remote", "add", "origin", str(remote))
    r = run("--registry", clone, "pull")
    assert r.stderr.startswith("warning: remote origin: tags/topic/prod.json is not valid JSON "
                               "(corrupted?) (not pulled)\n")
    assert "5 version(s)" in r.stderr


# --- verify --repair ---------------------------------------------------------------------------


def _damage_everything(reg) -> dict[str, str]:
    """Flip a byte of one file of every kind, and delete a record and a blob (of other
    vectors). Returns key -> how."""
    keys = _keys(reg)
    for kind, key in keys.items():
        _flip(pathlib.Path(reg.root, key), 5)
    mix = reg.get("mix").manifest
    blob = sorted(mix.blob_ids())[0]
    pathlib.Path(reg.root, object_key(blob)).unlink()
    pathlib.Path(reg.root, "refs/exact/1.json").unlink()
    return {**{k: "corrupted" for k in keys.values()}, object_key(blob): "missing",
            "refs/exact/1.json": "missing"}


def _store(root) -> dict:
    """The registry's objects, records and base records (tags and base names are put back as
    the remote holds them: the push wrote them there, at another time)."""
    snap = snapshot(pathlib.Path(root))
    return {k: v for k, v in snap.items()
            if k.startswith(("objects/", "refs/", "bases/")) and not k.startswith("bases/names/")
            and v is not None}


def reg_base_hash(pristine) -> str:
    with tvreg.open(pristine / "registry") as reg:
        return reg.base("toy").base_hash


def test_repair_puts_back_every_kind_from_a_directory_remote(copy, pristine, run, tmp_path):
    damage = _damage_everything(copy)
    first = copy.verify()
    assert first.damaged == damage
    r = run("--registry", copy.root, "verify", "--repair", "origin", "--json")
    out = json.loads(r.stdout)
    assert out["ok"] and out["problems"] == [] and out["damaged"] == {}
    assert out["repair"] == {"remote": "origin", "repaired": sorted(damage), "unrepaired": [],
                             "reindexed": False}
    for key in damage:
        assert f"repaired: {key} (from origin)" in r.stderr
    assert _store(copy.root) == _store(pristine / "registry")  # byte for byte
    assert copy.tag_record("topic", "prod").version == 1
    assert copy.base("toy").base_hash == reg_base_hash(pristine)
    assert copy.verify(deep=True).ok
    assert run("--registry", copy.root, "verify", "--repair", "origin").stderr.endswith("ok\n")


def test_repair_follows_a_repaired_manifest_to_its_missing_blobs(copy, pristine):
    """A damaged manifest hides which blobs it names: once it is back, its missing blobs are
    fetched in the next round."""
    vec = copy.get("topic")
    _flip(pathlib.Path(copy.root, object_key(vec.vector_id)), 0)
    blobs = sorted(vec.manifest.blob_ids())
    for blob in blobs[:3]:
        pathlib.Path(copy.root, object_key(blob)).unlink()
    assert set(copy.verify().damaged) == {object_key(vec.vector_id)}  # the blobs are unknown
    rep = copy.verify(repair="origin")
    assert rep.ok and rep.repaired == sorted([object_key(vec.vector_id)]
                                             + [object_key(b) for b in blobs[:3]])
    assert _store(copy.root) == _store(pristine / "registry")


def test_repair_reports_what_the_remote_lacks_or_has_damaged_too(copy, pristine, tmp_path, run):
    remote = _remote_copy(pristine, tmp_path)
    copy.add_remote("backup", str(remote))
    keys = _keys(copy)
    for kind in ("blob", "manifest", "record", "tag"):
        _flip(pathlib.Path(copy.root, keys[kind]), 2)
    (remote / keys["blob"]).unlink()                       # the remote lacks it
    _flip(remote / keys["manifest"], 2)                    # damaged there too
    _flip(remote / keys["record"], 2)
    stray = copy.objects.put(b"written, never referenced")  # garbage, damaged, not on the remote
    _flip(pathlib.Path(copy.root, object_key(stray)), 0)
    before = snapshot(pathlib.Path(copy.root))
    r = run("--registry", copy.root, "verify", "--repair", "backup", code=1)
    assert f"not repaired: {keys['blob']}: remote backup does not have it\n" in r.stderr
    assert f"not repaired: {keys['manifest']}: remote backup has it damaged too" in r.stderr
    assert f"not repaired: {keys['record']}: remote backup has no intact copy" in r.stderr
    assert (f"not repaired: {object_key(stray)}: remote backup does not have it (nothing "
            "references it: `tvreg gc` removes it)") in r.stderr
    assert f"repaired: {keys['tag']} (from backup)" in r.stderr
    after = snapshot(pathlib.Path(copy.root))
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert {k for k in changed if not k.startswith("catalog.duckdb")} == {keys["tag"]}
    rep = copy.verify(repair="origin")  # the pristine remote has the rest but the stray object
    assert rep.unrepaired == [f"{object_key(stray)}: remote origin does not have it (nothing "
                              "references it: `tvreg gc` removes it)"]
    assert rep.problems == [f"object {stray} is corrupted (its sha256 does not match its name)"]


def test_repair_takes_a_record_only_where_the_catalog_vouches_for_it(copy, tmp_path):
    """The catalog, written when the record was, is the witness: once a rebuild has left the
    damaged version out, no remote copy can be checked, and the record is left alone."""
    path = pathlib.Path(copy.root, "refs/toxicity/1.json")
    _flip(path, 9)
    damaged = path.read_bytes()
    assert copy.reindex()["problems"]
    rep = copy.verify(repair="origin")
    assert rep.unrepaired == ["refs/toxicity/1.json: the catalog does not list this version, so "
                              "no remote copy can be checked against it"]
    assert path.read_bytes() == damaged and not rep.ok


def test_repair_reindexes_a_version_left_out_while_its_manifest_was_damaged(copy, pristine):
    vid = copy.get("topic@1").vector_id
    _flip(pathlib.Path(copy.root, object_key(vid)), 4)
    assert copy.reindex()["problems"] and "topic" not in {r["name"] for r in copy.ls()}
    rep = copy.verify(repair="origin")
    assert rep.ok and rep.reindexed and rep.repaired == [object_key(vid)]
    assert [r["version"] for r in copy.log("topic")] == [1]


def test_repair_finds_a_renumbered_version_under_its_remote_number(pristine, tmp_path, zoo):
    """Pulled into a registry where topic@1 was taken, the remote's topic@1 is topic@2 here:
    its damaged record is rebuilt, byte for byte, from the remote's topic@1."""
    clone = tvreg.open(tmp_path / "clone")
    clone.create("topic", zoo.base, zoo.finetuned["toxicity"], similarities=False)
    clone.add_remote("origin", str(pristine / "remote"))
    assert clone.pull(refs=["topic@1"], similarities=False).renumbered == {"topic@1": "topic@2"}
    path = tmp_path / "clone" / "refs/topic/2.json"
    good = path.read_bytes()
    _flip(path, 20)
    rep = clone.verify(repair="origin")
    assert rep.ok and rep.repaired == ["refs/topic/2.json"] and path.read_bytes() == good


def test_repair_from_http_and_s3_remotes(copy, pristine, serve_http, s3_endpoint, tmp_path):
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    options = {"endpoint_url": s3_endpoint, "skip_instance_cache": True,
               "use_listings_cache": False}
    copy.add_remote("s3", f"s3://{bucket}/team", options)
    copy.push("s3", with_base=True)
    copy.add_remote("web", serve_http(pristine / "remote"))
    for remote in ("web", "s3"):
        damage = _damage_everything(copy)
        rep = copy.verify(repair=remote)
        assert rep.ok and rep.repaired == sorted(damage), (remote, rep.unrepaired)
        assert _store(copy.root) == _store(pristine / "registry")


def test_repair_is_refused_before_anything_when_the_remote_is_unknown(copy, run):
    _flip(pathlib.Path(copy.root, _keys(copy)["blob"]), 1)
    before = snapshot(pathlib.Path(copy.root))
    with pytest.raises(NotFound, match="no remote 'nowhere'"):
        copy.verify(repair="nowhere")
    r = run("--registry", copy.root, "verify", "--repair", "nowhere", code=2)
    assert "no remote 'nowhere'" in r.stderr
    assert snapshot(pathlib.Path(copy.root)) == before


def test_repair_of_a_registry_opened_by_url_is_refused(pristine, tmp_path):
    with tvreg.open("file://" + str(pristine / "remote"), cache=tmp_path / "cache") as reg:
        with pytest.raises(ReadOnlyRegistry):
            reg.verify(repair="origin")


def test_restore_checks_the_bytes_and_replaces_atomically(copy):
    oid = copy.get("sentiment").vector_id
    path = pathlib.Path(copy.root, object_key(oid))
    good = path.read_bytes()
    _flip(path, 0)
    damaged = path.read_bytes()
    with pytest.raises(CorruptObject, match="do not match its name"):
        copy.objects.restore(oid, good[:-1])
    assert path.read_bytes() == damaged  # nothing written
    assert copy.objects.restore(oid, good) and path.read_bytes() == good
    assert not copy.objects.restore(oid, good)  # intact: not written again
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_restored_document_is_not_written_over_a_repaired_one(copy):
    """Documents are put back only while they are still damaged (another repair may have won):
    never a second write over good bytes."""
    from tvreg.maintenance import repair
    from tvreg.storage.documents import read_record

    path = pathlib.Path(copy.root, "refs/sentiment/1.json")
    good = path.read_bytes()
    with pytest.raises(repair._NotRepaired, match="took its place"):
        repair._put(copy, "refs/sentiment/1.json", b"{}", "missing", read_record)
    repair._put(copy, "refs/sentiment/1.json", b"{}", "corrupted", read_record)
    assert path.read_bytes() == good
