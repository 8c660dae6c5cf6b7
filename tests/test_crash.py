"""Crash safety: real ``tvreg`` processes killed with SIGKILL at chosen durable steps of
create, pull, push (directory and S3), gc and reindex, and at a random time, then checked
(tvreg.testing.crash): ``tvreg verify`` passes (or shows only the state docs/format.md §11
documents: the catalog missing the killed command's new versions), every version present is
bit-exact, readers of a remote never see a version whose objects are missing, and the same
command run again completes the work. benchmarks/bench_crash.py runs 50 kills per command."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from tvreg.testing import crash


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def env(work):
    return crash.subprocess_env(work / "scratch")


@pytest.fixture(scope="module")
def expected(zoo):
    return crash.Expected(zoo)


def kill(scenario: crash.Scenario, spec: str, kind: str) -> crash.Outcome:
    """Kill the scenario's command just before the step ``spec`` names (KIND[:TEXT][#N])."""
    out = crash.attempt(scenario, kill_at=spec)
    assert out.killed and out.point == kind, (out.how, out.point, out.problems)
    assert out.ok, (out.how, out.point, out.problems)
    return out


def kill_at_random(scenario: crash.Scenario) -> crash.Outcome:
    """Kill it at a random time over the part of its run that writes (measured first)."""
    seed = random.randrange(10**6)
    delay = crash.kill_delays(scenario.calibrate(), 1, random.Random(seed))[0]
    out = crash.attempt(scenario, kill_after=delay)
    assert out.ok, (f"seed {seed}", out.how, out.point, out.problems)
    return out


# --- the hook itself ----------------------------------------------------------------------------


def test_fault_hook_lists_steps_and_kills_before_the_chosen_one(tmp_path, zoo, env):
    root = tmp_path / "reg"
    argv = crash.create_argv(root, zoo, "sentiment")
    traced = crash.run_cli(argv, env, tmp_path)
    assert traced.returncode == 0 and traced.reported == ["sentiment@1"]
    kinds = [s.kind for s in traced.steps]
    assert [s.number for s in traced.steps] == list(range(1, len(kinds) + 1))
    # blobs are staged, then linked; the manifest, then the record; then the catalog (a new
    # registry's init commits its schema before the blobs are linked); the sketch last
    record = [s.number for s in traced.steps if s.kind == "link" and "refs/" in s.detail]
    objects = [s.number for s in traced.steps if s.kind == "link" and "objects/" in s.detail]
    commits = [s.number for s in traced.steps if s.kind == "commit"]
    assert kinds.index("stage") < objects[0] < objects[-1] < record[0] < commits[-1]
    assert len(record) == 1 and kinds[-1] == "sketch"
    for i, spec in enumerate((str(record[0]), f"link#{len(objects) + 2}")):
        again = tmp_path / f"again-{i}"
        killed = crash.run_cli([a.replace(str(root), str(again)) for a in argv], env, tmp_path,
                               kill_at=spec)
        assert killed.returncode == -signal.SIGKILL and killed.reported == [], spec
        assert killed.killed_before.kind == "link" and killed.killed_before.number == record[0]
        assert len(killed.steps) == record[0] - 1  # nothing after the kill
        assert (again / "objects").is_dir() and \
            not (again / "refs" / "sentiment" / "1.json").exists()


def test_every_kind_of_step_is_named_in_the_hook():
    import pathlib
    import re

    import tvreg
    from tvreg.util import faults

    source = "".join(p.read_text() for p in pathlib.Path(tvreg.__file__).parent.rglob("*.py"))
    assert set(re.findall(r'faults\.step\("([a-z-]+)"', source)) == faults.KINDS


@pytest.mark.parametrize("spec", ["soon", "0", "link#0"])
def test_fault_hook_refuses_a_bad_spec_before_writing(tmp_path, env, spec):
    root = tmp_path / "reg"
    r = subprocess.run(crash.cli("--registry", str(root), "init"), capture_output=True,
                       text=True, env={**env, "TVREG_FAULT_KILL_AT": spec})
    assert r.returncode == 2 and f"invalid $TVREG_FAULT_KILL_AT {spec!r}" in r.stderr
    assert not (root / "config.json").exists()


# --- create ---------------------------------------------------------------------------------------


def test_killed_create(work, zoo, env, expected):
    """Before the record (objects and manifest stored, unreferenced), between the record and
    the catalog commit (§11: verify says the catalog is behind; the rerun indexes the version),
    between the catalog and the similarities (the rerun computes them), at a random time."""
    scenario = crash.CreateScenario(work / "create", zoo, env, expected)
    kill(scenario, "link:refs/toxicity/1.json", "link")
    assert kill(scenario, "commit", "commit").catalog_behind
    assert kill(scenario, "commit#2", "commit").verify_clean
    kill_at_random(scenario)


def test_killed_create_of_a_new_registry(work, zoo, env, expected):
    """Killed inside the implicit init (config.json not linked yet): no registry, only what
    §11 allows; the rerun creates it."""
    scenario = crash.CreateScenario(work / "create-new", zoo, env, expected, new_registry=True)
    kill(scenario, "link:config.json", "link")


# --- pull -------------------------------------------------------------------------------------


def test_killed_pull(work, zoo, env, expected):
    """Between two records (some versions stored, not indexed), after a tag file moved but
    before its catalog update, and before the similarities commit: each is completed by the
    rerun (no reindex)."""
    scenario = crash.PullScenario(work / "pull", zoo, env, expected)
    assert kill(scenario, "link:refs/topic/2.json", "link").catalog_behind
    kill(scenario, "commit#2", "commit")  # the tag's catalog update
    kill(scenario, "commit#3", "commit")  # the similarities


# --- push ---------------------------------------------------------------------------------------


def test_killed_push_to_a_directory(work, zoo, env, expected):
    """Between two records, and before the remote index: readers see only complete versions;
    the rerun completes the remote and its index."""
    scenario = crash.PushScenario(work / "push-dir", zoo, env, expected, kind="dir")
    kill(scenario, "link:refs/toxicity/1.json", "link")
    kill(scenario, "rename:index/versions.parquet", "rename")


def test_killed_push_to_s3(work, zoo, expected, s3_endpoint):
    """The same against S3 (moto's server): killed between two conditional puts of records."""
    s3_env = crash.subprocess_env(work / "scratch")  # now with the endpoint's credentials
    scenario = crash.PushScenario(work / "push-s3", zoo, s3_env, expected, kind="s3",
                                  endpoint=s3_endpoint)
    kill(scenario, "put-new:refs/topic/2.json", "put-new")


# --- gc and reindex -----------------------------------------------------------------------------


def test_killed_gc(work, zoo, env, expected):
    """Half-way through deleting what two killed creates left (an hour ago): nothing
    referenced is touched; the rerun deletes the rest."""
    scenario = crash.GcScenario(work / "gc", zoo, env, expected)
    kill(scenario, "delete#7", "delete")


def test_killed_reindex(work, zoo, env, expected):
    """A reindex of a catalog left behind by killed writes, killed before its commit and at a
    random time: the catalog is the old one or the new one; the rerun brings it up to date."""
    scenario = crash.ReindexScenario(work / "reindex", zoo, env, expected)
    assert kill(scenario, "commit", "commit").catalog_behind
    kill_at_random(scenario)
