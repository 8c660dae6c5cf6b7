"""The lossless pipeline tvreg writes for a tensor, chosen from the tensor's own bytes.

One function, :func:`choose_pipeline`, so every writer (create, saved compositions, LoRA
factors) makes the same choice: ``bgzstd`` with blocks of :data:`BLOCK_ITEMS` items, and per byte
stream either zstd at ``level``, zstd tuned for literals (``"lit"``, where that stores the
sample smaller), or stored raw. A stream is stored raw when zstd shrinks a sample
of it by less than :data:`MIN_SAVING` (low mantissa bytes of a dense fine-tune are near random:
compressing them costs time and saves nothing). The sample is a fixed set of windows of the
tensor, so the same tensor always gets the same pipeline, and so the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvreg.codecs.base import Codec, CodecPipeline
from tvreg.codecs.bgzstd import BgZstd
from tvreg.codecs.bytegroup import ByteGroup
from tvreg.codecs.huffman import HUFFMAN
from tvreg.codecs.huffman import compress as huffman_compress
from tvreg.codecs.zstd import LITERALS, Zstd, compress
from tvreg.errors import InvalidInput

#: zstd level of compressed streams: level 1 stores these deltas' streams as small as level 3
#: (smaller for the mantissa bytes) and both encodes and decodes faster (docs/benchmarks.md)
DEFAULT_LEVEL = 1
#: items per block: 4 MiB of float32 (each stream 1 MiB, past zstd's small-input settings)
BLOCK_ITEMS = 1 << 20
#: the sample: this many windows of this many items, spread evenly over the tensor
SAMPLE_WINDOWS = 16
WINDOW_ITEMS = 1 << 14
#: a stream is compressed only if that saves at least this fraction of its sample
MIN_SAVING = 0.03
#: a stream is Huffman-coded only if that stores its sample this fraction smaller than zstd
#: does (inflating decodes these streams at ~0.6x zstd's speed: a near tie goes to zstd)
HUFFMAN_MARGIN = 0.02


def choose_pipeline(data: Any, itemsize: int, *, level: int | None = None) -> CodecPipeline:
    """The lossless pipeline for ``data`` (a tensor, a numpy array or bytes) of items of
    ``itemsize`` bytes; ``level`` is the zstd level of compressed streams (default 1)."""
    if isinstance(itemsize, bool) or not isinstance(itemsize, int) or not 1 <= itemsize <= 16:
        raise InvalidInput(f"bad item size {itemsize!r}")
    level = check_level(level)
    raw = _as_uint8(data)
    if raw.size % itemsize:
        raise InvalidInput(f"{raw.size} bytes are not whole items of {itemsize} bytes")
    streams = sample_streams(raw, itemsize)
    levels = tuple(level if streams.shape[1] == 0 else _stream_setting(streams[j], level)
                   for j in range(itemsize))
    return CodecPipeline((BgZstd(itemsize, BLOCK_ITEMS, levels),))


def check_level(level: int | None) -> int:
    """``level`` (or the default for None) if it is a zstd level, else InvalidInput."""
    if level is None:
        return DEFAULT_LEVEL
    if isinstance(level, bool) or not isinstance(level, int) or not -7 <= level <= 22:
        raise InvalidInput(f"bad zstd level {level!r} (an integer in -7..22)")
    return level


def sample_streams(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """The byte streams (itemsize × s) of the sampled items: all of them for a small tensor,
    else :data:`SAMPLE_WINDOWS` windows of :data:`WINDOW_ITEMS` items, window ``i`` starting at
    item ``⌊i · (n − WINDOW_ITEMS) / (SAMPLE_WINDOWS − 1)⌋``."""
    items = raw.reshape(-1, itemsize)
    n = items.shape[0]
    if n > SAMPLE_WINDOWS * WINDOW_ITEMS:
        starts = [i * (n - WINDOW_ITEMS) // (SAMPLE_WINDOWS - 1) for i in range(SAMPLE_WINDOWS)]
        items = np.concatenate([items[s:s + WINDOW_ITEMS] for s in starts])
    return np.ascontiguousarray(items.T)


def _stream_setting(stream: np.ndarray, level: int) -> int | str | None:
    """How to store a stream, from its sample: zstd at ``level``; zstd tuned for literals
    (:data:`~tvreg.codecs.zstd.LITERALS`) where that is smaller; an order-0 Huffman code
    (:data:`~tvreg.codecs.huffman.HUFFMAN`) where that is smaller than both by
    :data:`HUFFMAN_MARGIN` (the low-entropy streams of dense deltas: 8-25 % smaller than zstd);
    or raw (``None``) where the smallest does not save :data:`MIN_SAVING`. Ties go to
    ``level``."""
    at_level, literal = len(compress(stream, level)), len(compress(stream, LITERALS))
    best: int | str = LITERALS if literal < at_level else level
    size = min(at_level, literal)
    target = (1 - HUFFMAN_MARGIN) * size
    if order0_bound(stream) <= target:  # else a Huffman code would not reach it
        coded = len(huffman_compress(stream))
        if coded <= target:
            best, size = HUFFMAN, coded
    return best if size <= (1 - MIN_SAVING) * stream.size else None


def order0_bound(stream: np.ndarray) -> float:
    """The sum, in bytes, of the order-0 entropies of ``stream``'s windows of
    :data:`WINDOW_ITEMS` bytes: a screen from below for the Huffman trial. A Huffman code of
    blocks of 32,767 bytes (zlib's) is at least its blocks' entropies, and windows half that
    long nearly always sum to less (not always: they do not cut at the blocks' boundaries). On
    the 1,712 sample streams of six cases of the codec benchmark set it stayed under the
    Huffman size, at most 0.9975 of it, so skipping the trial where it exceeds the target
    did not change a choice there; it saves the trial on near-random streams."""
    if stream.size == 0:
        return 0.0
    counts = np.stack([np.bincount(stream[i:i + WINDOW_ITEMS], minlength=256)
                       for i in range(0, stream.size, WINDOW_ITEMS)]).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -np.where(counts > 0, counts * np.log2(counts / totals), 0.0).sum()
    return float(bits) / 8


def _as_uint8(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if hasattr(data, "detach") and hasattr(data, "element_size"):  # a torch tensor
        from tvreg.digest import tensor_bytes

        return np.frombuffer(tensor_bytes(data), dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def default_pipeline(itemsize: int, level: int = 3) -> CodecPipeline:
    """Byte grouping by item size (if > 1), then zstd: what tvreg 0.1.0 wrote for every delta.
    New deltas get :func:`tvreg.codecs.choose_pipeline`; this stays for its blobs and tests."""
    if itemsize < 1:
        raise InvalidInput(f"bad item size {itemsize}")
    steps: list[Codec] = [ByteGroup(itemsize)] if itemsize > 1 else []
    return CodecPipeline(tuple(steps) + (Zstd(level),))
