"""Low-rank factors: a float32 matrix stored as ``scale · (B @ A)`` (optionally transposed).

The encoded bytes are ``A`` (``rank × cols``, float32, row-major) followed by ``B`` (``rows ×
rank``), which later steps compress like any other bytes. Decoding is exactly reproducible on
any machine: every product ``B[i,k] · A[k,j]`` of two float32 values is exact in float64, the
products are summed in float64 in the order ``k = 0, 1, …``, the sum is multiplied by ``scale``
in float64 and rounded once to float32 (no matrix-multiply kernel, whose summation order varies).
The factors come from where they were made (a LoRA adapter, :mod:`tvreg.tensors.lora`); this
step does not factor dense data, so :meth:`LowRank.encode` refuses it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject, InvalidInput

MAX_RANK = 1 << 16
_BLOCK_ELEMENTS = 1 << 15  # float64 elements of the accumulator per row block (256 KiB)


@register_codec
@dataclasses.dataclass(frozen=True)
class LowRank(Codec):
    """A ``rows × cols`` float32 matrix stored as the factors of ``scale · (B @ A)`` of rank
    ``rank`` (``transpose``: the matrix is the transpose of that product)."""

    rows: int
    cols: int
    rank: int
    scale: float
    transpose: bool = False
    name = "lowrank"
    keeps_size = False

    def __post_init__(self) -> None:
        for k in ("rows", "cols", "rank"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= (1 << 40):
                raise ValueError(f"{k} must be a positive integer")
        if self.rank > MAX_RANK:
            raise ValueError(f"rank must be at most {MAX_RANK}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale):
            raise ValueError("scale must be a finite number")
        if not isinstance(self.transpose, bool):
            raise ValueError("transpose must be true or false")

    def label(self) -> str:
        return f"lowrank{self.rank}"

    def encoded_nbytes(self, nbytes: int) -> int:
        if nbytes != self.rows * self.cols * 4:
            raise CorruptObject(f"lowrank: {nbytes} bytes are not a {self.rows}x{self.cols} "
                                "float32 matrix")
        return 4 * self.rank * (self.rows + self.cols)

    def payload(self, a: np.ndarray, b: np.ndarray) -> bytes:
        """The encoded bytes of factors ``a`` (rank × cols) and ``b`` (rows × rank)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        if a.shape != (self.rank, self.cols) or b.shape != (self.rows, self.rank):
            raise InvalidInput(f"lowrank factors {a.shape} and {b.shape} do not make a "
                               f"{self.rows}x{self.cols} matrix of rank {self.rank}")
        return a.tobytes() + b.tobytes()

    def encode(self, data: bytes | memoryview) -> bytes:
        """Refused (:class:`InvalidInput`): the step stores given factors, see :meth:`payload`."""
        raise InvalidInput("lowrank stores factors, not dense data: use LowRank.payload(a, b)")

    def product(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """``scale · (b @ a)`` (transposed if set), summed as the module says, rounded once to
        ``dtype`` (float32: what decoding gives). Rows are done a block at a time so the float64
        accumulator stays in cache; each element still sums its products in rank order."""
        out: np.ndarray = np.empty((self.rows, self.cols), dtype=dtype)
        a64 = a.astype(np.float64)
        step = max(1, _BLOCK_ELEMENTS // self.cols)
        acc = np.empty((min(step, self.rows), self.cols), dtype=np.float64)
        term = np.empty_like(acc)
        for i0 in range(0, self.rows, step):
            i1 = min(self.rows, i0 + step)
            acc_i, term_i = acc[:i1 - i0], term[:i1 - i0]
            b64 = b[i0:i1].astype(np.float64)
            acc_i.fill(0.0)
            for k in range(self.rank):
                np.multiply(b64[:, k:k + 1], a64[k:k + 1, :], out=term_i)
                acc_i += term_i
            acc_i *= float(self.scale)
            out[i0:i1] = acc_i  # rounds once to dtype
        return np.ascontiguousarray(out.T) if self.transpose else out

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        expected = self.encoded_nbytes(nbytes)
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != expected:
            raise CorruptObject(f"lowrank: {raw.size} bytes of factors, expected {expected}")
        split = 4 * self.rank * self.cols
        a = raw[:split].view(np.float32).reshape(self.rank, self.cols)
        b = raw[split:].view(np.float32).reshape(self.rows, self.rank)
        return self.product(a, b).tobytes()
