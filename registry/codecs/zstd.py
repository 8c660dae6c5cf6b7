"""zstd compression, single-threaded per chunk so output is deterministic (chunks run in
parallel)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import zstandard

from tvreg.codecs.base import Codec, register_codec
from tvreg.errors import CorruptObject

_local = threading.local()


#: a ``bgzstd`` stream setting beside the integer levels: zstd tuned for literals (matches of
#: at least 7 bytes, the fast strategy, a 1 MiB window, a 4096-entry hash table, one probe). A
#: low-entropy byte stream of a float delta (the lowest mantissa byte, the sign and exponent
#: byte) is mostly Huffman-coded literals; level 1's short matches cost more than they save on
#: it (docs/benchmarks.md, "Codec set"). Any zstd decoder reads these frames.
LITERALS = "lit"
_LITERAL_PARAMS = {"min_match": 7, "strategy": zstandard.STRATEGY_FAST, "window_log": 20,
                   "hash_log": 12, "search_log": 1}


def _compressor(level: int | str) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("c", {})
    if level not in cache:
        if level == LITERALS:
            params = zstandard.ZstdCompressionParameters(
                write_content_size=True, write_checksum=False, **_LITERAL_PARAMS)
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
        elif isinstance(level, int):
            cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                                    write_checksum=False)
        else:
            raise ValueError(f"bad zstd level {level!r}")
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    return _local.d


@register_codec
@dataclasses.dataclass(frozen=True)
class Zstd(Codec):
    """One zstd frame at ``level``, with its content size and no checksum."""

    level: int = 3
    name = "zstd"

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) \
                or not -7 <= self.level <= 22:
            raise ValueError("level must be an integer in -7..22")

    def label(self) -> str:
        return f"zstd{self.level}"

    def encode(self, data: bytes | memoryview) -> bytes:
        return compress(data, self.level)

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        _check_declared_size(data, nbytes)
        try:
            out = _decompressor().decompress(data, max_output_size=nbytes)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"zstd: {e}") from None
        if len(out) != nbytes:
            raise CorruptObject(f"zstd frame decoded to {len(out)} bytes, expected {nbytes}")
        return out

    def decode_into(self, data: bytes | memoryview, dest: np.ndarray) -> None:
        """Decompress into ``dest`` (uint8, exactly the decoded size) without a new buffer: a
        fresh buffer per chunk costs a page fault per 4 KiB, as much as a third of the time."""
        decompress_into(data, dest)


def compress(data: bytes | memoryview | np.ndarray, level: int | str) -> bytes:
    """One zstd frame of ``data`` with its content size, no checksum (this thread's compressor
    for ``level``, an integer level or :data:`LITERALS`: the output depends only on the data
    and the level)."""
    # zstandard reads any buffer; its stub lists only bytes, bytearray and memoryview
    return _compressor(level).compress(data)  # type: ignore[arg-type]


def decompress_into(data: bytes | memoryview, dest: np.ndarray) -> None:
    """Decode one zstd frame into ``dest`` (uint8), which it must fill exactly; the frame header
    must declare that size (checked before anything is decompressed). Raises CorruptObject."""
    nbytes = dest.size
    _check_declared_size(data, nbytes)
    # numpy's stubs declare ndarray a Buffer only for Python >= 3.12
    view = memoryview(dest).cast("B")  # type: ignore[arg-type]
    got = 0
    try:
        with _decompressor().stream_reader(data, read_across_frames=False) as reader:
            while got < nbytes:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
            extra = reader.read(1) if got == nbytes else b""
    except zstandard.ZstdError as e:
        raise CorruptObject(f"zstd: {e}") from None
    if got != nbytes or extra:
        raise CorruptObject(f"zstd frame decoded to {got if got < nbytes else 'more than'} "
                            f"bytes, expected {nbytes}")


def _check_declared_size(data: bytes | memoryview, nbytes: int) -> None:
    # the frame header states its content size; check it before allocating or writing anything,
    # so a crafted small blob cannot make us inflate gigabytes
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CorruptObject(f"zstd: {e}") from None
    if declared != nbytes:
        raise CorruptObject(f"zstd frame declares {declared} bytes, expected {nbytes}")
