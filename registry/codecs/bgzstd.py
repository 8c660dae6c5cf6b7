"""``bgzstd``: byte grouping and zstd per byte stream, in independent blocks (format §5.6).

A chunk of ``n`` items of ``itemsize`` bytes is cut into blocks of ``block`` items. Within a
block, byte ``j`` of every item forms stream ``j`` (as :mod:`.bytegroup` does), and each stream is
stored on its own: raw, or, when that is smaller, as one zstd frame at that stream's level
(``"lit"``: zstd tuned for literals) or as an order-0 Huffman code (``"huf"``,
:mod:`.huffman`).
For float deltas the exponent streams shrink many times while low mantissa bytes are near
random, so each stream gets its own treatment (:mod:`.choose` picks the levels per tensor).

Blocks are independent, so one chunk encodes and decodes on several threads, and the output does
not depend on how many: each block's bytes depend only on its items and the configuration.
Decoding writes a block's items from its streams with whole-word shifts and ors on 2^17 items
at a time (numpy's strided byte copies would be the slowest step).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from tvreg.codecs import huffman
from tvreg.codecs.base import Codec, register_codec, scratch
from tvreg.codecs.huffman import HUFFMAN
from tvreg.codecs.zstd import LITERALS, compress, decompress_into
from tvreg.errors import CorruptObject

#: largest ``block`` a configuration may name (segment sizes are stored as 32-bit integers)
MAX_BLOCK = 1 << 30
#: items joined or split per step: the destination and the word temporary stay in L2
_STEP = 1 << 17
_WORD: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
_SIZE = np.dtype("<u4")


def _level_ok(level: Any) -> bool:
    return level is None or level in (LITERALS, HUFFMAN) or (
        not isinstance(level, bool) and isinstance(level, int) and -7 <= level <= 22)


@register_codec
@dataclasses.dataclass(frozen=True)
class BgZstd(Codec):
    """Byte grouping and zstd per stream in independent blocks of ``block`` items; ``levels``
    has one setting per byte stream: a zstd level (an integer, or ``"lit"``: zstd tuned for
    literals), ``"huf"`` (an order-0 Huffman code), or ``None`` where the stream is stored
    raw."""

    itemsize: int
    block: int
    levels: tuple  # per stream: a zstd level, "lit", "huf", or None for stored raw
    name = "bgzstd"
    parallel = True
    last_only = True

    def __post_init__(self) -> None:
        if isinstance(self.itemsize, bool) or not isinstance(self.itemsize, int) \
                or not 1 <= self.itemsize <= 16:
            raise ValueError("itemsize must be an integer in 1..16")
        if isinstance(self.block, bool) or not isinstance(self.block, int) \
                or not 1 <= self.block <= MAX_BLOCK:
            raise ValueError(f"block must be an integer in 1..{MAX_BLOCK}")
        if not isinstance(self.levels, (list, tuple)) or len(self.levels) != self.itemsize:
            raise ValueError("levels must be a list of one entry per byte of an item")
        if not all(_level_ok(v) for v in self.levels):
            raise ValueError('each level must be null, "lit", "huf" or an integer in -7..22')
        object.__setattr__(self, "levels", tuple(self.levels))

    def spec(self) -> dict[str, Any]:
        """The spec, with ``levels`` as a list (as JSON holds it)."""
        return {"name": self.name, "configuration": {
            "itemsize": self.itemsize, "block": self.block, "levels": list(self.levels)}}

    def label(self) -> str:
        """e.g. ``bgzstd4:raw/raw/1/1``: item size, then each stream's level (or raw)."""
        return f"bgzstd{self.itemsize}:" + "/".join(
            "raw" if v is None else str(v) for v in self.levels)

    # --- layout --------------------------------------------------------------------------------

    def _blocks(self, nbytes: int) -> tuple[int, int]:
        """(items, blocks) of a chunk of ``nbytes`` bytes."""
        items, rest = divmod(nbytes, self.itemsize)
        if rest:
            raise CorruptObject(f"bgzstd: {nbytes} bytes are not whole items of "
                                f"{self.itemsize} bytes")
        return items, -(-items // self.block)

    def _table(self, data: bytes | memoryview, nbytes: int) -> tuple[int, np.ndarray]:
        """(items, segment offsets into ``data``) after checking the size table (§5.6)."""
        items, nblocks = self._blocks(nbytes)
        k = self.itemsize
        head = nblocks * k * 4
        if len(data) < head:
            raise CorruptObject(f"bgzstd: blob of {len(data)} bytes is shorter than its size "
                                f"table ({head} bytes)")
        sizes = np.frombuffer(data, dtype=_SIZE, count=nblocks * k).astype(np.int64)
        lengths = np.minimum(self.block, items - np.arange(nblocks, dtype=np.int64) * self.block)
        lengths = np.repeat(lengths, k)
        raw = np.tile(np.array([v is None for v in self.levels]), nblocks)
        if (sizes > lengths).any() or ((sizes != lengths) & raw).any() or (sizes == 0).any():
            j = int(np.flatnonzero((sizes > lengths) | ((sizes != lengths) & raw)
                                   | (sizes == 0))[0])
            raise CorruptObject(f"bgzstd: segment {j} (block {j // k}, stream {j % k}) has a "
                                f"bad stored size {int(sizes[j])} for {int(lengths[j])} bytes")
        offsets = np.empty(sizes.size + 1, dtype=np.int64)
        offsets[0] = head
        np.cumsum(sizes, out=offsets[1:])
        offsets[1:] += head
        if int(offsets[-1]) != len(data):
            raise CorruptObject(f"bgzstd: segments end at byte {int(offsets[-1])}, the blob has "
                                f"{len(data)}")
        return items, offsets

    # --- encoding ------------------------------------------------------------------------------

    def encode(self, data: bytes | memoryview, pool: Executor | None = None) -> bytes:
        raw = np.frombuffer(data, dtype=np.uint8)
        items, nblocks = self._blocks(raw.size)
        k = self.itemsize
        parts: list[list[bytes]] = [[]] * nblocks

        def one(b: int) -> None:
            i0, i1 = b * self.block, min(items, (b + 1) * self.block)
            streams = scratch(k * (i1 - i0), "bgzstd").reshape(k, -1)
            split(raw[i0 * k:i1 * k], streams)
            parts[b] = [_segment(streams[j], level) for j, level in enumerate(self.levels)]

        run_blocks(nblocks, one, pool)
        sizes = np.array([len(s) for p in parts for s in p], dtype=_SIZE)
        return b"".join([sizes.tobytes(), *(s for p in parts for s in p)])

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        out = np.empty(nbytes, dtype=np.uint8)
        self.decode_into(data, out)
        return out.tobytes()

    def decode_into(self, data: bytes | memoryview, dest: np.ndarray,
                    pool: Executor | None = None) -> None:
        """Decode into ``dest`` (uint8, the decoded size), blocks on ``pool``'s threads too."""
        items, offsets = self._table(data, dest.size)
        k, view = self.itemsize, memoryview(data)
        nblocks = (offsets.size - 1) // k
        off = offsets.tolist()
        huffman_coded = [level == HUFFMAN for level in self.levels]

        def one(b: int) -> None:
            i0, i1 = b * self.block, min(items, (b + 1) * self.block)
            m = i1 - i0
            buf = scratch(k * m, "bgzstd")
            streams = []
            for j in range(k):
                seg = view[off[b * k + j]:off[b * k + j + 1]]
                if len(seg) == m:  # stored raw
                    streams.append(np.frombuffer(seg, dtype=np.uint8))
                elif huffman_coded[j]:  # into a new buffer: the inflaters write no other
                    streams.append(huffman.decompress(seg, m))
                else:
                    s = buf[j * m:(j + 1) * m]
                    decompress_into(seg, s)
                    streams.append(s)
            join(streams, dest[i0 * k:i1 * k])

        run_blocks(nblocks, one, pool)


def _segment(stream: np.ndarray, level: Any) -> bytes:
    """A stream's stored segment: coded at ``level`` where that is smaller, else raw."""
    if level is not None:
        coded = huffman.compress(stream) if level == HUFFMAN else compress(stream, level)
        if len(coded) < stream.size:
            return coded
    return stream.tobytes()


# --- byte streams <-> items ----------------------------------------------------------------------


def split(raw: np.ndarray, streams: np.ndarray) -> None:
    """Stream ``j`` of ``streams`` (k × m uint8) gets byte ``j`` of each of the m items in
    ``raw``."""
    k, m = streams.shape
    word = _WORD.get(k)
    if word is None:
        items = raw.reshape(m, k)
        for j in range(k):
            streams[j] = items[:, j]
        return
    words = raw.view(word)
    tmp_all = np.empty(min(m, _STEP), dtype=word)
    for i0 in range(0, m, _STEP):
        w = words[i0:i0 + _STEP]
        tmp = tmp_all[:w.size]
        np.copyto(streams[0, i0:i0 + _STEP], w, casting="unsafe")  # keeps the low byte
        for j in range(1, k):
            np.right_shift(w, 8 * j, out=tmp)
            np.copyto(streams[j, i0:i0 + _STEP], tmp, casting="unsafe")


def join(streams: list[np.ndarray], dest: np.ndarray) -> None:
    """Inverse of :func:`split`: item ``i`` of ``dest`` gets byte ``j`` from ``streams[j][i]``.

    For 2-, 4- and 8-byte items the items are built as little-endian words, a step of items at
    a time, pairwise: streams 2p and 2p+1 become one 16-bit word (``hi << 8 | lo``), pairs of
    those a 32-bit word, and so on up to the item. numpy runs those shifts and ors with vector
    instructions on data in cache: about twice the speed of k strided byte copies."""
    k = len(streams)
    m = dest.size // k
    if k not in _WORD:
        items = dest.reshape(m, k)
        for j in range(k):
            items[:, j] = streams[j]
        return
    step = min(m, _STEP)
    tmp = scratch(2 * k * step, "bgzstd-join") if k > 2 else None
    words = dest.view(_WORD[k])
    for i0 in range(0, m, step):
        n = min(step, m - i0)
        level = [s[i0:i0 + n] for s in streams]
        width, used = 1, 0
        while len(level) > 1:
            width *= 2
            if len(level) == 2:
                outs = [words[i0:i0 + n]]
            else:
                assert tmp is not None  # more than two streams: k > 2
                outs = []
                for _ in range(len(level) // 2):
                    outs.append(tmp[used:used + width * n].view(_WORD[width]))
                    used += width * n
            for p, w in enumerate(outs):
                np.copyto(w, level[2 * p + 1])
                w <<= 4 * width
                w |= level[2 * p]
            level = outs


# --- blocks on a pool ----------------------------------------------------------------------------


def run_blocks(n: int, fn: Callable[[int], None], pool: Executor | None) -> None:
    """Call ``fn(0) … fn(n-1)``, on the calling thread and on idle threads of ``pool``.

    The caller works through the blocks itself and asks the pool for helpers, which take blocks
    as they start. It then waits only for blocks a running thread has taken, never for a helper
    still queued (which finds nothing left when it starts and returns), so this cannot deadlock
    even when called from a task of the same pool whose other threads are all busy."""
    if n <= 1 or pool is None:
        for i in range(n):
            fn(i)
        return
    lock = threading.Lock()
    done = threading.Condition(lock)
    state = _BlockState()

    def work() -> None:
        while True:
            with lock:
                i = state.next
                if i >= n or state.error is not None:
                    return
                state.next = i + 1
                state.running += 1
            try:
                fn(i)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                with lock:
                    if state.error is None:
                        state.error = e
            finally:
                with lock:
                    state.running -= 1
                    done.notify_all()

    helpers = [pool.submit(work) for _ in range(min(n - 1, _pool_size(pool)))]
    work()
    with lock:
        done.wait_for(lambda: state.running == 0)
        error = state.error
    for h in helpers:
        h.cancel()
    if error is not None:
        raise error


class _BlockState:
    """What the threads of one :func:`run_blocks` call share, under its lock."""

    def __init__(self) -> None:
        self.next = 0  # the next block to take
        self.running = 0  # blocks taken and not finished
        self.error: BaseException | None = None  # the first exception a block raised


def _pool_size(pool: Executor) -> int:
    return int(getattr(pool, "_max_workers", 4))
