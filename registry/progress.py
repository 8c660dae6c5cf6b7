"""Progress bars on a terminal only: none when stderr is piped, under CI, or with TVREG_NO_PROGRESS."""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled() -> bool:
    if os.environ.get("CI") or os.environ.get("TVREG_NO_PROGRESS"):
        return False
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar (bytes by default) on a terminal, else an object with the same no-op methods."""
    if not enabled():
        return _Null()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                leave=False, file=sys.stderr, dynamic_ncols=True)
