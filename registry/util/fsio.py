"""Durability of local files: what a rename into a folder needs to survive a crash."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """fsync the folder ``path``, so that a file renamed or linked into it survives a crash; a
    folder that cannot be opened or synced (some filesystems refuse) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
