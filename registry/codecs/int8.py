"""int8: float32 rows quantized to int8 with one absmax scale per row (lossy; ~a quarter of the
bytes).

The data is a float32 matrix with ``cols`` columns (rows = size / (4 · cols)). Per row,
``scale = fl32(max|x| / 127)`` and ``q = clip(rint(fl32(x / scale)), -127, 127)`` (``q = 0``
for a row whose scale is 0); the encoding is the scales (float32) followed by ``q`` (int8, row
by row). Decoding is ``fl32(q · scale)``: one IEEE float32 multiplication per element, the same
on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject, InvalidInput

QMAX = 127


@register_codec
@dataclasses.dataclass(frozen=True)
class Int8(Codec):
    """A float32 matrix of ``cols`` columns as one float32 absmax scale per row and int8 values."""

    cols: int
    name = "int8"
    lossless = False
    keeps_size = False

    def __post_init__(self) -> None:
        if isinstance(self.cols, bool) or not isinstance(self.cols, int) \
                or not 1 <= self.cols <= (1 << 40):
            raise ValueError("cols must be a positive integer")

    def label(self) -> str:
        return "int8"

    def _rows(self, nbytes: int) -> int:
        if nbytes % (4 * self.cols):
            raise CorruptObject(f"int8: {nbytes} bytes are not float32 rows of {self.cols}")
        return nbytes // (4 * self.cols)

    def encoded_nbytes(self, nbytes: int) -> int:
        rows = self._rows(nbytes)
        return 4 * rows + rows * self.cols

    def encode(self, data: bytes | memoryview) -> bytes:
        x = np.frombuffer(data, dtype=np.float32).reshape(self._rows(len(data)), self.cols)
        if not np.isfinite(x).all():
            raise InvalidInput(f"{int((~np.isfinite(x)).sum())} NaN/Inf value(s): a lossy codec "
                               "needs finite values")
        scale = (np.abs(x).max(axis=1, initial=0) / np.float32(QMAX)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))[:, None]
        with np.errstate(over="ignore"):  # a subnormal scale may overflow x / scale: clipped
            q = np.rint(x / safe)
        q = np.clip(q, -QMAX, QMAX).astype(np.int8)
        q[scale == 0] = 0
        return scale.tobytes() + q.tobytes()

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        rows = self._rows(nbytes)
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != 4 * rows + rows * self.cols:
            raise CorruptObject(f"int8: {raw.size} bytes, expected {4 * rows + rows * self.cols}")
        scale = raw[:4 * rows].view(np.float32)
        q = raw[4 * rows:].view(np.int8).reshape(rows, self.cols)
        return (q.astype(np.float32) * scale[:, None]).tobytes()
