"""Errors that help (issue 14, items 12, 14, 15): each names what is wrong and how to fix it, in
one line, with exit code 2 for bad input; never a Python repr, raw SQL or errno text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import snapshot

import tvreg
from tvreg.errors import InvalidInput, SQLError


def _cli(*args: str, env_home=None):
    env = dict(os.environ)
    if env_home is not None:
        env["TVREG_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "tvreg.cli", *args], env=env,
                          capture_output=True, text=True)


# --- 12: a registry path that is a file -------------------------------------------------------

@pytest.mark.parametrize("how", ["env", "option", "init", "under-file"])
def test_a_registry_path_that_is_a_file_says_so(tmp_path, how):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    before = snapshot(tmp_path)
    if how == "env":
        p = _cli("ls", env_home=f)
    elif how == "option":
        p = _cli("--registry", str(f), "ls")
    elif how == "init":
        p = _cli("init", env_home=f)
    else:
        p = _cli("init", env_home=f / "sub")
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line
    assert f"{f} is a file, not a registry folder" in line
    assert "Errno" not in line and "tvreg init" not in line
    assert snapshot(tmp_path) == before


def test_the_library_raises_a_typed_error_for_a_file_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidInput, match="is a file, not a registry folder"):
        tvreg.open(f)
    assert f.read_text() == "x"


# --- 15: smaller messages ---------------------------------------------------------------------

def test_a_too_short_id_prefix_says_how_many_digits(run, filled):
    r = run("show", "6d3d", code=2)
    assert "at least 6 hex digits" in r.stderr


def test_a_state_dict_entry_of_the_wrong_type_uses_the_right_article(tmp_path):
    import torch

    from tvreg.tensors.checkpoints import open_checkpoint
    path = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(2), "step": 3}, path)
    with pytest.raises(InvalidInput) as e:
        ck = open_checkpoint(path)
        list(ck.keys()) if hasattr(ck, "keys") else None
    assert "is an int" in str(e.value)
    assert "a int" not in str(e.value)


def test_install_is_refused_as_an_install_statement(run, filled):
    r = run("sql", "INSTALL httpfs", code=2)
    assert "INSTALL statements are not allowed" in r.stderr
    assert "LOAD" not in r.stderr
    with pytest.raises(SQLError, match="INSTALL statements"):
        filled.sql("FORCE INSTALL httpfs")
    r = run("sql", "LOAD httpfs", code=2)
    assert "LOAD statements are not allowed" in r.stderr


# --- 14: backend errors name the remote and its URL ------------------------------------------

_NO_REPR = ("<", "Store(", "INSERT", "read_parquet", "Errno")


def _clean(text: str) -> None:
    for bad in _NO_REPR:
        assert bad not in text, (bad, text)


def _pushed(run, zoo, url):
    run("create", "sentiment", "--base", str(zoo.base), "--finetuned",
        str(zoo.finetuned["sentiment"]))
    run("remote", "add", "team", url)
    run("push", "team")


def test_a_garbage_remote_index_names_the_remote_and_its_url(run, zoo, tmp_path, reg_path):
    remote = tmp_path / "remote"
    _pushed(run, zoo, str(remote))
    (remote / "index" / "versions.parquet").write_bytes(b"garbage, not parquet")
    before = snapshot(reg_path)
    r = run("ls", "--remote", "team", code=1)
    line = r.stderr.strip()
    assert "\n" not in line
    assert "remote team" in line and f"file://{remote}" in line
    assert "unreadable" in line and "push again" in line
    _clean(line)
    assert snapshot(reg_path) == before


def test_a_garbage_index_over_http_names_the_url(run, zoo, tmp_path, serve_http):
    remote = tmp_path / "remote"
    _pushed(run, zoo, str(remote))
    (remote / "index" / "tags.parquet").write_bytes(b"\x00" * 64)
    url = serve_http(remote)
    with pytest.raises(tvreg.errors.TvregError) as e:
        with tvreg.open(url) as r:
            r.ls()
    assert url in str(e.value) and "unreadable" in str(e.value)
    _clean(str(e.value))


def test_a_memory_remote_missing_key_names_the_remote(run, zoo, tmp_path):
    import fsspec

    url = f"memory://d14-{tmp_path.name}"
    _pushed(run, zoo, url)
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{url.removeprefix('memory://')}/index/versions.parquet", b"junk")
    r = run("ls", "--remote", "team", code=1)
    assert "remote team" in r.stderr and url in r.stderr
    _clean(r.stderr)


def test_store_messages_use_the_location_not_a_repr(tmp_path):
    from tvreg.stores import FsspecStore, LocalStore, MissingKey

    store = FsspecStore.from_url(f"memory://d14-{tmp_path.name}/x")
    with pytest.raises(MissingKey) as e:
        store.read("objects/ab/cd")
    assert "memory://" in str(e.value)
    _clean(str(e.value))
    assert str(LocalStore(tmp_path)) == str(tmp_path)
