"""Small helpers shared by test modules (import as ``from helpers import …``)."""

from __future__ import annotations

import pathlib


def snapshot(root) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders as None) with the bytes of every file: two equal
    snapshots mean nothing was created, removed or changed."""
    root = pathlib.Path(root)
    if not root.exists():
        return {}
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out
