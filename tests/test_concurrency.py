"""Real processes on one registry and on one remote at once (docs/reliability.md §2).

Stress runs (:mod:`tvreg.testing.concurrency`): N = 2 and 4 processes creating, tagging, reading
and gc-ing in one registry, and N pushers of identical and of different content to a directory
and to S3 (moto's server). Then deterministic races: one process is paused at a chosen point
(a function patched to wait for a signal file) while another acts, for gc against a write, two
`tag` commands, a pull that reuses old objects, and lock time-outs. benchmarks/bench_concurrency.py
runs the stress with N = 2, 4, 8 and more operations.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import tvreg
from tvreg.errors import RegistryBusy
from tvreg.testing.concurrency import (
    ORPHAN_AGE,
    check_local,
    check_remote,
    expected_vector_ids,
    make_sources,
    make_variants,
    run_local,
    run_pushers,
    seed_orphans,
)


@pytest.fixture(scope="module")
def variants(tmp_path_factory, zoo):
    folder = tmp_path_factory.mktemp("variants")
    ft = make_variants(zoo.base, zoo.finetuned, 2, folder)
    return ft, expected_vector_ids(str(zoo.base), ft, folder), folder / "reference-registry"


def object_path(root, oid: str) -> pathlib.Path:
    return pathlib.Path(root) / "objects" / oid[:2] / oid[2:]


def objects_of(reg, vector_id: str) -> set[str]:
    return {vector_id, *reg.manifest(vector_id).blob_ids()}


# --- N processes on one registry -----------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_processes_create_tag_read_and_gc_one_registry_at_once(n, zoo, variants, tmp_path):
    """Creates (often of the same content at the same time), tags, ls/show/sql/tensor reads and
    gc with no grace period at all, over old orphans some creates reuse: nothing is lost or
    stored twice, the catalog equals a rebuild, `verify --deep` passes, and the only failures
    allowed are the clean ones gc's rule announces (a reused object deleted before the write
    could reference it: nothing recorded, run again)."""
    ft, expected, reference = variants
    root = tmp_path / "registry"
    tvreg.open(root).init()
    reused, garbage = seed_orphans(root, reference,
                                   [v for t, v in sorted(expected.items()) if t.endswith("-0")],
                                   garbage=3)
    run = run_local(root, n, 12, base=str(zoo.base), finetuned=ft, workdir=tmp_path, grace=0.0,
                    seed=n)
    check = check_local(root, run, expected, garbage)
    assert check.problems == [], check.problems
    assert check.verify_ok and check.duplicates == 0
    for x in run.failures():
        assert x["op"] == "create" and x["error"] == "RegistryError" and \
            "concurrent gc" in x["message"], x
    done = [x for x in run.lines if x["ok"]]
    assert len(run.lines) == 12 * n and len(done) >= 11 * n
    assert {x["op"] for x in done} >= {"create", "tag", "ls", "sql", "tensors", "gc"}


# --- a process paused at a chosen point -----------------------------------------------------------


_PAUSED = textwrap.dedent("""
    import importlib, json, os, sys, time
    import tvreg
    target, reached, go, root, op, args = sys.argv[1:7]
    args = json.loads(args)
    module, _, qualname = target.partition(":")
    owner = importlib.import_module(module)
    *path, attr = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, attr)
    calls = []

    def paused(*a, **k):
        if not calls:  # the first call waits for the signal
            calls.append(1)
            open(reached, "w").close()
            deadline = time.time() + 120
            while not os.path.exists(go) and time.time() < deadline:
                time.sleep(0.005)
        return real(*a, **k)

    setattr(owner, attr, paused)
    with tvreg.open(root) as reg:
        try:
            if op == "create":
                out = reg.create(args["name"], args["base"], args["ft"], similarities=False).ref
            elif op == "gc":
                out = reg.gc(grace_seconds=args["grace"]).to_json()
            elif op == "pull":
                out = reg.pull("origin", similarities=False).pulled
            elif op == "tag":
                out = reg.tag(args["ref"], args["tag"])[0].version
            print(json.dumps({"ok": True, "result": out}))
        except tvreg.TvregError as e:
            print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
