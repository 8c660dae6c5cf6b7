"""Recycled host buffers.

A fresh buffer costs a page fault per 4 KiB page the first time it is written; on virtual
machines that is about 10 µs a page, slower than decompressing into it. Composition and
application decode, sum and read base tensors into buffers taken from a :class:`BufferPool`
and given back once the data is used, so a pass over a model touches fresh memory only for
the few tensors in flight.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


class BufferPool:
    """Thread-safe free list of uint8 CPU buffers; keeps at most ``keep`` free ones (the
    largest)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buffer, view)``: a buffer of at least the size of a ``dtype`` tensor of ``shape``
        (the smallest free one that fits, else a new one) and that tensor as a view of it."""
        import torch

        itemsize = torch.empty((), dtype=dtype).element_size()
        n = math.prod(shape) * itemsize
        with self._lock:  # tensors compare by value, so find by index
            fits = [i for i, b in enumerate(self._free) if b.numel() >= n]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel())) if fits else None
        if buf is None:
            buf = torch.empty(max(n, itemsize), dtype=torch.uint8)
        return buf, buf[:n].view(dtype).view(shape)

    def give(self, buf: torch.Tensor | None) -> None:
        """Return a buffer taken from this pool; its views must no longer be used."""
        if buf is None:
            return
        with self._lock:
            self._free.append(buf)
            if len(self._free) > self.keep:
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].numel()))

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
