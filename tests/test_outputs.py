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
