"""Issue 14: what tvreg writes to files and to stdout (format metadata, broken pipes, ...)."""

from __future__ import annotations

import os
import subprocess
import sys


def _tvreg(tmp_path):
    env = {**os.environ, "TVREG_HOME": str(tmp_path / "reg")}
    env.pop("TVREG_DEBUG", None)
    subprocess.run([sys.executable, "-m", "tvreg.cli", "init"], env=env, check=True,
                   capture_output=True)
    return [sys.executable, "-m", "tvreg.cli"], env


def test_broken_pipe_exits_0_quietly(tmp_path):
    """`tvreg sql "…" | head -1` with more output than a pipe holds: rc 0, nothing on stderr."""
    cmd, env = _tvreg(tmp_path)
    proc = subprocess.Popen(cmd + ["sql", "select * from range(300000)"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as head -1 does
    err = proc.stderr.read()
    rc = proc.wait(timeout=60)
    assert first.strip()
    assert rc == 0, err
    assert err == b""


# --- item 3: an output never overwrites an input ------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402
from helpers import snapshot  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _sharded(base, folder):
    """A real Hugging Face style sharded copy of ``base``: two shards and an index json."""
    folder.mkdir()
    tensors = load_file(str(base))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), 1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / shard),
                  metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture
def stored(run, zoo):
    run("create", "topic", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]))
    return run


@pytest.mark.parametrize("target", ["model-00001-of-00002.safetensors",
                                    "model.safetensors.index.json", "new.safetensors"])
def test_apply_refuses_an_output_in_a_sharded_base(stored, zoo, tmp_path, reg_path, target):
    base = _sharded(zoo.base, tmp_path / "hf_base")
    before, reg_before = snapshot(base), snapshot(reg_path)
    r = stored("apply", "topic", "--base", str(base), "-o", str(base / target), code=2)
    assert "input checkpoint" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(base) == before and snapshot(reg_path) == reg_before


def test_apply_refuses_its_base_file_also_through_a_symlink(stored, zoo, tmp_path):
    before = zoo.base.read_bytes() if hasattr(zoo.base, "read_bytes") else open(zoo.base, "rb").read()
    r = stored("apply", "topic", "--base", str(zoo.base), "-o", str(zoo.base), code=2)
    assert "input checkpoint" in r.stderr
    link = tmp_path / "link.safetensors"
    os.symlink(zoo.base, link)
    r = stored("apply", "topic", "--base", str(zoo.base), "-o", str(link), code=2)
    assert "input checkpoint" in r.stderr
    assert open(zoo.base, "rb").read() == before


@pytest.mark.parametrize("args", [["export", "topic"], ["compose", "topic"]])
def test_outputs_inside_the_registry_are_refused(stored, reg_path, args):
    before = snapshot(reg_path)
    r = stored(*args, "-o", str(reg_path / "x.safetensors"), code=2)
    assert "registry folder" in r.stderr
    assert snapshot(reg_path) == before


# --- item 4: every writer's file says "format": "pt" ----------------------------------------------

def test_every_written_file_has_format_pt(stored, zoo, tmp_path):
    outs = {"export": tmp_path / "e.safetensors", "compose": tmp_path / "c.safetensors",
            "apply": tmp_path / "a.safetensors"}
    stored("export", "topic", "-o", str(outs["export"]))
    stored("compose", "0.5*topic", "-o", str(outs["compose"]))
    stored("apply", "topic", "--base", str(zoo.base), "-o", str(outs["apply"]))
    for cmd, path in outs.items():
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata()["format"] == "pt", cmd


# --- item 5: -o - writes the safetensors bytes to stdout ------------------------------------------

def _cli(tmp_path, zoo):
    cmd, env = _tvreg(tmp_path)
    subprocess.run(cmd + ["create", "topic", "--base", str(zoo.base), "--finetuned",
                          str(zoo.finetuned["topic"])], env=env, check=True, capture_output=True)
    return cmd, env


def test_dash_output_writes_safetensors_to_stdout(tmp_path, zoo):
    from safetensors.torch import load

    cmd, env = _cli(tmp_path, zoo)
    for args in (["export", "topic", "-o", "-"], ["compose", "0.5*topic", "-o", "-"],
                 ["apply", "topic", "--base", str(zoo.base), "-o", "-"]):
        p = subprocess.run(cmd + args, env=env, capture_output=True, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        tensors = load(p.stdout)
        assert tensors, args
        assert not (tmp_path / "-").exists()
    ref = load_file(str(zoo.base))
    assert load(p.stdout).keys() == ref.keys()


def test_dash_output_is_refused_with_json(tmp_path, zoo):
    cmd, env = _cli(tmp_path, zoo)
    p = subprocess.run(cmd + ["compose", "topic", "-o", "-", "--json"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "--json" in p.stderr and p.stdout == ""


# --- item 16: compose and apply draw a progress bar on a terminal only ----------------------------

def _stderr_of(cmd, env, on_pty):
    import pty
    import select

    env = {**env, "COLUMNS": "100"}
    env.pop("CI", None)
    env.pop("TVREG_NO_PROGRESS", None)
    if not on_pty:
        p = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stderr.decode(errors="replace")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real size
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_compose_and_apply_show_progress_only_on_a_terminal(tmp_path, zoo):
    cmd, env = _cli(tmp_path, zoo)
    for args in (["compose", "0.5*topic", "-o", str(tmp_path / "c.safetensors")],
                 ["apply", "topic", "--base", str(zoo.base), "-o", str(tmp_path / "a.safetensors")]):
        shown = _stderr_of(cmd + args, env, on_pty=True)
        assert f"{args[0]}:" in shown and " tensors" in shown, shown
        piped = _stderr_of(cmd + args, env, on_pty=False)
        assert f"{args[0]}:" not in piped and " tensors" not in piped, piped


def test_dash_output_of_base_export_writes_the_base_to_stdout(tmp_path, zoo):
    from safetensors.torch import load

    cmd, env = _tvreg(tmp_path)
    subprocess.run(cmd + ["base", "add", str(zoo.base)], env=env, check=True, capture_output=True)
    p = subprocess.run(cmd + ["base", "ls", "--json"], env=env, check=True, capture_output=True)
    base_hash = json.loads(p.stdout)[0]["base_hash"]
    p = subprocess.run(cmd + ["base", "export", base_hash[:12], "-"], env=env,
                       capture_output=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got, ref = load(p.stdout), load_file(str(zoo.base))
    assert got.keys() == ref.keys() and all(got[k].equal(ref[k]) for k in ref)
    assert not (tmp_path / "-").exists()


def test_dash_output_to_a_terminal_is_refused_and_writes_nothing(tmp_path, zoo):
    """Binary safetensors bytes never go to a terminal: exit 2, one line, no file named '-'."""
    import pty

    cmd, env = _cli(tmp_path, zoo)
    for args in (["export", "topic", "-o", "-"], ["compose", "0.5*topic", "-o", "-"],
                 ["apply", "topic", "--base", str(zoo.base), "-o", "-"]):
        master, slave = pty.openpty()
        p = subprocess.run(cmd + args, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                           stderr=subprocess.PIPE, cwd=tmp_path, timeout=120)
        os.close(slave)
        os.set_blocking(master, False)
        try:
            on_terminal = os.read(master, 65536)
        except (BlockingIOError, OSError):
            on_terminal = b""
        os.close(master)
        err = p.stderr.decode()
        assert p.returncode == 2, (args, err)
        assert "stdout, which is a terminal" in err and len(err.strip().splitlines()) == 1
        assert on_terminal == b"" and not (tmp_path / "-").exists()
