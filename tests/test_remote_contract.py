"""One remote contract, run against every backend: a directory, memory://, S3 (moto's real
server on loopback, through s3fs) and HTTP (the standard library's server, read-only, serving a
directory that was pushed to). Push, pull, the remote index (ls/sql --remote), tvreg.open(URL),
renumbering, corrupted objects and interrupted transfers."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from helpers import snapshot

import tvreg
from tvreg.errors import CorruptObject, InvalidInput, NotFound, ReadOnlyRegistry, RemoteError
from tvreg.storage.objects import object_key
from tvreg.stores import Store


@dataclass
class Backend:
    kind: str
    push_url: str                  # where pushes go
    pull_url: str                  # where pulls and tvreg.open read (the same but for HTTP)
    options: dict[str, Any] = field(default_factory=dict)
    pull_options: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(params=["dir", "memory", "s3", "http"])
def backend(request, tmp_path) -> Backend:
    kind = request.param
    if kind == "dir":
        url = str(tmp_path / "remote")
        return Backend(kind, url, "file://" + url)
    if kind == "memory":
        url = f"memory://tvreg-{uuid.uuid4().hex}/r"
        return Backend(kind, url, url)
    if kind == "http":
        folder = tmp_path / "served"
        folder.mkdir()
        return Backend(kind, str(folder), request.getfixturevalue("serve_http")(folder))
    endpoint = request.getfixturevalue("s3_endpoint")
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    options = {"endpoint_url": endpoint, "skip_instance_cache": True, "use_listings_cache": False}
    return Backend(kind, f"s3://{bucket}/team", f"s3://{bucket}/team", options, options)


@pytest.fixture
def origin(tmp_path, zoo, backend):
    """A registry with three vectors, a tag and a composed version, pushed to the backend."""
    reg = tvreg.open(tmp_path / "origin")
    for task, path in zoo.finetuned.items():
        reg.create(task, zoo.base, path, **zoo.meta[task], similarities=False)
    reg.create("topic", zoo.base, zoo.finetuned["sentiment"], steps=7, similarities=False)
    reg.tag("topic@1", "prod")
    reg.save_composition("mix", reg.resolve("topic@1 - 0.5*toxicity"), similarities=False)
    reg.add_remote("origin", backend.push_url, backend.options)
    reg.push()
    yield reg
    reg.close()


def _clone(tmp_path, backend, name="clone") -> tvreg.Registry:
    reg = tvreg.open(tmp_path / name)
    reg.add_remote("origin", backend.pull_url, backend.pull_options)
    return reg


def _rows(reg) -> list[dict]:
    return reg.ls(all_versions=True)


def _same_tensors(a, b, ref: str) -> None:
    ta, tb = a.get(ref).tensors(), b.get(ref).tensors()
    assert list(ta.keys()) == list(tb.keys())
    for name in ta.keys():
        assert torch.equal(ta[name], tb[name]), name


def _visible(reg) -> dict:
    """What a user of ``reg`` sees (records, tags, catalog rows): objects left out, since a pull
    may keep verified objects of a failed run for the next one."""
    root = reg.root
    return {"refs": snapshot(f"{root}/refs"), "tags": snapshot(f"{root}/tags"),
            "rows": _rows(reg) if reg.exists else None}


# --- the contract ------------------------------------------------------------------------------


def test_pull_everything_round_trips(origin, tmp_path, backend):
    clone = _clone(tmp_path, backend)
    rep = clone.pull()
    assert rep.versions_fetched == 5 and rep.tags_set == 1 and not rep.renumbered
    assert rep.objects_fetched == len(set(origin.objects.ids())) and rep.objects_skipped == 0
    assert _rows(clone) == _rows(origin)  # same versions, ids, metadata, creation times, tags
    for r in origin.all_records():
        assert clone.store.read(r.key) == origin.store.read(r.key)  # the same sealed records
        _same_tensors(origin, clone, r.ref)
    assert clone.show("mix")["parents"] == origin.show("mix")["parents"]
    assert clone.verify(deep=True).ok
    assert clone.sql("SELECT count(*) AS n FROM similarities")[0]["n"] > 0  # computed on pull
    again = clone.pull()
    assert (again.objects_fetched, again.versions_fetched, again.tags_set) == (0, 0, 0)
    assert again.versions_skipped == 5


def test_pull_selected_refs(origin, tmp_path, backend):
    clone = _clone(tmp_path, backend)
    rep = clone.pull(refs=["topic@prod"])
    assert rep.pulled == ["topic@1"] and rep.tags_set == 1
    assert [(r["name"], r["version"], r["tags"]) for r in _rows(clone)] == [("topic", 1, ["prod"])]
    assert clone.pull(refs=["toxicity@1", "sentiment"]).pulled == ["sentiment@1", "toxicity@1"]
    assert clone.pull(refs=["topic"]).pulled == ["topic@2"]
    with pytest.raises(NotFound):
        clone.pull(refs=["nope"])
    with pytest.raises(NotFound):
        clone.pull(refs=["topic@9"])
    with pytest.raises(NotFound):
        clone.pull(refs=["topic@missing-tag"])
    with pytest.raises(InvalidInput):
        clone.pull(refs=[origin.get("topic@1").vector_id[:12]])


def test_remote_index_answers_ls_and_sql(origin, tmp_path, backend, run):
    clone = _clone(tmp_path, backend)
    assert clone.remote_ls(all_versions=True) == _rows(origin)
    assert [r["name"] for r in clone.remote_ls()] == ["mix", "sentiment", "topic", "toxicity"]
    rows = clone.remote_sql("origin", "SELECT name, version, steps, recipe IS NOT NULL AS composed "
                                      "FROM versions WHERE name IN ('topic', 'mix') ORDER BY ALL")
    assert rows == [{"name": "mix", "version": 1, "steps": None, "composed": True},
                    {"name": "topic", "version": 1, "steps": 20, "composed": False},
                    {"name": "topic", "version": 2, "steps": 7, "composed": False}]
    assert not list((tmp_path / "clone").glob("objects/*"))  # nothing was pulled
    with pytest.raises(tvreg.SQLError):
        clone.remote_sql("origin", "DELETE FROM versions")
    with pytest.raises(tvreg.SQLError):
        clone.remote_sql("origin", f"SELECT * FROM read_text('{tmp_path}/clone/config.json')")


def test_open_url_reads_without_pulling(origin, tmp_path, backend):
    cache = tmp_path / "cache"
    with tvreg.open(backend.pull_url, options=backend.pull_options or None, cache=cache) as remote:
        assert _rows(remote) == _rows(origin)
        _same_tensors(origin, remote, "topic@prod")
        composed = remote.resolve("topic@1 - 0.5*toxicity").state_dict()
        expected = origin.get("mix").tensors()
        assert all(torch.allclose(composed[n], expected[n], atol=1e-6) for n in expected.keys())
        for write in (lambda: remote.tag("topic@1", "x"), lambda: remote.gc(),
                      lambda: remote.push(), lambda: remote.create("a", "b", "c")):
            with pytest.raises(ReadOnlyRegistry):
                write()
    cached = snapshot(cache / "objects")
    assert cached  # objects came through the cache, verified
    with tvreg.open(backend.pull_url, options=backend.pull_options or None, cache=cache) as again:
        _same_tensors(origin, again, "topic@prod")
    assert snapshot(cache / "objects") == cached  # served from the cache, nothing fetched again


def test_pull_renumbers_a_local_conflict(origin, tmp_path, backend, zoo):
    clone = _clone(tmp_path, backend)
    mine = clone.create("topic", zoo.base, zoo.finetuned["toxicity"], similarities=False).record
    rep = clone.pull(refs=["topic"])
    assert rep.renumbered == {"topic@1": "topic@2", "topic@2": "topic@3"}
    assert clone.get("topic@1").vector_id == mine.vector_id  # ours is untouched
    assert clone.get("topic@2").vector_id == origin.get("topic@1").vector_id
    assert clone.get("topic@prod").version == 2  # the tag follows its vector


def test_corrupted_remote_object_is_refused_naming_it(origin, tmp_path, backend, run):
    blob = sorted(origin.get("toxicity").manifest.blob_ids())[0]
    writer = tvreg.remote.config.Remote("w", tvreg.remote.config.normalize_url(backend.push_url),
                                  backend.options).store()
    data = bytearray(writer.read(object_key(blob)))
    data[len(data) // 2] ^= 0xFF
    writer.write(object_key(blob), bytes(data))
    clone = _clone(tmp_path, backend)
    clone.init()
    before = _visible(clone)
    with pytest.raises(CorruptObject, match=object_key(blob)):
        clone.pull()
    assert _visible(clone) == before
    r = run("--registry", str(tmp_path / "clone"), "pull", code=1)
    assert object_key(blob) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _visible(clone) == before
    assert clone.pull(refs=["sentiment"]).pulled == ["sentiment@1"]  # the rest is fine


class _Flaky(Store):
    """A store that fails (like a dropped connection) after ``budget`` object transfers."""

    def __init__(self, inner: Store, budget: int) -> None:
        self.inner, self.budget = inner, budget
        self.writable = inner.writable

    def _spend(self, key: str) -> None:
        if key.startswith("objects/"):
            self.budget -= 1
            if self.budget < 0:
                raise RemoteError(f"connection to {self.inner!r} dropped")

    def read(self, key):
        self._spend(key)
        return self.inner.read(key)

    def write_new(self, key, data):
        self._spend(key)
        return self.inner.write_new(key, data)

    def write(self, key, data):
        return self.inner.write(key, data)

    def write_file(self, key, path):
        return self.inner.write_file(key, path)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    exists = lambda self, key: self.inner.exists(key)  # noqa: E731
    size = lambda self, key: self.inner.size(key)  # noqa: E731
    mtime = lambda self, key: self.inner.mtime(key)  # noqa: E731
    delete = lambda self, key: self.inner.delete(key)  # noqa: E731
    touch = lambda self, key: self.inner.touch(key)  # noqa: E731
    list = lambda self, prefix="": self.inner.list(prefix)  # noqa: E731


def test_interrupted_pull_resumes(origin, tmp_path, backend, monkeypatch):
    clone = _clone(tmp_path, backend)
    clone.init()
    before = _visible(clone)
    real = tvreg.remote.config.Remote.reader
    monkeypatch.setattr(tvreg.remote.config.Remote, "reader", lambda self: _Flaky(real(self), 20))
    with pytest.raises(RemoteError, match="dropped"):
        clone.pull()
    assert _visible(clone) == before  # no version yet
    kept = len(set(clone.objects.ids()))
    assert kept > 0  # the vectors fetched whole before the drop are kept
    monkeypatch.setattr(tvreg.remote.config.Remote, "reader", real)
    rep = clone.pull()
    assert rep.objects_skipped >= kept and rep.objects_fetched == \
        len(set(origin.objects.ids())) - kept
    assert _rows(clone) == _rows(origin) and clone.verify().ok


def test_interrupted_push_leaves_no_dangling_record_and_resumes(tmp_path, zoo, backend,
                                                               monkeypatch):
    reg = tvreg.open(tmp_path / "origin")
    for task, path in zoo.finetuned.items():
        reg.create(task, zoo.base, path, similarities=False)
    reg.add_remote("origin", backend.push_url, backend.options)
    real = tvreg.remote.config.Remote.store
    monkeypatch.setattr(tvreg.remote.config.Remote, "store", lambda self: _Flaky(real(self), 25))
    with pytest.raises(RemoteError, match="dropped"):
        reg.push()
    monkeypatch.setattr(tvreg.remote.config.Remote, "store", real)
    clone = _clone(tmp_path, backend)
    if backend.kind != "http":  # no record was written, so nothing can name a missing object
        assert not list(real(clone.remote("origin")).list("refs"))
    rep = reg.push()
    assert rep.versions_sent == 3 and rep.objects_skipped >= 25
    assert clone.pull().versions_fetched == 3 and clone.verify(deep=True).ok


def test_cli_pull_ls_sql_and_registry_url(origin, tmp_path, backend, run):
    clone = tmp_path / "clone"
    base = ["--registry", str(clone)]
    run(*base, "remote", "add", "origin", backend.pull_url,
        *[a for k, v in backend.pull_options.items() for a in ("--option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")])
    listed = json.loads(run(*base, "ls", "--remote", "origin", "--all", "--json").stdout)
    assert [(r["name"], r["version"]) for r in listed] == \
        [("mix", 1), ("sentiment", 1), ("topic", 1), ("topic", 2), ("toxicity", 1)]
    assert "topic@2" in run(*base, "ls", "--remote", "origin").stdout
    got = json.loads(run(*base, "sql", "--remote", "origin", "--json",
                         "SELECT tag, version FROM tags").stdout)
    assert got == [{"tag": "prod", "version": 1}]
    r = run(*base, "pull", "origin", "topic@prod", "--json")
    assert json.loads(r.stdout)["pulled"] == ["topic@1"] and "pulled from origin" in r.stderr
    opts = [a for k, v in backend.pull_options.items()
            for a in ("--registry-option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    shown = json.loads(run("--registry", backend.pull_url, *opts, "show", "mix", "--json").stdout)
    assert shown["vector_id"] == origin.get("mix").vector_id
    r = run("--registry", backend.pull_url, *opts, "tag", "topic@1", "x", code=2)
    assert "read-only" in r.stderr
