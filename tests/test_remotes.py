"""Remote configuration: `tvreg remote add|ls|rm` and `reg.remotes()`."""

from __future__ import annotations

import json
import uuid

import pytest

import tvreg
from tvreg.errors import InvalidInput, InvalidName, NotFound


def test_add_ls_rm(run, reg_path, tmp_path):
    run("remote", "add", "origin", "s3://bucket/team", "--option", "endpoint_url=http://127.0.0.1:9000",
        "--option", "anon=false")
    r = run("remote", "add", "web", "https://example.org/registry")
    assert "read-only" in r.stderr
    run("remote", "add", "shared", str(tmp_path / "shared"))
    listed = json.loads(run("remote", "ls", "--json").stdout)
    assert [x["name"] for x in listed] == ["origin", "shared", "web"]
    assert listed[0]["options"] == {"endpoint_url": "http://127.0.0.1:9000", "anon": False}
    assert listed[1]["url"] == f"file://{tmp_path / 'shared'}" and listed[1]["writable"]
    assert not listed[2]["writable"]
    table = run("remote", "ls").stdout
    assert "anon=false endpoint_url=http://127.0.0.1:9000" in table
    config = json.loads((reg_path / "config.json").read_text())
    assert set(config["remotes"]) == {"origin", "shared", "web"}
    assert "removed remote web" in run("remote", "rm", "web").stderr
    assert "no remote 'web'" in run("remote", "rm", "web", code=2).stderr
    with tvreg.open(reg_path) as reg:
        assert set(reg.remotes()) == {"origin", "shared"}


@pytest.mark.parametrize("args, needle", [
    (("Origin", "s3://b"), "invalid remote name"),
    (("a b", "s3://b"), "invalid remote name"),
    (("x", "s3://b", "--option", "secret=abc"), "looks like a credential"),
    (("x", "s3://b", "--option", "key=abc"), "looks like a credential"),
    (("x", "s3://b", "--option", "aws_session_token=abc"), "looks like a credential"),
    (("x", "s3://b", "--option", "novalue"), "expected KEY=VALUE"),
    (("x", "https://user:pw@host/r"), "must not carry credentials"),
    (("x", "nope://host/r"), "unknown remote URL scheme"),
])
def test_bad_remotes_exit_2_and_change_nothing(run, reg_path, args, needle):
    run("remote", "add", "origin", "memory://x")
    before = (reg_path / "config.json").read_bytes()
    r = run("remote", "add", *args, code=2)
    assert needle in r.stderr and "\n" not in r.stderr.strip()
    assert (reg_path / "config.json").read_bytes() == before


def test_duplicate_name_is_refused(run):
    run("remote", "add", "origin", "memory://x")
    assert "already exists" in run("remote", "add", "origin", "memory://y", code=2).stderr


def test_remote_stores_round_trip(reg_path, tmp_path):
    reg = tvreg.open(reg_path)
    mem = reg.add_remote("mem", f"memory://tvreg-{uuid.uuid4().hex}/r")
    local = reg.add_remote("dir", str(tmp_path / "d"))
    for remote in (mem, local):
        store = remote.store()
        store.write("refs/a/1.json", b"{}")
        assert store.read("refs/a/1.json") == b"{}" and list(store.list("refs")) == ["refs/a/1.json"]
    web = reg.add_remote("web", "https://example.org/registry")
    assert not web.writable and not web.store().writable
    with pytest.raises(InvalidInput):
        reg.add_remote("bad", "s3://b", {"secret_access_key": "x"})
    with pytest.raises(InvalidName):
        reg.add_remote("Bad", "s3://b")
    with pytest.raises(NotFound):
        reg.remove_remote("nope")


# --- push ----------------------------------------------------------------------------------------


@pytest.fixture(params=["dir", "memory", "s3"])
def remote_url(request, tmp_path):
    """A remote of each kind: (URL, storage options)."""
    if request.param == "dir":
        return str(tmp_path / "remote"), {}
    if request.param == "memory":
        return f"memory://tvreg-{uuid.uuid4().hex}/r", {}
    endpoint = request.getfixturevalue("s3_endpoint")
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team", {"endpoint_url": endpoint, "skip_instance_cache": True,
                                   "use_listings_cache": False}


