"""Cast: float32 values stored as bfloat16 or float16 (lossy; half the bytes).

Encoding rounds each float32 to the nearest value of the narrower type (ties to even, IEEE 754
``roundTiesToEven``, as ``torch.Tensor.to`` does); decoding widens back to float32, which is
exact. Both are elementwise and so chunk-local.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject, InvalidInput

_LABEL = {"bfloat16": "bf16", "float16": "fp16"}
_MAX = {"bfloat16": 3.3895313892515355e38, "float16": 65504.0}


@register_codec
@dataclasses.dataclass(frozen=True)
class Cast(Codec):
    """float32 values stored as ``dtype`` (``bfloat16`` or ``float16``), rounded to nearest
    even; decoding widens back to float32."""

    dtype: str
    name = "cast"
    lossless = False
    keeps_size = False

    def __post_init__(self) -> None:
        if self.dtype not in _LABEL:
            raise ValueError("dtype must be 'bfloat16' or 'float16'")

    def label(self) -> str:
        return _LABEL[self.dtype]

    def encoded_nbytes(self, nbytes: int) -> int:
        if nbytes % 4:
            raise CorruptObject(f"cast: {nbytes} bytes are not float32 values")
        return nbytes // 2

    def encode(self, data: bytes | memoryview) -> bytes:
        x = np.frombuffer(data, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InvalidInput(f"{int((~np.isfinite(x)).sum())} NaN/Inf value(s): a lossy codec "
                               "needs finite values")
        if self.dtype == "bfloat16":
            u = x.view(np.uint32)
            # round to nearest, ties to even: add 0x7fff plus the lowest kept bit, truncate
            y = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
            overflow = (y & np.uint16(0x7F80)) == np.uint16(0x7F80)
        else:
            y = _float16(x).view(np.uint16)
            overflow = (y & np.uint16(0x7C00)) == np.uint16(0x7C00)  # exponent all ones
        if overflow.any():
            raise InvalidInput(f"{int(overflow.sum())} value(s) beyond the range of {self.dtype} "
                               f"(±{_MAX[self.dtype]:g})")
        return y.tobytes()

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        if len(data) * 2 != nbytes:
            raise CorruptObject(f"cast: {len(data)} bytes of {self.dtype}, expected {nbytes // 2}")
        raw = np.frombuffer(data, dtype=np.uint16)
        if self.dtype == "bfloat16":  # the upper half of the float32 of the same value
            return (raw.astype(np.uint32) << 16).tobytes()
        return _widen(raw.view(np.float16)).tobytes()


# float16 <-> float32 through torch: the same IEEE conversions as numpy's astype (round to
# nearest, ties to even; widening is exact), but numpy takes a slow path for subnormals, which
# deltas are full of (|x| < 6.1e-5): 100x slower. torch is imported here, not at the top, so
# that commands that only read the catalog do not load it.
def _float16(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32)).half().numpy()


def _widen(h: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(np.array(h, dtype=np.float16)).float().numpy()
