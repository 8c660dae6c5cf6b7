"""Order-0 Huffman coding of a byte stream, as a raw DEFLATE stream (RFC 1951) without matches.

The ``bgzstd`` stream setting :data:`HUFFMAN` (``"huf"``, format §5.6). The low-entropy byte
streams of a dense float delta (the lowest mantissa byte: deltas are multiples of the base's
ulp; the sign and exponent byte) have no long repeats: zstd's match finder spends bits on short
matches there and lands 7–29 % above their order-0 entropy, where a Huffman code per block sits
within a few percent of it (docs/benchmarks.md, "Codec set"). zlib's ``Z_HUFFMAN_ONLY``
strategy writes exactly that: DEFLATE blocks of 32,768 literals, each with its own dynamic
Huffman code, and no back-references. Any inflater reads the result.

Encoding uses zlib-ng (the ``zlib-ng`` package, about 1.9× zlib's speed here) where it is
installed, else the standard library's zlib: for Huffman-only streams both write the same bytes
(checked on all 1,464 streams of four cases of the codec benchmark set, and in the tests), so
the same stream gives the same blob either way. Decoding uses ISA-L's inflater (the ``isal``
package, about 3× zlib's speed on these streams) where it is installed, else zlib. All of them
release the GIL. A segment must inflate to
exactly the stream's size and end where its stored size says, or it is :class:`CorruptObject`;
output is capped at that size, so no segment inflates beyond it.
"""

from __future__ import annotations

import types
import zlib
from typing import Any

import numpy as np

from tvreg.errors import CorruptObject

_deflater: types.ModuleType
_inflater: types.ModuleType
try:  # zlib-ng's zlib API: the same Huffman-only bytes as zlib's, about 1.9x faster
    from zlib_ng import zlib_ng as _deflater
except ImportError:  # pragma: no cover - zlib-ng is a dependency; zlib writes the same bytes
    _deflater = zlib
try:  # ISA-L's inflater: the same results, about 3x faster on these streams
    from isal import isal_zlib as _inflater
except ImportError:  # pragma: no cover - isal is a dependency; zlib reads the same streams
    _inflater = zlib
_ERRORS: tuple[type[BaseException], ...] = (_inflater.error, zlib.error)

#: the ``bgzstd`` stream setting for an order-0 Huffman code (a Huffman-only raw DEFLATE stream)
HUFFMAN = "huf"
#: zlib's parameters: level 1 (any level > 0 codes the same with Z_HUFFMAN_ONLY), a raw stream
#: (no zlib header), memLevel 9 (blocks of 32,768 literals, each with its own code)
_WBITS, _MEM_LEVEL = -15, 9


def compress(data: Any) -> bytes:
    """``data`` (a buffer of bytes) as one Huffman-only raw DEFLATE stream."""
    c = _deflater.compressobj(1, _deflater.DEFLATED, _WBITS, _MEM_LEVEL, _deflater.Z_HUFFMAN_ONLY)
    return c.compress(data) + c.flush()


def decompress(data: bytes | memoryview, nbytes: int) -> np.ndarray:
    """Inflate one raw DEFLATE stream that must decode to exactly ``nbytes`` bytes and end at
    the end of ``data``; returns them as a read-only uint8 array. Raises CorruptObject."""
    d = _inflater.decompressobj(_WBITS)
    try:
        out = d.decompress(data, nbytes)
        if not d.eof and len(out) == nbytes:  # the end-of-block code may follow the last byte
            if d.decompress(d.unconsumed_tail, 1):
                raise CorruptObject(f"huf: DEFLATE stream decodes to more than {nbytes} bytes")
    except _ERRORS as e:
        raise CorruptObject(f"huf: bad DEFLATE stream ({e})") from None
    if len(out) != nbytes or not d.eof:
        raise CorruptObject(f"huf: DEFLATE stream decodes to {len(out)} bytes and "
                            f"{'ends' if d.eof else 'does not end'}; expected {nbytes}")
    if d.unused_data:
        raise CorruptObject(f"huf: {len(d.unused_data)} bytes after the end of the DEFLATE "
                            f"stream")
    return np.frombuffer(out, dtype=np.uint8)