""")


class Paused:
    """A process running ``op`` on the registry at ``root`` that stops at the first call of
    ``target`` (``module:qualname``) until :meth:`release`."""

    def __init__(self, tmp_path, target: str, root, op: str, **args) -> None:
        tag = uuid.uuid4().hex[:8]
        self.reached, self.go = tmp_path / f"reached-{tag}", tmp_path / f"go-{tag}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSED, target, str(self.reached), str(self.go), str(root), op,
             json.dumps({k: str(v) if isinstance(v, pathlib.Path) else v
                         for k, v in args.items()})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_paused(self) -> None:
        deadline = time.time() + 120
        while not self.reached.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "the process did not reach its pause"
            time.sleep(0.005)

    def release(self) -> dict:
        self.go.touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def paused(tmp_path):
    started: list[Paused] = []

    def start(target: str, root, op: str, **args) -> Paused:
        p = Paused(tmp_path, target, root, op, **args)
        started.append(p)
        p.wait_paused()
        return p

    yield start
    for p in started:
        p.kill()


# --- gc against writes ---------------------------------------------------------------------------


def test_gc_waits_for_a_write_between_its_check_and_its_record(reg, reg_path, zoo, paused):
    """A create stopped inside its reference window (its objects checked, its record not yet
    written) holds the gc lock shared: `gc --grace 0` waits for it instead of deleting the
    objects the record is about to name (without the lock it deleted them: a broken version)."""
    reg.init()
    p = paused("tvreg.storage.documents:claim", reg_path, "create", name="topic", base=zoo.base,
               ft=zoo.finetuned["topic"])
    report = []
    gc = threading.Thread(target=lambda: report.append(reg.gc(grace_seconds=0)))
    gc.start()
    gc.join(timeout=1.5)
    assert gc.is_alive(), "gc did not wait for the write in its reference window"
    assert p.release() == {"ok": True, "result": "topic@1"}
    gc.join(timeout=120)
    assert report[0].deleted_objects == 0
    rep = reg.verify(deep=True)
    assert rep.ok, rep.problems
    assert reg.get("topic").vector_id == reg.versions("topic")[0].vector_id


def test_gc_gives_up_on_the_lock_with_a_clear_error(reg, reg_path, zoo, paused, monkeypatch):
    reg.init()
    p = paused("tvreg.storage.documents:claim", reg_path, "create", name="topic", base=zoo.base,
               ft=zoo.finetuned["topic"])
    monkeypatch.setenv("TVREG_LOCK_TIMEOUT", "0.3")
    before = sorted(os.listdir(reg_path / "objects"))
    with tvreg.open(reg_path) as impatient:
        t0 = time.monotonic()
        with pytest.raises(RegistryBusy, match=r"writes kept the gc lock for 0\.3s; run gc again, "
                                               r"or raise \$TVREG_LOCK_TIMEOUT"):
            impatient.gc(grace_seconds=0)
        assert time.monotonic() - t0 < 10
    assert sorted(os.listdir(reg_path / "objects")) == before  # nothing deleted
    assert p.release()["ok"]
    assert reg.verify().ok


def test_a_write_waits_for_gc_and_gives_up_with_a_clear_error(filled, reg_path, zoo, paused,
                                                               monkeypatch, tmp_path):
    """gc stopped in its delete pass (holding the gc lock): a create that reaches its reference
    window waits, and after $TVREG_LOCK_TIMEOUT fails naming gc's PID, with no record written;
    run again after gc, it succeeds."""
    junk = filled.objects.put(b"garbage of a crashed write")
    os.utime(object_path(reg_path, junk), (time.time() - ORPHAN_AGE,) * 2)
    p = paused("tvreg.storage.objects:ObjectDB.delete", reg_path, "gc", grace=60)
    refs = sorted(pathlib.Path(reg_path, "refs").rglob("*.json"))
    cli = [sys.executable, "-m", "tvreg.cli", "--registry", str(reg_path), "create", "late",
           "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"])]
    env = {**os.environ, "TVREG_LOCK_TIMEOUT": "0.5"}
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"a running gc (PID {p.proc.pid}) kept the gc lock for 0.5s; nothing was recorded" \
        in r.stderr and "Traceback" not in r.stderr
    assert sorted(pathlib.Path(reg_path, "refs").rglob("*.json")) == refs
    gc_report = p.release()
    assert gc_report["ok"] and gc_report["result"]["deleted_objects"] == 1
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert filled.verify().ok and filled.get("late@1")


def test_gc_keeps_old_objects_a_create_in_progress_reuses(reg, reg_path, zoo, variants, paused):
    """The edge of the grace rule: objects older than the grace period, unreferenced (left by
    a crashed write), that a create running now reuses. Staging touched them (§4), so a gc
    run while the create is still staging keeps them and deletes only the real garbage."""
    ft, expected, reference = variants
    reg.init()
    reused, garbage = seed_orphans(reg_path, reference, [expected["topic-0"]], garbage=2)
    p = paused("tvreg.storage.objects:Staging.commit", reg_path, "create", name="again",
               base=zoo.base, ft=ft["topic-0"])
    rep = reg.gc(grace_seconds=3600)
    # the blobs were touched; the manifest is written (or, here, touched) after the commit, so
    # gc may delete it meanwhile: the create holds its bytes and writes it again
    assert rep.kept_recent == len(reused) - 1
    assert rep.deleted_objects == len(garbage) + 1
    assert not object_path(reg_path, expected["topic-0"]).exists()
    assert p.release() == {"ok": True, "result": "again@1"}
    assert reg.get("again").vector_id == expected["topic-0"]
    assert all(object_path(reg_path, o).exists() for o in reused)
    assert not any(object_path(reg_path, o).exists() for o in garbage)
    rep = reg.verify(deep=True)
    assert rep.ok, rep.problems


def test_a_create_whose_reused_objects_gc_deleted_fails_cleanly(reg, reg_path, zoo, variants,
                                                                 paused):
    """With a grace period shorter than the create's staging (here 0), gc deletes the old
    objects the create reuses before it commits: the create fails, typed, with nothing
    recorded; run again, it stores them again."""
    ft, expected, reference = variants
    reg.init()
    reused, _ = seed_orphans(reg_path, reference, [expected["topic-0"]])
    p = paused("tvreg.storage.objects:Staging.commit", reg_path, "create", name="again",
               base=zoo.base, ft=ft["topic-0"])
    assert reg.gc(grace_seconds=0).deleted_objects == len(reused)
    out = p.release()
    assert out["ok"] is False and out["error"] == "RegistryError"
    assert "deleted by a concurrent gc" in out["message"] and "run the command again" in \
        out["message"]
    assert reg.versions("again") == [] and reg.verify().ok
    assert reg.create("again", zoo.base, ft["topic-0"]).record.vector_id == expected["topic-0"]
    assert reg.verify(deep=True).ok


def test_gc_keeps_old_local_objects_a_pull_in_progress_reuses(zoo, tmp_path, paused):
    """An interrupted pull left a vector's objects here, unreferenced; an hour later the pull
    runs again and finds them. It touches them (it used to only check they exist, so a gc run
    meanwhile deleted them and the pulled version came out broken)."""
    origin = tvreg.open(tmp_path / "origin")
    origin.create("topic", zoo.base, zoo.finetuned["topic"], similarities=False)
    origin.add_remote("origin", str(tmp_path / "remote"))
    origin.push("origin")
    local_path = tmp_path / "local"
    local = tvreg.open(local_path)
    local.add_remote("origin", str(tmp_path / "remote"))
    vid = origin.get("topic").vector_id
    for oid in objects_of(origin, vid):  # what the interrupted pull had fetched, long ago
        local.objects.put(origin.objects.get(oid))
        os.utime(object_path(local_path, oid), (time.time() - ORPHAN_AGE,) * 2)
    p = paused("tvreg.storage.objects:referencing", local_path, "pull")
    assert local.gc(grace_seconds=3600).deleted_objects == 0
    assert p.release() == {"ok": True, "result": ["topic@1"]}
    rep = local.verify(deep=True)
    assert rep.ok, rep.problems


def test_gc_leaves_the_scratch_folder_of_a_write_in_progress(reg, reg_path, zoo, paused):
    """`gc --grace 0` removes abandoned scratch folders, but not the one a create is staging
    into (it holds its lock): the create goes on and completes."""
    reg.init()
    abandoned = pathlib.Path(reg.scratch, "stage-crashed")
    abandoned.mkdir()
    (abandoned / "x").write_bytes(b"a blob of a crashed write")
    p = paused("tvreg.storage.objects:Staging.commit", reg_path, "create", name="topic", base=zoo.base,
               ft=zoo.finetuned["topic"])
    staging = [e for e in pathlib.Path(reg.scratch).iterdir() if e != abandoned]
    assert len(staging) == 1 and any(staging[0].iterdir())
    rep = reg.gc(grace_seconds=0)
    assert rep.scratch_removed == 1 and not abandoned.exists() and staging[0].exists()
    assert p.release() == {"ok": True, "result": "topic@1"}
    assert reg.verify(deep=True).ok


def test_a_write_whose_temp_file_gc_removed_writes_it_again(tmp_path, monkeypatch):
    """`gc --grace 0` removes `.tmp-*` files however young; a write whose temporary file went
    that way before it was linked writes it again (fault injected: a gc right after the
    temporary file is written)."""
    from tvreg.stores import LocalStore

    store = LocalStore(tmp_path)
    real, removed = LocalStore._temp, []

    def temp_then_gc(self, path, data):
        tmp = real(self, path, data)
        if len(removed) < 2:
            removed.append(self.clean_temporary(0))
        return tmp

    monkeypatch.setattr(LocalStore, "_temp", temp_then_gc)
    assert store.write_new("refs/x/1.json", b"record") is True
    store.write("tags/x/prod.json", b"tag")
    assert removed == [1, 1]
    assert store.read("refs/x/1.json") == b"record" and store.read("tags/x/prod.json") == b"tag"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["1.json", "prod.json"]


def test_gc_does_not_unindex_a_vector_stored_again_meanwhile(reg, reg_path, zoo, variants, paused):
    """gc deletes an old orphan vector, then drops its catalog rows; a create that stores the
    same vector in between (writing its objects again) and indexes it keeps its rows."""
    ft, expected, reference = variants
    reg.init()
    seed_orphans(reg_path, reference, [expected["topic-0"]])
    p = paused("tvreg.catalog.db:Catalog.forget_vectors", reg_path, "gc", grace=60)
    made = reg.create("again", zoo.base, ft["topic-0"], similarities=False)
    assert made.record.vector_id == expected["topic-0"]
    assert p.release()["result"]["deleted_objects"] == len(objects_of(reg, expected["topic-0"]))
    assert reg.sql("SELECT vector_id FROM vectors") == [{"vector_id": expected["topic-0"]}]
    assert reg.sql("SELECT count(*) AS n FROM tensors")[0]["n"] == 12
    rep = reg.verify(deep=True)
    assert rep.ok, rep.problems


# --- tags -----------------------------------------------------------------------------------------


def test_two_tags_of_one_name_leave_the_catalog_with_the_last_file(filled, reg_path, zoo,
                                                                   paused):
    """Two `tag` commands on one tag: the file written last stays. Each writes the catalog
    after its file, so the last to write the catalog indexes the file as it is then, not its
    own target (it indexed its own: the catalog kept a target the file no longer had)."""
    filled.create("topic", zoo.base, zoo.finetuned["sentiment"], similarities=False)  # topic@2
    first = paused("tvreg.repo.write:index_tag", reg_path, "tag", ref="topic@1",
                   tag="prod")
    filled.tag("topic@2", "prod")        # written after the paused one's file: it stays
    assert first.release() == {"ok": True, "result": 1}
    assert filled.tag_record("topic", "prod").version == 2
    assert filled.sql("SELECT version FROM tags WHERE name = 'topic' AND tag = 'prod'") == \
        [{"version": 2}]
    before = filled.sql("SELECT name, tag, version, vector_id FROM tags ORDER BY 1, 2")
    filled.reindex()
    assert filled.sql("SELECT name, tag, version, vector_id FROM tags ORDER BY 1, 2") == before


# --- catalog lock waits ---------------------------------------------------------------------------


_HOLDER = textwrap.dedent("""
    import os, sys, time
    kind, root, held, release = sys.argv[1:5]
    if kind == "tvreg":
        import tvreg
        ctx = tvreg.open(root).catalog.writer()
    else:  # another program with the file open for writing
        import contextlib, duckdb
        ctx = contextlib.closing(duckdb.connect(os.path.join(root, "catalog.duckdb")))
    with ctx:
        open(held, "w").close()
        deadline = time.time() + 120
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.01)
""")


@pytest.fixture
def hold_catalog(tmp_path):
    procs = []

    def hold(kind: str, root) -> tuple[subprocess.Popen, pathlib.Path]:
        held, release = tmp_path / f"held-{len(procs)}", tmp_path / f"release-{len(procs)}"
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, kind, str(root), str(held),
                                 str(release)], stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        deadline = time.time() + 60
        while not held.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.01)
        return proc, release

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cli(reg_path, *args, timeout: str):
    env = {**os.environ, "TVREG_LOCK_TIMEOUT": timeout}
    return subprocess.run([sys.executable, "-m", "tvreg.cli", "--registry", str(reg_path), *args],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("holder", ["tvreg", "duckdb"])
def test_a_locked_catalog_times_out_with_the_holders_pid(filled, reg_path, hold_catalog, holder):
    """Held by another tvreg process (tvreg's lock file) or by another program (DuckDB's own
    lock): `ls` waits $TVREG_LOCK_TIMEOUT seconds, then exits 1 naming the holder's PID."""
    proc, _ = hold_catalog(holder, reg_path)
    t0 = time.monotonic()
    r = _cli(reg_path, "ls", timeout="0.5")
    assert r.returncode == 1 and time.monotonic() - t0 >= 0.5
    assert f"stayed locked by another process (PID {proc.pid}) for 0.5s; retry, or raise " \
           "$TVREG_LOCK_TIMEOUT" in r.stderr, r.stderr


