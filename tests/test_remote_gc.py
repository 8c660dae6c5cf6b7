"""Orphans a failed push leaves on a remote (issue 14, item 13): `tvreg gc --remote NAME`, the
next successful push, and the remote locks that keep both safe against pushes in flight.

Against a directory remote and a real S3 endpoint (moto's server on loopback); a push is made to
fail by a real full disk (a small tmpfs) or killed by the fault hook (tvreg.util.faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import tvreg
from tvreg.cli.main import cli
from tvreg.remote.config import Remote
from tvreg.remote.gc import LOCKS, gc_lock, push_lock, read_locks
from tvreg.storage.objects import ObjectDB


def tv(registry, *args, code=0):
    r = CliRunner().invoke(cli, ["--registry", str(registry), *args], catch_exceptions=False)
    assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr)
    return r


def tv_process(registry, *args, **env):
    full = {**os.environ, "TVREG_HOME": str(registry), **env}
    return subprocess.run([sys.executable, "-m", "tvreg.cli", *args], env=full,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["dir", "s3"])
def remote(request, tmp_path):
    """(url, options, fault step kind of an exclusive create there)"""
    if request.param == "dir":
        return str(tmp_path / "remote"), {}, "link"
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return (f"s3://{bucket}/team", {"endpoint_url": endpoint, "skip_instance_cache": True,
                                    "use_listings_cache": False}, "put-new")


def store_of(url, options):
    from tvreg.remote.config import normalize_url

    return Remote("team", normalize_url(url), dict(options)).store()


def ids(store) -> set[str]:
    return set(ObjectDB(store).ids())


def add_remote(registry, url, options):
    opts = [a for k, v in options.items() for a in ("--option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    tv(registry, "remote", "add", "team", url, *opts)


def objects_of(registry, ref) -> set[str]:
    with tvreg.open(registry) as reg:
        rec, _ = reg.resolve_ref(ref)
        return reg.manifest(rec.vector_id).blob_ids() | {rec.vector_id}


def notes(registry) -> list[str]:
    folder = registry / "remote-state" / "team"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def pull_and_verify(tmp_path, url, options):
    other = tmp_path / f"puller-{uuid.uuid4().hex[:6]}"
    add_remote(other, url, options)
    tv(other, "pull", "team", "--no-similarities")
    r = tv(other, "verify", "--deep")
    assert "ok" in r.stderr
    return other


@pytest.fixture
def two(zoo, tmp_path):
    registry = tmp_path / "registry"
    for task in ("topic", "sentiment"):
        tv(registry, "create", task, "--base", str(zoo.base), "--finetuned",
           str(zoo.finetuned[task]), "--no-similarities")
    return registry


def killed_push(registry, kind, *args):
    """A push killed (SIGKILL) just before its first version record is claimed: every object
    it had to send is there, no record names them."""
    r = tv_process(registry, "push", "team", *args, TVREG_FAULT_KILL_AT=f"{kind}:refs/")
    assert r.returncode == -9, (r.returncode, r.stderr)


def test_gc_remote_removes_exactly_the_orphans_of_a_killed_push(two, remote, tmp_path):
    url, options, kind = remote
    add_remote(two, url, options)
    tv(two, "push", "team", "topic")
    store = store_of(url, options)
    referenced = ids(store)
    killed_push(two, kind)
    orphans = ids(store) - referenced
    assert orphans == objects_of(two, "sentiment") - referenced and orphans
    assert len(notes(two)) == 1
    assert len(list(store.list(LOCKS))) == 1  # the killed push's, left behind

    r = tv(two, "gc", "--remote", "team", "--grace", "0", "--dry-run", "--json")
    rep = json.loads(r.stdout)
    assert rep["dry_run"] and rep["deleted_objects"] == len(orphans)
    assert rep["stale_locks_removed"] == 1  # its holder is dead: stale, whatever its age
    assert ids(store) == referenced | orphans and len(list(store.list(LOCKS))) == 1
    assert len(notes(two)) == 1

    r = tv(two, "gc", "--remote", "team", "--grace", "0", "--json")
    rep = json.loads(r.stdout)
    assert rep["deleted_objects"] == len(orphans) and rep["deleted_bytes"] > 0
    assert rep["stale_locks_removed"] == 1 and rep["remote"] == "team"
    assert ids(store) == referenced
    assert list(store.list(LOCKS)) == [] and notes(two) == []
    other = pull_and_verify(tmp_path, url, options)
    assert "topic" in tv(other, "ls").stdout

    r = tv(two, "gc", "--remote", "team", "--grace", "0")
    assert "deleted 0 object(s)" in r.stderr and "remote team" in r.stderr


def test_the_next_successful_push_removes_the_orphans(two, remote, zoo, tmp_path):
    url, options, kind = remote
    add_remote(two, url, options)
    tv(two, "push", "team", "topic")
    store = store_of(url, options)
    referenced = ids(store)
    killed_push(two, kind)
    orphans = ids(store) - referenced
    assert orphans
    tv(two, "create", "toxicity", "--base", str(zoo.base), "--finetuned",
       str(zoo.finetuned["toxicity"]), "--no-similarities")
    r = tv(two, "push", "team", "toxicity", "--json")
    rep = json.loads(r.stdout)
    toxicity = objects_of(two, "toxicity")
    assert rep["orphans_removed"] == len(orphans - toxicity) > 0
    assert rep["orphan_bytes_removed"] > 0 and rep["orphans_note"] is None
    assert ids(store) == referenced | toxicity
    assert notes(two) == []
    assert f"removed {len(orphans - toxicity)} orphaned object(s)" in r.stderr
    r = tv(two, "push", "team", "toxicity", "--json")  # nothing left to collect
    assert json.loads(r.stdout)["orphans_removed"] == 0 and "orphaned" not in r.stderr
    other = pull_and_verify(tmp_path, url, options)
    listed = tv(other, "ls").stdout
    assert "topic" in listed and "toxicity" in listed and "sentiment" not in listed


def test_a_push_that_sends_nothing_leaves_no_note_and_no_lock(two, remote):
    url, options, _ = remote
    add_remote(two, url, options)
    tv(two, "push", "team")
    tv(two, "push", "team")
    assert notes(two) == [] and list(store_of(url, options).list(LOCKS)) == []


# --- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def full_remote(small_disk):
    return small_disk("2m") / "remote"


def test_orphans_of_a_push_to_a_full_remote(full_remote, tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    sds = {"base": {"w": np.zeros((64, 64), np.float32)},
           "big_base": {f"t{i}": np.zeros((256, 256), np.float32) for i in range(16)}}
    sds["small"] = {"w": rng.standard_normal((64, 64)).astype(np.float32)}
    sds["small2"] = {"w": rng.standard_normal((64, 64)).astype(np.float32)}
    sds["big"] = {f"t{i}": rng.standard_normal((256, 256)).astype(np.float32)
                  for i in range(16)}  # 4 MB: does not fit
    for name, sd in sds.items():
        paths[name] = str(tmp_path / f"{name}.safetensors")
        save_file(sd, paths[name])
    registry = tmp_path / "registry"
    for name, base in (("small", "base"), ("big", "big_base")):
        tv(registry, "create", name, "--base", paths[base], "--finetuned", paths[name],
           "--no-similarities")
    url = str(full_remote)
    add_remote(registry, url, {})
    tv(registry, "push", "team", "small")
    store = store_of(url, {})
    referenced = ids(store)

    r = tv(registry, "push", "team", "big", code=1)
    assert "full" in r.stderr and url in r.stderr
    orphans = ids(store) - referenced
    assert orphans and orphans < objects_of(registry, "big")
    assert list(store.list(LOCKS)) == []  # released on the way out
    r = tv(registry, "gc", "--remote", "team", "--grace", "0", "--json")
    assert json.loads(r.stdout)["deleted_objects"] == len(orphans)
    assert ids(store) == referenced and notes(registry) == []
    pull_and_verify(tmp_path, url, {})

    tv(registry, "push", "team", "big", code=1)  # fails again; a small push then collects
    orphans = ids(store) - referenced
    assert orphans
    tv(registry, "create", "small2", "--base", paths["base"], "--finetuned", paths["small2"],
       "--no-similarities")
    r = tv(registry, "push", "team", "small2", "--json")
    assert json.loads(r.stdout)["orphans_removed"] == len(orphans)
    assert ids(store) == referenced | objects_of(registry, "small2")
    pull_and_verify(tmp_path, url, {})


# --- the locks ---------------------------------------------------------------------------------


def _orphan(store) -> str:
    return ObjectDB(store).put(b"bytes no manifest names " + uuid.uuid4().bytes)


def test_gc_refuses_while_a_push_holds_its_lock(two, remote):
    url, options, _ = remote
    add_remote(two, url, options)
    tv(two, "push", "team", "topic")
    store = store_of(url, options)
    orphan = _orphan(store)
    before = ids(store)
    with push_lock(store, 5, "remote team"):
        for extra in ((), ("--dry-run",)):
            r = tv(two, "gc", "--remote", "team", "--grace", "0", *extra,
                   code=1 if not extra else 0)
            if not extra:
                err = r.stderr.strip()
                assert len(err.splitlines()) == 1, err
                assert "a push to remote team" in err and "in progress" in err, err
                assert "run gc again later" in err and "Traceback" not in err
        assert ids(store) == before  # nothing deleted
        assert [lk.kind for lk in read_locks(store)] == ["push"]  # its own lock went away
    r = tv(two, "gc", "--remote", "team", "--grace", "0", "--json")
    assert json.loads(r.stdout)["deleted_objects"] == 1 and orphan not in ids(store)


def test_gc_ignores_and_removes_a_stale_lock(two, remote):
    url, options, _ = remote
    add_remote(two, url, options)
    tv(two, "push", "team", "topic")
    store = store_of(url, options)
    _orphan(store)
    old = {"kind": "push", "host": "elsewhere", "pid": 4242, "time": time.time() - 7200}
    store.write(f"{LOCKS}/push-{uuid.uuid4().hex}.json", json.dumps(old).encode())
    fresh = dict(old, time=time.time())  # the same lock refreshed: not stale
    key = f"{LOCKS}/push-{uuid.uuid4().hex}.json"
    store.write(key, json.dumps(fresh).encode())
    tv(two, "gc", "--remote", "team", "--grace", "0", code=1)
    store.delete(key)
    r = tv(two, "gc", "--remote", "team", "--grace", "0", "--json")
    rep = json.loads(r.stdout)
    assert rep["stale_locks_removed"] == 1 and rep["deleted_objects"] == 1
    assert list(store.list(LOCKS)) == []


def test_a_push_waits_for_a_gc_then_gives_up(two, remote, monkeypatch):
    url, options, _ = remote
    add_remote(two, url, options)
    store = store_of(url, options)
    monkeypatch.setenv("TVREG_LOCK_TIMEOUT", "1")
    with gc_lock(store, "remote team"):
        r = tv(two, "push", "team", code=1)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "a gc of it" in err and "nothing was pushed" in err
    assert "remote team" in err and url in err
    assert list(store.list("refs")) == [] and list(store.list(LOCKS)) == []
    assert notes(two) == []

    monkeypatch.setenv("TVREG_LOCK_TIMEOUT", "60")
    held, go = threading.Event(), threading.Event()

    def gc_for_a_while():
        with gc_lock(store, "remote team"):
            held.set()
            go.wait(10)
            time.sleep(1.0)

    t = threading.Thread(target=gc_for_a_while)
    t.start()
    held.wait(10)
    go.set()
    start = time.monotonic()
    r = tv(two, "push", "team", "--json")
    t.join()
    assert time.monotonic() - start >= 0.9  # it waited for the gc's lock to go
    assert json.loads(r.stdout)["versions_sent"] == 2
    assert list(store.list(LOCKS)) == []


def test_a_long_push_refreshes_its_lock(remote, monkeypatch):
    import tvreg.remote.gc as remote_gc

    url, options, _ = remote
    store = store_of(url, options)
    monkeypatch.setattr(remote_gc, "REFRESH_SECONDS", 0.05)
    with push_lock(store, 5, "remote team"):
        (first,) = read_locks(store)
        time.sleep(0.5)
        (later,) = read_locks(store)
        assert later.key == first.key and later.doc["time"] > first.doc["time"]
        assert not later.stale
    assert list(store.list(LOCKS)) == []


def test_gc_of_a_read_only_http_remote_is_refused(two, tmp_path, serve_http):
    folder = tmp_path / "served"
    folder.mkdir()
    tv(two, "remote", "add", "web", serve_http(folder))
    for extra in ((), ("--dry-run",)):
        r = tv(two, "gc", "--remote", "web", *extra, code=2)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "read-only" in err and "web" in err, err


def test_gc_of_an_unknown_remote_is_bad_input(two):
    r = tv(two, "gc", "--remote", "nope", code=2)
    assert "no remote 'nope'" in r.stderr


def test_orphans_that_cannot_be_collected_now_stay_noted(two, tmp_path, zoo):
    """A remote record that does not read: gc cannot know what it needs, so the push after a
    failed one succeeds, deletes nothing, says why, and keeps the note for the next push."""
    url = str(tmp_path / "remote")
    add_remote(two, url, {})
    tv(two, "push", "team", "topic")
    store = store_of(url, {})
    killed_push(two, "link")
    before = ids(store)
    store.write("refs/topic/1.json", b"{not json")
    tv(two, "create", "toxicity", "--base", str(zoo.base), "--finetuned",
       str(zoo.finetuned["toxicity"]), "--no-similarities")
    r = tv(two, "push", "team", "toxicity", "--json")
    rep = json.loads(r.stdout)
    assert rep["versions_sent"] == 1 and rep["orphans_removed"] == 0
    assert "gc refused" in rep["orphans_note"] and "refs/topic/1.json" in rep["orphans_note"]
    assert "warning: orphans an earlier failed push left on team were not removed" in r.stderr
    assert before <= ids(store) and len(notes(two)) == 1
    r = tv(two, "gc", "--remote", "team", "--grace", "0", code=1)
    assert "gc refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert before <= ids(store)
    assert [lk.stale for lk in read_locks(store)] == [True]  # the killed push's; none of ours


def test_removing_the_remote_forgets_its_notes(two, tmp_path):
    url = str(tmp_path / "remote")
    add_remote(two, url, {})
    killed_push(two, "link")
    assert len(notes(two)) == 1
    tv(two, "remote", "rm", "team")
    assert notes(two) == []
