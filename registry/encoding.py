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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from . import dtypes
from .codecs import CodecPipeline
from .digest import tensor_bytes
from .errors import CorruptObject
from .manifest import Chunk, TensorEntry

DEFAULT_CHUNK_BYTES = 64 << 20
_MIB = 1 << 20


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


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
        digest = self.pool.submit(lambda: hashlib.sha256(raw).hexdigest())
        done: Future = Future()
        pending = [len(parts) + 1]
        lock = threading.Lock()

        def finish(_f: Future) -> None:
            with lock:
                pending[0] -= 1
                if pending[0]:
                    return
            self.budget.release(held)
            try:
                chunks = tuple(p.result() for p in parts)
                done.set_result(TensorEntry(name, dtypes.dtype_name(tensor.dtype), source_dtype,
                                            tuple(tensor.shape), pipeline, chunks,
                                            digest.result()))
            except BaseException as e:  # propagate a worker's failure to the caller
                done.set_exception(e)

        for f in (*parts, digest):
            f.add_done_callback(finish)
        return done

    def submit_factored(self, name: str, shape: tuple[int, ...], source_dtype: str,
                        pipeline: CodecPipeline, payload: bytes) -> Future:
        """A float32 tensor stored as the output of ``pipeline``'s first step (``lowrank``):
        ``payload`` is that step's encoding (the factors); the rest of the pipeline encodes it.
        One chunk; the tensor's sha256 is that of the decoded bytes (decoded once here, which
        also proves the entry decodes)."""
        nbytes = math.prod(shape) * 4

        def work() -> TensorEntry:
            data = CodecPipeline(pipeline.codecs[1:]).encode(payload)
            dense = pipeline.decode(data, nbytes)
            chunk = Chunk(self.put(data), nbytes, len(data))
            return TensorEntry(name, "float32", source_dtype, tuple(shape), pipeline, (chunk,),
                               hashlib.sha256(dense).hexdigest())

        return self.pool.submit(work)

    def _encode_chunk(self, pipeline: CodecPipeline, raw: memoryview) -> Chunk:
        data = pipeline.encode(raw, self.pool)
        return Chunk(self.put(data), len(raw), len(data))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "TensorEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_tensor(entry: TensorEntry, get: Callable[[str], bytes],
                  pool: ThreadPoolExecutor | None = None, *, out: torch.Tensor | None = None,
                  check_tensor: bool = False) -> torch.Tensor:
    """The tensor of ``entry``; raises :class:`CorruptObject`.

    ``get`` returns a blob after checking its sha256, which pins the blob's content and so the
    decoded bytes; ``check_tensor`` also checks the decoded bytes against the tensor's sha256
    (which catches a faulty decoder, at the cost of hashing every byte once more). ``out``, a
    contiguous tensor of the entry's dtype and size, is decoded into instead of a new one.
    """
    dtype = dtypes.torch_dtype(entry.dtype)
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
        entry.codecs.decode_into(get(entry.chunks[i].blob), buf[offsets[i]:offsets[i + 1]], pool)

    if pool is not None and len(entry.chunks) > 1:
        list(pool.map(fill, range(len(entry.chunks))))
    else:
        for i in range(len(entry.chunks)):
            fill(i)
    if check_tensor and hashlib.sha256(tensor_bytes(out)).hexdigest() != entry.sha256:
        raise CorruptObject(f"tensor {entry.name!r} decodes to bytes whose sha256 does not match "
                            "its manifest")
    return out
