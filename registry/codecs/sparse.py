"""Sparsification: keep the ``k`` largest-magnitude values of a float32 tensor (lossy).

``topk`` stores where the kept values are (a bitmap) and the values themselves; ``ternary``
(ComPEFT-style) stores the bitmap, one sign bit per kept value and a single scale, so every kept
value decodes to ±scale. The support is the same for both: the ``k`` nonzero values of largest
magnitude, ties broken by position (the lower flat index first), so it depends only on the
values and the encoding is the same on every machine. Bitmaps are LSB-first (bit ``i % 8`` of
byte ``i // 8`` is element ``i``), padding bits zero. Decoding writes exact zeros (+0.0)
outside the support.

A tensor is sparsified as a whole (its ``k`` is global), so it is stored in one chunk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject, InvalidInput


def top_k_support(x: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` nonzero values of largest ``|x|`` (ties: lower index first).
    ``k`` must not exceed the number of nonzero values."""
    a = np.abs(x)
    n = a.size
    if k == 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return a > 0
    t = np.partition(a, n - k)[n - k]  # the k-th largest magnitude (> 0 since k <= nonzeros)
    mask = a > t
    ties = np.flatnonzero(a == t)[:k - int(np.count_nonzero(mask))]
    mask[ties] = True
    return mask


def _float32(data: bytes | memoryview) -> np.ndarray:
    x = np.frombuffer(data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidInput(f"{int((~np.isfinite(x)).sum())} NaN/Inf value(s): a lossy codec "
                           "needs finite values")
    return x


def _support(x: np.ndarray, k: int) -> np.ndarray:
    nonzero = int(np.count_nonzero(x))
    if k > nonzero:
        raise InvalidInput(f"cannot keep {k} values of a tensor with {nonzero} nonzero values")
    return top_k_support(x, k)


def _bits(raw: np.ndarray, n: int, what: str) -> np.ndarray:
    """The ``n`` bits of an LSB-first bitmap (``raw``: exactly ceil(n/8) bytes), padding checked."""
    bits = np.unpackbits(raw, bitorder="little")
    if bits[n:].any():
        raise CorruptObject(f"{what}: padding bits of a bitmap are not zero")
    return bits[:n].view(bool)


def _check_k(k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= (1 << 40):
        raise ValueError("k must be an integer >= 0")


def _count(nbytes: int, what: str) -> int:
    if nbytes % 4:
        raise CorruptObject(f"{what}: {nbytes} bytes are not float32 values")
    return nbytes // 4


@register_codec
@dataclasses.dataclass(frozen=True)
class TopK(Codec):
    """Encoding: the support bitmap, zero-padded to a multiple of 4 bytes, then the ``k`` kept
    values (float32) in index order."""

    k: int
    name = "topk"
    lossless = False
    keeps_size = False

    def __post_init__(self) -> None:
        _check_k(self.k)

    def label(self) -> str:
        return "topk"

    def encoded_nbytes(self, nbytes: int) -> int:
        n = _count(nbytes, "topk")
        if self.k > n:
            raise CorruptObject(f"topk: k = {self.k} exceeds the {n} values")
        return 4 * -(-n // 32) + 4 * self.k

    def encode(self, data: bytes | memoryview) -> bytes:
        x = _float32(data)
        mask = _support(x, self.k)
        bitmap = np.packbits(mask, bitorder="little").tobytes()
        return bitmap + bytes(-len(bitmap) % 4) + x[mask].tobytes()

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        n = _count(nbytes, "topk")
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != self.encoded_nbytes(nbytes):
            raise CorruptObject(f"topk: {raw.size} bytes, expected {self.encoded_nbytes(nbytes)}")
        nb, padded = -(-n // 8), 4 * -(-n // 32)
        mask = _bits(raw[:nb], n, "topk")
        if raw[nb:padded].any() or int(np.count_nonzero(mask)) != self.k:
            raise CorruptObject(f"topk: the bitmap does not mark exactly {self.k} values")
        out = np.zeros(n, dtype=np.float32)
        out[mask] = raw[padded:].view(np.float32)
        return out.tobytes()


@register_codec
@dataclasses.dataclass(frozen=True)
class Ternary(Codec):
    """Encoding: the scale (float32), the support bitmap (ceil(n/8) bytes), then one sign bit
    per kept value in index order (1: negative; ceil(k/8) bytes). The scale is the mean
    magnitude of the kept values, ``fl32(Σ|x_i| / k)`` with the sum in float64: for a fixed
    support and signs, the scale that minimises the L2 error."""

    k: int
    name = "ternary"
    lossless = False
    keeps_size = False

    def __post_init__(self) -> None:
        _check_k(self.k)

    def label(self) -> str:
        return "ternary"

    def encoded_nbytes(self, nbytes: int) -> int:
        n = _count(nbytes, "ternary")
        if self.k > n:
            raise CorruptObject(f"ternary: k = {self.k} exceeds the {n} values")
        return 4 + -(-n // 8) + -(-self.k // 8)

    def encode(self, data: bytes | memoryview) -> bytes:
        x = _float32(data)
        mask = _support(x, self.k)
        kept = x[mask]
        scale = np.float32(np.abs(kept).astype(np.float64).sum() / self.k) if self.k else \
            np.float32(0)
        return (scale.tobytes() + np.packbits(mask, bitorder="little").tobytes()
                + np.packbits(kept < 0, bitorder="little").tobytes())

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        n = _count(nbytes, "ternary")
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != self.encoded_nbytes(nbytes):
            raise CorruptObject(f"ternary: {raw.size} bytes, expected "
                                f"{self.encoded_nbytes(nbytes)}")
        scale = raw[:4].view(np.float32)[0]
        nb = -(-n // 8)
        mask = _bits(raw[4:4 + nb], n, "ternary")
        if int(np.count_nonzero(mask)) != self.k:
            raise CorruptObject(f"ternary: the bitmap does not mark exactly {self.k} values")
        negative = _bits(raw[4 + nb:], self.k, "ternary")
        out = np.zeros(n, dtype=np.float32)
        out[mask] = np.where(negative, -scale, scale)
        return out.tobytes()