def test_a_write_that_times_out_says_how_to_finish(filled, reg_path, zoo, hold_catalog):
    """create and tag store their record or tag file first: if the catalog stays locked they
    fail (exit 1) saying so and that `tvreg reindex` completes the index; nothing is lost."""
    _, release = hold_catalog("tvreg", reg_path)
    r = _cli(reg_path, "create", "late", "--base", str(zoo.base), "--finetuned",
             str(zoo.finetuned["topic"]), timeout="0.3")
    assert r.returncode == 1 and "late@1 is stored, but the catalog was not updated" in r.stderr \
        and "run `tvreg reindex`" in r.stderr, r.stderr
    r = _cli(reg_path, "tag", "topic@1", "prod", timeout="0.3")
    assert r.returncode == 1 and "topic@prod is set, but the catalog was not updated" in r.stderr \
        and "run `tvreg reindex`" in r.stderr, r.stderr
    release.touch()
    assert filled.get("late@1") and filled.get("topic@prod")
    assert "catalog is out of date" in " ".join(filled.verify().problems)
    filled.reindex()
    assert filled.verify().ok
    assert {r["name"] for r in filled.ls()} >= {"late"}


def test_a_reader_waits_for_the_catalog_and_goes_on(filled, reg_path, hold_catalog):
    proc, release = hold_catalog("tvreg", reg_path)
    threading.Timer(1.0, release.touch).start()
    t0 = time.monotonic()
    r = _cli(reg_path, "sql", "--json", "SELECT count(*) AS n FROM versions", timeout="60")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 1.0 and json.loads(r.stdout) == [{"n": 3}]


