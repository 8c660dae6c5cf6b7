"""Errors that help (issue 14, items 12, 14, 15): each names what is wrong and how to fix it, in
one line, with exit code 2 for bad input; never a Python repr, raw SQL or errno text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tvreg
from helpers import snapshot
from tvreg.errors import InvalidInput, NotFound, SQLError


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

    from tvreg.checkpoints import open_checkpoint
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
