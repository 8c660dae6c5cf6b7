"""docs/quickstart.md runs as written: its shell and Python blocks, in order, in a fresh folder.

Conventions of the page (the test enforces them):

- a ```sh block is run with bash (``set -e``, ``tvreg`` on PATH), a ```python block is run in a
  fresh namespace, both in a temporary folder with ``TVREG_HOME`` set to ``registry`` in it
  (what the page's set-up block does), and each must succeed;
- a ```text block right after one of those is the output it must print: each line, with runs
  of spaces collapsed, must match a line of the output (stdout and stderr together), in order;
  ``…`` matches anything;
- a block right after the line ``<!-- quickstart: not run -->`` is shown, not run (installing,
  making the folder).
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
NOT_RUN = "<!-- quickstart: not run -->"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\n", re.M | re.S)


def blocks(text: str) -> list[tuple[str, str, bool]]:
    """``(lang, body, run)`` for every fenced block of ``text``."""
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        out.append((m.group(1), m.group(2), before != NOT_RUN))
    return out


def steps(text: str) -> list[tuple[str, str, str | None]]:
    """``(lang, code, expected output or None)`` of the blocks to run, in order."""
    result: list[tuple[str, str, str | None]] = []
    for lang, body, run in blocks(text):
        if lang == "text":
            assert result and result[-1][2] is None, "a text block must follow a sh/python block"
            result[-1] = (result[-1][0], result[-1][1], body)
        elif run:
            assert lang in ("sh", "python"), f"unexpected block language {lang!r}"
            result.append((lang, body, None))
    return result


def _normal(line: str) -> str:
    return " ".join(line.split())


def check_output(expected: str, actual: str, where: str) -> None:
    """Each expected line matches some actual line, in order (``…`` is a wildcard)."""
    lines = [_normal(line) for line in actual.splitlines()]
    i = 0
    for want in filter(None, map(_normal, expected.splitlines())):
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("…")))
        while i < len(lines) and not pattern.fullmatch(lines[i]):
            i += 1
        assert i < len(lines), f"{where}: no line matching {want!r} (in order) in:\n{actual}"
        i += 1


def run_sh(code: str, cwd: pathlib.Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n$ {code}\n{proc.stdout}"
    return proc.stdout


def run_python(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/quickstart.md", "exec"), {"__name__": "__quickstart__"})
    return out.getvalue()


def test_quickstart_blocks_are_what_the_test_expects():
    all_blocks = blocks((DOCS / "quickstart.md").read_text())
    shown = [body for _, body, run in all_blocks if not run]
    # only installing and making the folder are not run; the folder is what the test sets up
    assert len(shown) == 2 and "make install" in shown[0]
    assert 'export TVREG_HOME="$PWD/registry"' in shown[1]
    kinds = [lang for lang, _, _ in steps((DOCS / "quickstart.md").read_text())]
    assert kinds.count("sh") >= 5 and kinds.count("python") >= 2


def test_quickstart_runs(tmp_path, monkeypatch):
    work = tmp_path / "tvreg-quickstart"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TVREG_HOME", str(work / "registry"))
    monkeypatch.setenv("TVREG_CACHE", str(tmp_path / "cache"))
    bindir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bindir, "tvreg")):
        pytest.skip("the tvreg script is not installed next to this Python")
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    for n, (lang, code, expected) in enumerate(steps((DOCS / "quickstart.md").read_text()), 1):
        output = run_sh(code, work, env) if lang == "sh" else run_python(code)
        if expected is not None:
            check_output(expected, output, f"block {n} ({lang})")
