"""The gc lock of a local registry (docs/format.md §11): ``flock(2)`` on ``REGISTRY/.gc-lock``.

A write holds it *shared* while it checks that every object its new record will name is still
stored (touching each one, so that gc's grace period restarts) and writes the record
(:func:`referencing`); gc holds it *exclusively* while it reads the records stored since its first
pass and deletes (:mod:`tvreg.maintenance.verify`). The two never overlap, so gc cannot delete an
object between a write's check and its record: no record ever names an object that gc deleted,
whatever the grace period. Writes hold it for milliseconds and do not exclude one another.

Scratch folders of writes in progress are locked the same way (:func:`lock_new_folder`) and gc
leaves locked ones alone (:func:`remove_unless_locked`), whatever their age.

Waits poll with backoff for up to ``$TVREG_LOCK_TIMEOUT`` seconds (the catalog's setting), then
raise :class:`~tvreg.errors.RegistryBusy`. A process that dies holds nothing: the kernel drops
its locks with its file descriptors. Without ``fcntl`` (Windows) there is no lock, and gc relies
on its grace period alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator

from tvreg.errors import RegistryBusy
from tvreg.util import faults
from tvreg.util.locks import flock_until, read_holder, write_holder

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".gc-lock"


@contextlib.contextmanager
def gc_lock(root: str, *, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold the gc lock of the registry at ``root``: exclusive (gc) or shared (writes)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    from tvreg.stores.local import _FILE_MODE

    path = os.path.join(root, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    try:
        if not flock_until(fd, exclusive=exclusive, deadline=time.monotonic() + timeout):
            raise RegistryBusy(_busy(fd, path, exclusive, timeout)) from None
        if exclusive:  # say who holds it, for the message of a write that waits too long
            write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy(fd: int, path: str, exclusive: bool, timeout: float) -> str:
    if exclusive:
        return (f"{path}: writes kept the gc lock for {timeout:g}s; run gc again, or raise "
                "$TVREG_LOCK_TIMEOUT")
    holder = read_holder(fd)
    who = f" (PID {holder})" if holder else ""
    return (f"{path}: a running gc{who} kept the gc lock for {timeout:g}s; nothing was recorded: "
            "run the command again, or raise $TVREG_LOCK_TIMEOUT")


# --- scratch folders -----------------------------------------------------------------------------


def lock_new_folder(path: str) -> int | None:
    """Lock the folder ``path`` just made (exclusively; the lock lives as long as the returned
    descriptor); None if gc removed it before the lock was taken (make another)."""
    if fcntl is None:  # pragma: no cover
        return os.open(path, os.O_RDONLY)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits while a gc that found it unlocked removes it
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def remove_unless_locked(path: str) -> bool:
    """Remove the scratch entry ``path`` unless a write in progress holds its lock; True if it
    was removed (or was already gone)."""
    if fcntl is None:  # pragma: no cover
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use
        faults.step("rmtree", path)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def in_use(path: str) -> bool:
    """Whether a write in progress holds the lock of the scratch entry ``path``."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
