"""Byte counts as people read them (``1.5 MiB``), one spelling for the CLI's tables and the web
view's pages."""

from __future__ import annotations

from typing import Any


def human_bytes(n: Any) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB (one decimal past B); empty for None."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)
