"""Tensors to chunks of stored bytes and back, in parallel and with bounded memory.

Encoding splits a tensor's raw bytes into chunks of at most ``chunk_bytes`` (item-aligned), runs
each through the codec pipeline on a thread pool (zstd and hashlib release the GIL) and hands the
result to ``put`` (which stores it and returns its object id). Decoding fetches, verifies and
decodes chunks into one preallocated tensor (optionally checking the tensor's sha256).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from tvreg import dtypes
from tvreg.codecs import CodecPipeline
from tvreg.digest import tensor_bytes
from tvreg.errors import CorruptObject, InvalidInput
from tvreg.format.manifest import Chunk, TensorEntry

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.codecs.bitdiff import BitDiff

DEFAULT_CHUNK_BYTES = 64 << 20
_MIB = 1 << 20


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _sha256_hex(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class _ByteBudget:
    """A counting semaphore over bytes: bounds the raw data held by queued work."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cv = threading.Condition()

    def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        with self._cv:
            self._cv.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


class TensorEncoder:
    """Encodes tensors concurrently; :meth:`submit` returns a future of the manifest entry."""

    def __init__(self, put: Callable[[bytes], str], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 workers: int | None = None, inflight_bytes: int | None = None) -> None:
        self.put = put
        self.chunk_bytes = chunk_bytes
        self.workers = workers or default_workers()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tvreg-encode")
        self.budget = _ByteBudget(inflight_bytes or max(4 * chunk_bytes, 256 * _MIB))

    def submit(self, name: str, tensor: torch.Tensor, source_dtype: str,
               pipeline: CodecPipeline) -> Future:
        tensor = tensor.detach().contiguous()
        raw = tensor_bytes(tensor)
        held = self.budget.acquire(len(raw))
        item = tensor.element_size()
        step = max(item, self.chunk_bytes // item * item)
        parts = [self.pool.submit(self._encode_chunk, pipeline, raw[o:o + step])
                 for o in range(0, len(raw), step)]
        return self._entry(name, tensor, source_dtype, pipeline, raw, parts, held)

    def _entry(self, name: str, tensor: torch.Tensor, source_dtype: str,
               pipeline: CodecPipeline, raw: memoryview, parts: list[Future], held: int
               ) -> Future:
        """A future of the entry once ``parts`` (futures of the chunks) and the hash of ``raw``
        are done; then the ``held`` bytes of the budget are released.

        ``finish`` is a done-callback of every part, and futures keep their callbacks: it holds
        neither the tensor nor its bytes (only their work items do, until they have run) and it
        empties ``parts`` when done, so no reference cycle keeps a delta alive until the next
        garbage collection (which, counting objects and not bytes, may come after many)."""
        dtype, shape = dtypes.dtype_name(tensor.dtype), tuple(tensor.shape)
        del tensor
        digest = self.pool.submit(_sha256_hex, raw)
        del raw
        done: Future = Future()
        pending = [len(parts) + 1]
        lock = threading.Lock()
        waiting = [*parts, digest]

        def finish(_f: Future) -> None:
            with lock:
                pending[0] -= 1
                if pending[0]:
                    return
            self.budget.release(held)
            try:
                chunks = tuple(p.result() for p in waiting[:-1])
                done.set_result(TensorEntry(name, dtype, source_dtype, shape, pipeline, chunks,
                                            waiting[-1].result()))
            except BaseException as e:  # propagate a worker's failure to the caller
                done.set_exception(e)
            finally:
                waiting.clear()

        for f in tuple(waiting):
            f.add_done_callback(finish)
        return done

    def submit_factored(self, name: str, shape: tuple[int, ...], source_dtype: str,
                        pipeline: CodecPipeline, payload: bytes) -> Future:
        """A float32 tensor stored as the output of ``pipeline``'s first step (``lowrank``):
        ``payload`` is that step's encoding (the factors); see :meth:`submit_prepared`."""
        return self.submit_prepared(name, shape, source_dtype, lambda: (pipeline, payload))

    def submit_prepared(self, name: str, shape: tuple[int, ...], source_dtype: str,
                        prepare: Callable[[], tuple[CodecPipeline, bytes]], *,
                        on_decoded: Callable[[bytes], None] | None = None) -> Future:
        """A float32 tensor stored in one chunk through a pipeline whose first step may change
        the size (``lowrank``, a lossy step): ``prepare()``, run on the pool, returns the
        pipeline and its first step's encoding of the tensor, which the rest of the pipeline
        encodes. The tensor's sha256 is that of the decoded bytes (decoded once here, which also
        proves the entry decodes); ``on_decoded(bytes)`` gets them (e.g. to measure a lossy
        step's error). The tensor's size counts against the in-flight budget until done."""
        nbytes = math.prod(shape) * 4
        held = self.budget.acquire(nbytes)

        def work() -> TensorEntry:
            try:
                pipeline, payload = prepare()
                data = CodecPipeline(pipeline.codecs[1:]).encode(payload)
                dense = pipeline.decode(data, nbytes)
                if on_decoded is not None:
                    on_decoded(dense)
                chunk = Chunk(self.put(data), nbytes, len(data))
                return TensorEntry(name, "float32", source_dtype, tuple(shape), pipeline,
                                   (chunk,), hashlib.sha256(dense).hexdigest())
            finally:
                self.budget.release(held)

        return self.pool.submit(work)

    def submit_exact(self, name: str, delta: torch.Tensor, source_dtype: str,
                     pipeline: CodecPipeline, payload: np.ndarray) -> Future:
        """A delta stored in exact mode (``pipeline`` starts with ``bitdiff``): ``payload`` is
        that step's encoding of the whole tensor (uint8, :meth:`BitDiff.payload`). Chunk ``k``
        covers the same elements of ``delta`` and ``payload``; its blob is the rest of the
        pipeline applied to its part of ``payload``. The tensor's sha256 is that of
        ``delta``'s bytes, as for any delta."""
        rest = CodecPipeline(pipeline.codecs[1:])
        delta = delta.detach().contiguous()
        raw = tensor_bytes(delta)
        wide = delta.element_size()
        narrow = payload.size // max(1, delta.numel())
        per_chunk = max(1, self.chunk_bytes // wide)
        held = self.budget.acquire(len(raw) + payload.size)

        def chunk(a: int, b: int) -> Chunk:
            data = rest.encode(payload[a * narrow:b * narrow].data)
            return Chunk(self.put(data), (b - a) * wide, len(data))

        n = delta.numel()
        parts = [self.pool.submit(chunk, a, min(n, a + per_chunk)) for a in range(0, n, per_chunk)]
        return self._entry(name, delta, source_dtype, pipeline, raw, parts, held)

    def _encode_chunk(self, pipeline: CodecPipeline, raw: memoryview) -> Chunk:
        data = pipeline.encode(raw, self.pool)
        return Chunk(self.put(data), len(raw), len(data))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TensorEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_tensor(entry: TensorEntry, get: Callable[[str], bytes],
                  pool: ThreadPoolExecutor | None = None, *, out: torch.Tensor | None = None,
                  check_tensor: bool = False,
                  base: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """The tensor of ``entry``; raises :class:`CorruptObject`.

    ``get`` returns a blob after checking its sha256, which pins the blob's content and so the
    decoded bytes; ``check_tensor`` also checks the decoded bytes against the tensor's sha256
    (which catches a faulty decoder, at the cost of hashing every byte once more). ``out``, a
    contiguous tensor of the entry's dtype and size, is decoded into instead of a new one.
    An exact-mode entry (``bitdiff``) needs ``base()``, the base model's tensor of that name;
    without it, :class:`~tvreg.codecs.bitdiff.BaseRequired`.
    """
    dtype = dtypes.torch_dtype(entry.dtype)
    exact = exact_codec(entry)
    if exact is not None:
        decode_chunk = _exact_decoder(entry, exact, base)
    else:
        def decode_chunk(blob: bytes, dest: np.ndarray, _offset: int) -> None:
            entry.codecs.decode_into(blob, dest, pool)
    if out is None:
        out = torch.empty(entry.shape, dtype=dtype)
    elif out.dtype != dtype or out.numel() != entry.numel or not out.is_contiguous():
        raise ValueError(f"cannot decode {entry.name!r} into a {out.dtype} tensor of "
                         f"{out.numel()} elements")
    else:
        out = out.view(entry.shape)
    buf = out.view(-1).view(torch.uint8).numpy() if entry.nbytes else None
    offsets = np.cumsum([0] + [c.nbytes for c in entry.chunks]).tolist()

    def fill(i: int) -> None:
        assert buf is not None  # an empty tensor has no chunks
        decode_chunk(get(entry.chunks[i].blob), buf[offsets[i]:offsets[i + 1]], offsets[i])

    if pool is not None and len(entry.chunks) > 1:
        list(pool.map(fill, range(len(entry.chunks))))
    else:
        for i in range(len(entry.chunks)):
            fill(i)
    if check_tensor and hashlib.sha256(tensor_bytes(out)).hexdigest() != entry.sha256:
        raise CorruptObject(f"tensor {entry.name!r} decodes to bytes whose sha256 does not match "
                            "its manifest")
    return out


def exact_codec(entry: TensorEntry) -> BitDiff | None:
    """The ``bitdiff`` step of an exact-mode entry, else None."""
    from tvreg.codecs.bitdiff import BitDiff

    first = entry.codecs.codecs[0]
    return first if isinstance(first, BitDiff) else None


def _exact_decoder(entry: TensorEntry, first: BitDiff, base: Callable[[], torch.Tensor] | None
                   ) -> Callable[[bytes, np.ndarray, int], None]:
    """Decodes one chunk of an exact-mode entry into its slice of the delta (given with the
    slice's byte offset in the delta): the rest of the pipeline gives the bit differences, the
    base's elements of the same range give the fine-tuned ones, and their difference the delta."""
    if base is None:
        first.decode(b"", 0)  # raises BaseRequired, naming the base
    assert base is not None
    tb = base()
    if tuple(tb.shape) != tuple(entry.shape) or dtypes.dtype_name(tb.dtype) != first.dtype:
        raise CorruptObject(f"tensor {entry.name!r}: the base's tensor is {tb.dtype}"
                            f"{list(tb.shape)}, the exact-mode entry wants {first.dtype}"
                            f"{list(entry.shape)}")
    base_bytes = np.frombuffer(tensor_bytes(tb.contiguous()), dtype=np.uint8)
    rest = CodecPipeline(entry.codecs.codecs[1:])
    wide, narrow = dtypes.itemsize(entry.dtype), first.width

    def decode(blob: bytes, dest: np.ndarray, offset: int) -> None:
        a, n = offset // wide, dest.size // wide
        diff = rest.decode(blob, n * narrow)
        first.delta_into(diff, base_bytes[a * narrow:(a + n) * narrow], dest)

    return decode


def restore_finetuned(entry: TensorEntry, get: Callable[[str], bytes], base: torch.Tensor,
                      pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """The fine-tuned tensor (source dtype) an exact-mode entry rebuilds bit for bit over
    ``base``, the base model's tensor of that name."""
    first = exact_codec(entry)
    if first is None:
        raise InvalidInput(f"tensor {entry.name!r} is not stored in exact mode")
    if tuple(base.shape) != tuple(entry.shape) or dtypes.dtype_name(base.dtype) != first.dtype:
        raise CorruptObject(f"tensor {entry.name!r}: the base's tensor is {base.dtype}"
                            f"{list(base.shape)}, the exact-mode entry wants {first.dtype}"
                            f"{list(entry.shape)}")
    rest = CodecPipeline(entry.codecs.codecs[1:])
    out = torch.empty(entry.shape, dtype=base.dtype)
    dest = out.view(-1).view(torch.uint8).numpy() if entry.numel else None
    tb = np.frombuffer(tensor_bytes(base.contiguous()), dtype=np.uint8)
    wide, narrow = dtypes.itemsize(entry.dtype), first.width
    starts = np.cumsum([0] + [c.nbytes // wide for c in entry.chunks]).tolist()

    def fill(i: int) -> None:
        a, b = starts[i] * narrow, starts[i + 1] * narrow
        diff = rest.decode(get(entry.chunks[i].blob), b - a)
        assert dest is not None  # an empty tensor has no chunks
        dest[a:b] = first.restore(diff, tb[a:b])

    if pool is not None and len(entry.chunks) > 1:
        list(pool.map(fill, range(len(entry.chunks))))
    else:
        for i in range(len(entry.chunks)):
            fill(i)
    return out