def test_push_sends_everything_once_in_order_and_renumbers_conflicts(zoo, tmp_path, remote_url):
    from tvreg.storage.objects import object_key

    url, options = remote_url
    reg = tvreg.open(tmp_path / "a")
    for task in zoo.finetuned:
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    reg.tag("topic", "prod")
    reg.add_remote("origin", url, options)
    store = reg.remotes()["origin"].store()
    first = reg.push()
    local_objects = set(reg.objects.ids())
    assert first.objects_sent == len(local_objects) and first.versions_sent == 3
    assert first.tags_sent == 1 and not first.renumbered
    assert {k for k in store.list("objects")} == {object_key(o) for o in local_objects}
    for rec in reg.all_records():
        assert store.read(rec.key) == reg.store.read(rec.key)  # the same sealed record
    again = reg.push()  # idempotent: nothing sent
    assert (again.objects_sent, again.versions_sent, again.tags_sent) == (0, 0, 0)
    assert again.objects_skipped == len(local_objects) and again.versions_skipped == 3
    # another registry took sentiment@1 there with other content: ours goes to @2
    other = tvreg.open(tmp_path / "b")
    other.create("sentiment", zoo.base, zoo.finetuned["topic"], similarities=False)
    other.add_remote("origin", url, options)
    rep = other.push(refs=["sentiment"])
    assert rep.renumbered == {"sentiment@1": "sentiment@2"}
    assert rep.objects_sent == 0  # topic's content: its blobs and manifest are there already
    assert sorted(store.list("refs/sentiment")) == ["refs/sentiment/1.json", "refs/sentiment/2.json"]


