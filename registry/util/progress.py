"""Progress bars on a terminal only: none when stderr is piped, under CI, with
TVREG_NO_PROGRESS, or on a thread inside :func:`quiet` (a bulk job draws one bar of its own)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

_local = threading.local()


def enabled() -> bool:
    if os.environ.get("CI") or os.environ.get("TVREG_NO_PROGRESS"):
        return False
    if getattr(_local, "quiet", False):
        return False
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No bars from this thread within the block."""
    before = getattr(_local, "quiet", False)
    _local.quiet = True
    try:
        yield
    finally:
        _local.quiet = before


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Null:
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


class Transfer:
    """Progress of a push or pull: bytes on the bar, objects in its caption.

    The library calls :meth:`start` once with the totals, then :meth:`advance` per object.
    """

    def __init__(self, desc: str, unit: str = "objects") -> None:
        self.desc = desc
        self.unit = unit
        self.objects = self.total_objects = 0
        self._bar: Any = _Null()

    def start(self, objects: int, nbytes: int) -> None:
        self.total_objects = objects
        self._bar = bar(nbytes, self.desc)
        if hasattr(self._bar, "set_postfix_str"):
            self._bar.set_postfix_str(f"0/{objects} {self.unit}")

    def advance(self, nbytes: int) -> None:
        self.objects += 1
        self._bar.update(nbytes)
        if hasattr(self._bar, "set_postfix_str"):
            self._bar.set_postfix_str(f"{self.objects}/{self.total_objects} {self.unit}",
                                      refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
