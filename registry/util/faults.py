"""Fault injection for crash tests: a test hook that SIGKILLs this process at a chosen step.

Every durable step of a write calls :func:`step` just before it changes anything. The kinds:
``stage`` (a blob written to a scratch folder), ``tmp`` (a temporary file created), ``rename``
(a file replaced), ``link`` (an exclusive create by link(2)), ``unlink`` (a temporary name
removed), ``touch``, ``delete``, ``put`` / ``put-new`` (a value written to a remote, plain or
exclusive), ``begin`` / ``commit`` / ``close`` (a catalog write about to open its connection,
which may create the file or replay its write-ahead log, and start its transaction; the
transaction committed; the connection closed, which may checkpoint the log), ``rmtree`` (a
scratch folder removed by gc) and ``sketch`` (records appended to a sketch file). The detail
is the path or key concerned. Two environment variables, read once when this module is
imported, turn the hook on:

``TVREG_FAULT_KILL_AT``
    kill this process with SIGKILL just before a step, as a crash or ``kill -9`` would, with
    no cleanup of any kind: ``K`` (a number ≥ 1) before its K-th step, counted over all its
    threads; ``KIND``, ``KIND:TEXT`` or either followed by ``#N``: before the N-th (default
    first) step of that kind whose detail contains TEXT (e.g. ``link:refs/`` before the first
    version record is claimed, ``commit#2`` before the second catalog commit).
``TVREG_FAULT_TRACE=FILE``
    append one line per step to FILE: ``K<TAB>TIME<TAB>KIND<TAB>DETAIL`` (TIME from
    ``time.time()``), and ``kill<TAB>K<TAB>KIND<TAB>DETAIL`` right before the kill. A run with
    the trace alone lists the steps of a command, so a test can kill it before each of them
    (tests/test_crash.py, benchmarks/bench_crash.py, through :mod:`tvreg.testing.crash`).

When neither is set, :func:`step` is a function that does nothing: the hook costs one call per
durable step (next to a file-system operation). A ``TVREG_FAULT_KILL_AT`` that does not parse
makes every write fail (``InvalidInput``, exit 2) before its first step. It is for tests only;
nothing in tvreg sets it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable

KILL_ENV = "TVREG_FAULT_KILL_AT"
TRACE_ENV = "TVREG_FAULT_TRACE"

#: the kinds of steps (see the module docstring)
KINDS = frozenset({"stage", "tmp", "rename", "link", "unlink", "touch", "delete", "put",
                   "put-new", "begin", "commit", "close", "rmtree", "sketch"})
_SPEC = re.compile(r"(?P<kind>[a-z-]+)(?::(?P<text>[^#]*))?(?:#(?P<nth>[1-9][0-9]*))?")


def _off(kind: str, detail: object = "") -> None:
    """The hook when no fault is asked for: nothing."""


def _armed(due: Callable[[int, str, str], bool] | None, trace: str | None):
    lock = threading.Lock()
    count = 0

    def record(line: str) -> None:
        if trace:
            fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def step(kind: str, detail: object = "") -> None:
        nonlocal count
        with lock:  # steps of several threads: one count, and the kill stops them all
            count += 1
            text = str(detail).replace("\t", " ").replace("\n", " ")
            if due is not None and due(count, kind, text):
                record(f"kill\t{count}\t{kind}\t{text}")
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)  # never go on, should the signal take a moment
            record(f"{count}\t{time.time():.6f}\t{kind}\t{text}")

    return step


def _kill_rule(spec: str) -> Callable[[int, str, str], bool] | None:
    """``K`` or ``KIND[:TEXT][#N]`` as a predicate over (step number, kind, detail)."""
    if spec.isdigit():
        k = int(spec)
        return (lambda n, kind, detail: n >= k) if k >= 1 else None
    m = _SPEC.fullmatch(spec)
    if not m or m.group("kind") not in KINDS:
        return None
    want, text, nth = m.group("kind"), m.group("text") or "", int(m.group("nth") or 1)
    seen = 0

    def due(n: int, kind: str, detail: str) -> bool:
        nonlocal seen
        if kind == want and text in detail:
            seen += 1
        return seen >= nth
    return due


def _refuse(text: str):
    def step(kind: str, detail: object = "") -> None:
        from tvreg.errors import InvalidInput

        raise InvalidInput(f"invalid ${KILL_ENV} {text!r}: a step number >= 1, or "
                           f"KIND[:TEXT][#N] with KIND one of {', '.join(sorted(KINDS))}")
    return step


def _from_env():
    spec = os.environ.get(KILL_ENV, "").strip()
    trace = os.environ.get(TRACE_ENV, "").strip() or None
    due = None
    if spec:
        due = _kill_rule(spec)
        if due is None:
            return _refuse(spec)  # every write fails (exit 2) before its first step
    if due is None and trace is None:
        return _off
    return _armed(due, trace)


#: call ``step(kind, detail)`` just before a durable change (see the module docstring)
step = _from_env()
