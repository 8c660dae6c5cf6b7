"""Hashes that name things: objects, vectors, bases and architectures (see docs/format.md)."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import torch

HEX_LEN = 64


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hex_digest(text: str) -> bool:
    return len(text) == HEX_LEN and all(c in "0123456789abcdef" for c in text)


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding of every JSON document tvreg hashes: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def tensor_bytes(t: "torch.Tensor") -> memoryview:
    """The raw little-endian bytes of a tensor in C order (works for bfloat16 too)."""
    import torch

    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(-1).view(torch.uint8).numpy())


class BaseHasher:
    """sha256 over a base model's floating tensors in name order.

    For each tensor: ``u64le(len(h)) || h || u64le(len(b)) || b`` where ``h`` is the canonical JSON
    of ``[name, dtype, shape]`` and ``b`` the raw bytes. Lengths make the encoding unambiguous.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._last: str | None = None

    def update(self, name: str, dtype: str, shape: Iterable[int], data: bytes | memoryview) -> None:
        if self._last is not None and name <= self._last:
            raise ValueError("BaseHasher needs tensors in strictly increasing name order")
        self._last = name
        header = canonical_json([name, dtype, list(shape)])
        self._h.update(struct.pack("<Q", len(header)))
        self._h.update(header)
        self._h.update(struct.pack("<Q", len(data)))
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def arch_fingerprint(infos: Iterable[tuple[str, str, Iterable[int]]]) -> str:
    """sha256 of the canonical JSON list of ``[name, shape, dtype]`` of ALL tensors, by name."""
    rows = sorted([name, list(shape), dtype] for name, dtype, shape in infos)
    return hashlib.sha256(canonical_json(rows)).hexdigest()