# --- N pushers to one remote ---------------------------------------------------------------------


def _remote(kind: str, request, tmp_path) -> tuple[str, dict | None]:
    if kind == "dir":
        return str(tmp_path / "remote"), None
    endpoint = request.getfixturevalue("s3_endpoint")
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team", {"endpoint_url": endpoint, "skip_instance_cache": True,
                                   "use_listings_cache": False}


@pytest.mark.parametrize("kind, n", [("dir", 4), ("s3", 2)])
def test_pushers_to_one_remote_land_every_version_exactly_once(kind, n, request, zoo, variants,
                                                                tmp_path):
    """N registries push at once to a directory or to S3 (exclusive creates: link(2), and a
    conditional put, If-None-Match): the versions they share land once, the ones that contest
    a number are renumbered, nothing is overwritten, tags point at versions of their vector,
    the index ends up listing everything, and a pull of it all verifies."""
    ft, _, _ = variants
    url, options = _remote(kind, request, tmp_path)
    sources = make_sources(tmp_path, n, str(zoo.base), ft, url, options)
    run = run_pushers(sources, tmp_path)
    check = check_remote(url, options, sources, run, tmp_path)
    assert check.problems == [], check.problems
    assert check.versions == 2 + 2 * n and check.duplicates == 0 and check.verify_ok
    renumbered = [x["report"]["renumbered"] for x in run.lines]
    assert sorted(r.get("contested@1", "contested@1") for r in renumbered) == \
        [f"contested@{i}" for i in range(1, n + 1)]
