"""Short listings in messages: ``a, b, c, d, e and 7 more``."""

from __future__ import annotations

from collections.abc import Iterable

#: how many items a message names before it counts the rest
SHOW = 5


def listing(items: Iterable[str], show: int = SHOW) -> str:
    """The first ``show`` of ``items`` joined with ``", "``, then `` and N more`` for the rest
    (nothing for an empty listing)."""
    items = list(items)
    more = f" and {len(items) - show} more" if len(items) > show else ""
    return ", ".join(items[:show]) + more
