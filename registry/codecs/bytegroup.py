"""Byte grouping: byte k of every item goes to stream k (ZipNN's main trick).

For little-endian floats this puts the exponent bytes, which vary little across a delta tensor,
next to each other, where zstd finds the redundancy; mantissa bytes stay near-random.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject


@register_codec
@dataclasses.dataclass(frozen=True)
class ByteGroup(Codec):
    """Byte ``k`` of every ``itemsize``-byte item goes to stream ``k``; the streams are
    concatenated (the size is kept)."""

    itemsize: int
    name = "bytegroup"

    def __post_init__(self) -> None:
        if isinstance(self.itemsize, bool) or not isinstance(self.itemsize, int) \
                or not 1 <= self.itemsize <= 16:
            raise ValueError("itemsize must be an integer in 1..16")

    def label(self) -> str:
        return f"bytegroup{self.itemsize}"

    def encode(self, data: bytes | memoryview) -> bytes:
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size % self.itemsize:
            raise ValueError("data length is not a multiple of the item size")
        return np.ascontiguousarray(arr.reshape(-1, self.itemsize).T).tobytes()

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        out = np.empty(nbytes, dtype=np.uint8)
        self.decode_into(data, out)
        return out.tobytes()

    def decode_into(self, data: bytes | memoryview, dest: np.ndarray) -> None:
        """Un-group straight into ``dest`` (uint8, the decoded size): one contiguous stream at a
        time into a strided column, 1.5-2.5x faster than numpy's generic transpose copy."""
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size != dest.size or arr.size % self.itemsize:
            raise CorruptObject(f"byte-grouped data of {arr.size} bytes, expected {dest.size}")
        streams = arr.reshape(self.itemsize, -1)
        columns = dest.reshape(-1, self.itemsize)
        for k in range(self.itemsize):
            columns[:, k] = streams[k]
