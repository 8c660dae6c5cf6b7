"""Exact mode: a delta stored as the integer difference of IEEE bit patterns, ft − base.

For a tensor of source dtype ``s`` (item size ``w`` bytes), the step's encoding of a chunk of
``n`` elements is ``n`` unsigned little-endian ``w``-byte integers ``zigzag((bits(ft) −
bits(base)) mod 2^(8w))``, where ``bits`` reads an element's bytes as an unsigned integer and the
difference, taken modulo 2^(8w), is read as a signed (two's complement) ``d`` before the zigzag
``(d << 1) ^ (d >> (8w − 1))`` (``0, −1, 1, −2 …`` → ``0, 1, 2, 3 …``: small changes of either
sign become small integers, which later steps compress).

Decoding needs the base: ``bits(ft) = (bits(base) + unzigzag(z)) mod 2^(8w)`` rebuilds the
fine-tuned element bit for bit, and the delta the entry describes is then computed exactly as
for any other vector: ``ft`` and ``base`` widened to the delta dtype (float64 for float64, else
float32) and subtracted. So :meth:`BitDiff.restore` gives the fine-tuned tensor itself and
:meth:`BitDiff.delta_into` the float delta, whose sha256 the manifest holds.

The base is the stored base whose hash is ``base`` (which must equal the manifest's
``base_hash``); the tensor of the same name is used.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tvreg import dtypes
from tvreg.codecs.base import Codec, register_codec
from tvreg.digest import is_hex_digest
from tvreg.errors import CorruptObject, InvalidInput

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
EXACT_DTYPES = tuple(sorted(dtypes.FLOATING))


class BaseRequired(InvalidInput):
    """An exact-mode tensor was read without its base model at hand."""


@register_codec
@dataclasses.dataclass(frozen=True)
class BitDiff(Codec):
    """Exact mode: the zigzagged integer difference of the bit patterns of a fine-tuned tensor
    of ``dtype`` and the tensor of the same name in the base whose hash is ``base``."""

    dtype: str
    base: str
    name = "bitdiff"
    keeps_size = False

    def __post_init__(self) -> None:
        if self.dtype not in EXACT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(EXACT_DTYPES)}")
        if not isinstance(self.base, str) or not is_hex_digest(self.base):
            raise ValueError("base must be a base hash (64 lowercase hex digits)")

    def label(self) -> str:
        return "bitdiff"

    @property
    def width(self) -> int:
        """Item size of the source dtype, in bytes."""
        return dtypes.itemsize(self.dtype)

    @property
    def delta_dtype(self) -> str:
        """The dtype of the delta this entry describes (float64 for float64, else float32)."""
        return dtypes.delta_dtype(self.dtype)

    def encoded_nbytes(self, nbytes: int) -> int:
        wide = dtypes.itemsize(self.delta_dtype)
        if nbytes % wide:
            raise CorruptObject(f"bitdiff: {nbytes} bytes are not whole {self.delta_dtype} items")
        return nbytes // wide * self.width

    def payload(self, finetuned: np.ndarray, base: np.ndarray) -> bytes:
        """The step's encoding of the elements of ``finetuned`` over ``base`` (both 1-D uint8
        views of the same number of source-dtype elements)."""
        u = _UINT[self.width]
        d = finetuned.view(u) - base.view(u)  # modulo 2^(8w): numpy's unsigned arithmetic wraps
        return _zigzag(d, self.width).astype("<" + np.dtype(u).str[1:], copy=False).tobytes()

    def encode(self, data: bytes | memoryview) -> bytes:
        """Refused (:class:`InvalidInput`): the encoding needs the base, see :meth:`payload`."""
        raise InvalidInput("bitdiff encodes a fine-tuned tensor against its base: use "
                           "BitDiff.payload(finetuned, base)")

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        """Refused (:class:`BaseRequired`): decoding needs the base, see :meth:`restore` and
        :meth:`delta_into`."""
        raise BaseRequired(f"an exact-mode tensor needs its base model (hash {self.base[:12]}) "
                           "to be read: store it with `tvreg base add`, or pass --base")

    def restore(self, data: bytes | memoryview, base: np.ndarray) -> np.ndarray:
        """The fine-tuned elements' bytes (uint8) from this step's encoding and the base's
        elements (a uint8 view of the same number of source-dtype elements)."""
        u = _UINT[self.width]
        z = np.frombuffer(data, dtype="<" + np.dtype(u).str[1:])
        if z.size * self.width != base.size:
            raise CorruptObject(f"bitdiff: {z.size} differences for {base.size // self.width} "
                                "base elements")
        return (base.view(u) + _unzigzag(z.astype(u, copy=False), self.width)).view(np.uint8)

    def delta_into(self, data: bytes | memoryview, base: np.ndarray, dest: np.ndarray) -> None:
        """Write the delta (ft − base in the delta dtype, as build computes it) into ``dest``
        (uint8, the delta's bytes)."""
        import torch

        ft = self.restore(data, base)
        src = dtypes.torch_dtype(self.dtype)
        work = dtypes.torch_dtype(self.delta_dtype)
        tf = torch.from_numpy(ft).view(src)
        tb = torch.from_numpy(np.ascontiguousarray(base)).view(src)
        out = torch.from_numpy(dest).view(work)
        if out.numel() != tf.numel():
            raise CorruptObject(f"bitdiff: {tf.numel()} elements for a delta of {out.numel()}")
        if src == work:
            torch.sub(tf, tb, out=out)
        else:
            out.copy_(tf)
            out.sub_(tb.to(work))


def _zigzag(d: np.ndarray, width: int) -> np.ndarray:
    # on unsigned integers only (shifts of negative signed values are not portable)
    sign = d >> d.dtype.type(8 * width - 1)
    return (d << d.dtype.type(1)) ^ (np.zeros_like(d) - sign)


def _unzigzag(z: np.ndarray, width: int) -> np.ndarray:
    one = z.dtype.type(1)
    return (z >> one) ^ (np.zeros_like(z) - (z & one))
