"""Waiting for a ``flock(2)`` lock with backoff, and naming who holds it: what the gc lock
(:mod:`tvreg.storage.gclock`) and the catalog's lock (:mod:`tvreg.catalog.db`) share.

POSIX only: callers check that ``fcntl`` is there before they lock (without it, neither lock
exists)."""

from __future__ import annotations

import os
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


def flock_until(fd: int, *, exclusive: bool, deadline: float) -> bool:
    """Lock ``fd`` (exclusively or shared), polling with backoff (2 ms, growing by half each
    time up to 100 ms) until ``deadline`` (:func:`time.monotonic`); True once it is held, False
    if the deadline passed first."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def write_holder(fd: int) -> None:
    """Write this process's PID into the lock file ``fd`` holds exclusively, for the message of
    a process that waits too long on it (:func:`read_holder`)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def read_holder(fd: int) -> str | None:
    """The PID that the holder of the lock file ``fd`` wrote there (:func:`write_holder`), or
    None if there is none."""
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return holder if holder.isdigit() else None
