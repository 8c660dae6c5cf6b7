"""Bulk ingest into a remote (``tvreg ingest LIST.jsonl --to REMOTE``, issue 20): real toy
fine-tunes staged straight into a directory remote and into S3 (moto's server on loopback, for
s3fs), by the local engine and by a real Dask ``LocalCluster`` of 2 worker processes; then
pulled into a fresh registry: the same vector ids and metadata as a local ingest of the same
list, ``verify --deep`` clean. Resumable (a rerun writes nothing), a killed ingest's objects
collected by ``gc --remote``, and bad input refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from helpers import new_remote, snapshot

import tvreg
from tvreg.errors import InvalidInput, NotFound
from tvreg.remote.config import Remote, normalize_url
from tvreg.repo.ingest import KEY_META


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _items(zoo):
    return [{"name": "sentiment", "base": str(zoo.base),
             "finetuned": str(zoo.finetuned["sentiment"]), "task": "sentiment",
             "dataset": "toy-sentiment", "lr": 0.01, "steps": 20, "meta": {"seed": 0}},
            {"name": "topic", "base": str(zoo.base), "finetuned": str(zoo.finetuned["topic"]),
             "task": "topic"},
            {"name": "toxicity", "base": str(zoo.base),
             "finetuned": str(zoo.finetuned["toxicity"])}]


NAMES = ["sentiment", "topic", "toxicity"]


@pytest.fixture(scope="module")
def expected(zoo, tmp_path_factory):
    """What a local ingest of the list stores: each name's ``show`` (vector id, metadata)."""
    d = tmp_path_factory.mktemp("ingest-local")
    path = _write(d / "list.jsonl", _items(zoo))
    with tvreg.open(d / "registry") as reg:
        reg.ingest(path, similarities=False)
        return {n: reg.show(f"{n}@1") for n in NAMES}


@pytest.fixture(params=["dir", "s3"])
def remote(request, tmp_path):
    """(url, options) of a fresh remote: a folder, or a new bucket on moto's S3 server."""
    return new_remote(request.param, tmp_path, request)


@pytest.fixture(scope="module")
def cluster(request):
    """One real Dask LocalCluster of 2 worker processes for the module, started after the S3
    endpoint's credentials are in the environment (the workers inherit it)."""
    distributed = pytest.importorskip("distributed")
    request.getfixturevalue("s3_endpoint")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=50) as c:
        yield c


