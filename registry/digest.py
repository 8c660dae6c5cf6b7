"""Hashes that name things: objects, vectors, bases and architectures (see docs/format.md)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


#: the deepest nesting of arrays and objects :func:`parse_json` accepts (tvreg's documents
#: nest a few levels; deeper ones could not even be re-encoded on a busy stack)
MAX_JSON_DEPTH = 64


def parse_json(data: bytes | str) -> Any:
    """``json.loads`` for documents tvreg did not write itself (stored, pulled or given): strict
    JSON only. Anything else raises :class:`ValueError`: ``NaN``/``Infinity``, numbers that
    overflow a double, integers of more than 4300 digits, undecodable bytes, and arrays and
    objects nested deeper than :data:`MAX_JSON_DEPTH` (which could otherwise end in a
    :class:`RecursionError` wherever the value is encoded or walked)."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    level, depth = ([value] if type(value) in (dict, list) else []), 0
    while level:  # breadth first, one level of containers at a time
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        level = [v for node in level for v in (node.values() if type(node) is dict else node)
                 if type(v) in (dict, list)]
    return value


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor in C order (works for bfloat16 too)."""
    import torch

    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return t.view(-1).view(torch.uint8).numpy().data  # the array's buffer, no copy


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
