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
#: a stream is compressed only if zstd saves at least this fraction of its sample
MIN_SAVING = 0.03


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
    """How to store a stream, from its sample: ``level``, or zstd tuned for literals
    (:data:`~tvreg.codecs.zstd.LITERALS`) where that is smaller (the low-entropy streams of
    dense deltas: 2-6 % smaller, as fast to decode), or raw (``None``) where neither saves
    :data:`MIN_SAVING`. Ties go to ``level``."""
    at_level, literal = len(compress(stream, level)), len(compress(stream, LITERALS))
    best: int | str = LITERALS if literal < at_level else level
    return best if min(at_level, literal) <= (1 - MIN_SAVING) * stream.size else None


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