def _options(options) -> list[str]:
    return [a for k, v in options.items()
            for a in ("--option", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]


def _client(run, remote) -> None:
    """The registry at reg_path, with the remote added as ``team``."""
    url, options = remote
    run("remote", "add", "team", url, *_options(options))


def remote_bytes(remote) -> dict[str, bytes]:
    """Every key of the remote with its bytes (two equal: nothing written there)."""
    url, options = remote
    store = Remote("team", normalize_url(url), dict(options)).store()
    return {k: store.read(k) for k in sorted(store.list(""))}


def _pull_and_check(tmp_path, remote, expected, same_lines=True) -> None:
    """Pull the remote into a fresh registry: verify --deep clean, the ids and metadata of a
    local ingest of the same list (``same_lines`` False: some lines differ, so do their
    ``ingest.key``)."""
    url, options = remote
    with tvreg.open(tmp_path / f"puller-{uuid.uuid4().hex[:6]}") as other:
        other.add_remote("team", url, options)
        other.pull("team", similarities=False)
        assert other.verify(deep=True).problems == []
        for name, want in expected.items():
            got = other.show(f"{name}@1")
            for k in ("vector_id", "base_hash", "task", "dataset", "lr", "steps", "meta",
                      "stored_bytes", "codec"):
                if k == "meta" and not same_lines:
                    assert {**got[k], KEY_META: None} == {**want[k], KEY_META: None}
                else:
                    assert got[k] == want[k], (name, k)
            assert len(got["meta"][KEY_META]) == 64


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_ingest_to_a_remote_stores_what_a_local_ingest_stores(tmp_path, zoo, run, reg_path,
                                                               remote, engine, expected,
                                                               request):
    dask = (["--engine", "dask", "--scheduler",
             request.getfixturevalue("cluster").scheduler_address] if engine == "dask" else [])
    _client(run, remote)
    path = _write(tmp_path / "list.jsonl", _items(zoo))
    here = snapshot(reg_path)
    first = run("ingest", path, "--to", "team", *dask)
    assert first.stdout.split() == [f"{n}@1" for n in NAMES]
    assert "ingest to remote team: 3 created, 0 unchanged, 0 skipped" in first.stderr
    assert snapshot(reg_path) == here  # nothing written to the local registry
    with tvreg.open(reg_path) as reg:  # the index was rebuilt: ls --remote sees them
        assert [r["name"] for r in reg.remote_ls("team")] == NAMES
        assert reg.ls() == []
    _pull_and_check(tmp_path, remote, expected)

    there = remote_bytes(remote)
    again = run("ingest", path, "--to", "team", "--json", *dask)
    out = json.loads(again.stdout)
    assert (out["created"], out["skipped"], out["failed"], out["new_objects"]) == (0, 3, 0, 0)
    assert [i["ref"] for i in out["items"]] == [f"{n}@1" for n in NAMES]
    assert remote_bytes(remote) == there  # a rerun writes nothing there
    assert not [k for k in there if k.startswith("locks/")]  # the push lock was released


def test_numbers_follow_the_remotes_versions_and_a_rerun_finishes_a_failed_item(
        tmp_path, zoo, run, reg_path, remote, expected):
    """A name the remote holds gets its next number there (as push would give it), content it
    already holds is reused; a failed item is reported, the others land, and a rerun tries
    only it."""
    _client(run, remote)
    run("create", "topic", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    run("push", "team")  # topic@1 there, without an ingest key
    rows = _items(zoo)
    rows[0]["finetuned"] = "late.safetensors"  # relative: to the list's folder
    path = _write(tmp_path / "list.jsonl", rows)
    first = run("ingest", path, "--to", "team", code=1)
    assert f"line 1 (sentiment): {tmp_path / 'late.safetensors'}" in first.stderr
    assert first.stdout.split() == ["topic@2", "toxicity@1"]
    assert "2 created, 0 unchanged, 0 skipped (landed before), 1 failed" in first.stderr

    (tmp_path / "late.safetensors").write_bytes(zoo.finetuned["sentiment"].read_bytes())
    second = run("ingest", path, "--to", "team", "--json")
    assert [i["outcome"] for i in json.loads(second.stdout)["items"]] == [
        "created", "skipped", "skipped"]
    with tvreg.open(reg_path) as reg:
        rows_there = reg.remote_ls("team", all_versions=True)
        assert [(r["name"], r["version"]) for r in rows_there] == [
            ("sentiment", 1), ("topic", 1), ("topic", 2), ("toxicity", 1)]
        # topic@1 (pushed) and topic@2 (ingested): one vector, metadata apart by the key
        assert len({r["vector_id"] for r in rows_there if r["name"] == "topic"}) == 1
    _pull_and_check(tmp_path, remote,  # topic@1 there is the pushed one
                    {k: v for k, v in expected.items() if k != "topic"}, same_lines=False)


def _ingest_process(registry, *args, **env):
    full = {**os.environ, "TVREG_HOME": str(registry), **env}
    return subprocess.run([sys.executable, "-m", "tvreg.cli", "ingest", *args], env=full,
                          capture_output=True, text=True, timeout=180)


def test_a_killed_ingest_leaves_orphans_that_gc_remote_collects(tmp_path, zoo, run, reg_path,
                                                                remote, expected):
    """Killed (SIGKILL) just before its first version record: every object is on the remote
    and no record names them. ``gc --remote`` deletes exactly those (and the dead process's
    lock); a rerun then stores everything."""
    _client(run, remote)
    url, _ = remote
    path = _write(tmp_path / "list.jsonl", _items(zoo))
    kind = "put-new" if url.startswith("s3://") else "link"
    killed = _ingest_process(reg_path, path, "--to", "team",
                             TVREG_FAULT_KILL_AT=f"{kind}:refs/")
    assert killed.returncode == -9, killed.stderr
    left = remote_bytes(remote)
    assert not [k for k in left if k.startswith(("refs/", "index/"))]
    orphans = {k for k in left if k.startswith("objects/")}
    assert orphans and len([k for k in left if k.startswith("locks/")]) == 1

    r = json.loads(run("gc", "--remote", "team", "--grace", "0", "--json").stdout)
    assert (r["deleted_objects"], r["stale_locks_removed"]) == (len(orphans), 1)
    assert remote_bytes(remote) == {}

    again = run("ingest", path, "--to", "team")
    assert "3 created" in again.stderr
    _pull_and_check(tmp_path, remote, expected)


def test_a_rerun_after_a_killed_ingest_reuses_the_objects_there(tmp_path, zoo, reg_path, run,
                                                                expected):
    """A rerun after a kill reuses the objects already there: none is sent twice."""
    remote = (str(tmp_path / "remote"), {})
    _client(run, remote)
    path = _write(tmp_path / "list.jsonl", _items(zoo))
    assert _ingest_process(reg_path, path, "--to", "team",
                           TVREG_FAULT_KILL_AT="link:refs/").returncode == -9
    before = {k for k in remote_bytes(remote) if k.startswith("objects/")}
    out = json.loads(run("ingest", path, "--to", "team", "--json").stdout)
    after = {k for k in remote_bytes(remote) if k.startswith("objects/")}
    assert before and before <= after
    manifests = {f"objects/{e['vector_id'][:2]}/{e['vector_id'][2:]}" for e in expected.values()}
    # new_objects counts blobs (as a local ingest does): those not there before
    assert (out["created"], out["new_objects"]) == (3, len(after - before - manifests))
    r = json.loads(run("gc", "--remote", "team", "--grace", "0", "--json").stdout)
    assert r["deleted_objects"] == 0
    _pull_and_check(tmp_path, remote, expected)


# --- bad input: one line, exit 2, nothing written ------------------------------------------------


def test_bad_input_is_refused_before_anything_is_written(tmp_path, zoo, run, reg_path):
    remote = (str(tmp_path / "remote"), {})
    _client(run, remote)
    run("remote", "add", "web", "http://127.0.0.1:9/reg")
    good = _write(tmp_path / "list.jsonl", _items(zoo))
    bad = _write(tmp_path / "bad.jsonl", [{"name": "a", "base": "b"}])
    here = snapshot(reg_path)
    cases = [
        ((good, "--to", "nope"), "no remote 'nope' (known: team, web)"),
        ((good, "--to", "web"), "remote web (http://127.0.0.1:9/reg) is read-only"),
        ((bad, "--to", "team"), "bad.jsonl:1: give exactly one of 'finetuned' and 'lora'"),
        ((good, "--to", "team", "--engine", "spark"), "'spark' is not one of"),
        ((good, "--to", "team", "--scheduler", "tcp://127.0.0.1:9"),
         "a scheduler address is for --engine dask"),
        ((str(tmp_path / "none.jsonl"), "--to", "team"), "cannot read ingest list"),
    ]
    for args, message in cases:
        result = run("ingest", *args, code=2)
        assert message in result.stderr, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 or lines[0].startswith("Usage:"), result.stderr
    assert snapshot(reg_path) == here
    assert not (tmp_path / "remote").exists()

    with tvreg.open(reg_path) as reg:
        with pytest.raises(NotFound, match="no remote 'nope'"):
            reg.ingest(good, to="nope")
        with pytest.raises(InvalidInput, match="read-only"):
            reg.ingest(good, to="web")
        with pytest.raises(InvalidInput, match="bad worker count 0"):
            reg.ingest(good, to="team", workers=0)
    assert not (tmp_path / "remote").exists()

    # no local registry: nothing names the remote
    none = tmp_path / "none"
    from click.testing import CliRunner

    from tvreg.cli.main import cli

    r = CliRunner().invoke(cli, ["--registry", str(none), "ingest", good, "--to", "team"])
    assert r.exit_code == 2 and "no tvreg registry at" in r.stderr
    assert not none.exists()