def test_push_cli_and_bad_input(run, zoo, reg_path, tmp_path):
    run("create", "topic", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    run("remote", "add", "shared", str(tmp_path / "shared"))
    r = run("push", "shared", "topic@1", "--json")
    assert json.loads(r.stdout)["versions_sent"] == 1 and "pushed to shared" in r.stderr
    assert "no remote 'origin'" in run("push", code=2).stderr
    run("remote", "add", "web", "https://example.org/registry")
    assert "read-only" in run("push", "web", code=2).stderr
    assert "nope" in run("push", "shared", "nope", code=2).stderr


# --- faults: one line, exit 1 or 2, the local registry unchanged ---------------------------------


@pytest.fixture
def filled_cli(run, zoo, reg_path):
    run("create", "topic", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    return reg_path


def _fault(run, reg_path, url, options, needle, *, code=1):
    from helpers import snapshot

    opts = [a for k, v in options.items() for a in ("--option", f"{k}={v}")]
    run("remote", "add", "bad", url, *opts)
    before = snapshot(reg_path)
    for command in (("push", "bad"), ("pull", "bad"), ("ls", "--remote", "bad"),
                    ("sql", "--remote", "bad", "SELECT 1")):
        r = run(*command, code=code)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (command, r.stderr)
        assert "Traceback" not in r.stderr
    assert snapshot(reg_path) == before


def test_unreachable_endpoint(run, filled_cli, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _fault(run, filled_cli, "s3://bucket/team", {"endpoint_url": f"http://127.0.0.1:{dead}"},
           "Could not connect")


def test_missing_bucket(run, filled_cli, s3_endpoint):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/team"
    run("remote", "add", "bad", url, "--option", f"endpoint_url={s3_endpoint}")
    r = run("push", "bad", code=1)
    assert "bucket does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for command in (("pull", "bad"), ("ls", "--remote", "bad")):
        r = run(*command, code=2)
        assert "holds no tvreg data" in r.stderr


def test_wrong_credentials(run, filled_cli, s3_endpoint, monkeypatch):
    import moto.settings
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys now
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    _fault(run, filled_cli, f"s3://{bucket}/team",
           {"endpoint_url": s3_endpoint, "skip_instance_cache": "true"}, "access denied")


def test_pull_from_http_needs_the_index(run, filled_cli, tmp_path, serve_http):
    folder = tmp_path / "served"
    folder.mkdir()
    run("remote", "add", "web", serve_http(folder))
    r = run("pull", "web", code=2)
    assert "holds no tvreg data" in r.stderr


def test_an_option_the_backend_rejects_is_one_line_of_bad_input(run, filled_cli, tmp_path,
                                                                 serve_http):
    """HTTP takes no ``anon``: the client library raises TypeError on the first request, which
    must not escape as a traceback."""
    from helpers import snapshot

    folder = tmp_path / "served"
    folder.mkdir()
    run("remote", "add", "web", serve_http(folder), "--option", "anon=true")
    before = snapshot(filled_cli)
    for args in (("ls", "--remote", "web"), ("pull", "web")):
        r = run(*args, code=2)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "the backend rejected an option" in lines[0]
        assert "anon" in lines[0] and "Traceback" not in r.stderr
    assert snapshot(filled_cli) == before


def test_push_and_pull_report_progress_in_objects_and_bytes(zoo, tmp_path):
    class Recorder:
        def __init__(self):
            self.total, self.seen = None, []

        def start(self, objects, nbytes):
            self.total = (objects, nbytes)

        def advance(self, nbytes):
            self.seen.append(nbytes)

    reg = tvreg.open(tmp_path / "a")
    reg.create("topic", zoo.base, zoo.finetuned["topic"], similarities=False)
    reg.add_remote("origin", str(tmp_path / "remote"))
    pushed = Recorder()
    rep = reg.push(progress=pushed)
    assert pushed.total == (rep.objects_sent, rep.bytes_sent) == (len(pushed.seen), sum(pushed.seen))
    clone = tvreg.open(tmp_path / "b")
    clone.add_remote("origin", str(tmp_path / "remote"))
    pulled = Recorder()
    rep = clone.pull(progress=pulled)
    assert pulled.total == (rep.objects_fetched, rep.bytes_fetched) == \
        (len(pulled.seen), sum(pulled.seen))


def test_the_remote_index_is_derived_data(zoo, tmp_path):
    """A missing or damaged index: listable remotes answer from their records, push rewrites
    it, and a re-push still recognises every version (it reads the records instead)."""
    from tvreg.errors import FormatError
    from tvreg.remote.index import TAGS_KEY, VERSIONS_KEY

    reg = tvreg.open(tmp_path / "a")
    for task in ("sentiment", "topic"):
        reg.create(task, zoo.base, zoo.finetuned[task], similarities=False)
    reg.tag("topic", "prod")
    reg.add_remote("origin", str(tmp_path / "remote"))
    reg.push()
    expected = reg.remote_ls(all_versions=True)
    assert expected == reg.ls(all_versions=True)
    store = reg.remote("origin").store()
    for key in (VERSIONS_KEY, TAGS_KEY):
        store.delete(key)
    assert reg.remote_ls(all_versions=True) == expected  # built from the records
    store.write(VERSIONS_KEY, b"not parquet")
    with pytest.raises(FormatError, match="push again"):
        reg.remote_ls()
    rep = reg.push()
    assert (rep.objects_sent, rep.versions_sent, rep.versions_skipped) == (0, 0, 2)
    assert reg.remote_ls(all_versions=True) == expected  # rewritten
    index_file = tmp_path / "remote" / VERSIONS_KEY
    before = index_file.stat().st_mtime_ns
    assert reg.push().versions_skipped == 2
    assert index_file.stat().st_mtime_ns == before  # an unchanged push writes no index
    reg.tag("sentiment", "prod")
    assert reg.push().tags_sent == 1  # a moved tag is a change: the index follows
    assert [r["name"] for r in reg.remote_sql("origin", "SELECT name FROM tags")] == \
        ["sentiment", "topic"]


def test_open_url_on_an_unreachable_endpoint_says_so(run, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    r = run("--registry", "s3://bucket/team", "--registry-option",
            f"endpoint_url=http://127.0.0.1:{dead}", "ls", code=1)
    assert "Could not connect" in r.stderr and len(r.stderr.strip().splitlines()) == 1
