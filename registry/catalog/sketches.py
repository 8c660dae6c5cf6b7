"""Sketch files: every vector's CountSketch of one base in one flat file, for fast ranking.

The catalog keeps each vector's sketch (``vector_stats.sketch``) for SQL, but ranking 10,000 of
them inside DuckDB takes about 270 ms; the same numbers in a flat, memory-mapped file take a few
milliseconds. The files are a derived cache next to the catalog (docs/format.md §10):

    sketches/<base_hash>-<arch_fingerprint[:16]>.bin

a sequence of fixed-size little-endian records (:data:`RECORD`, 16,456 bytes): the vector id
(64 ASCII hex digits), its norm (float64) and its sketch (SKETCH_DIM float32). Records are appended
under an exclusive ``flock`` after the catalog commits the vector's statistics; a vector may appear
more than once (the same values), and records of vectors no longer in the catalog are ignored.
A missing, shortened or unreadable file only makes queries fall back to the catalog.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from tvreg.util import faults

#: dimensions of the per-vector CountSketch (a format constant: sketches of any registry compare;
#: also the width of ``vector_stats.sketch``)
SKETCH_DIM = 4096
FOLDER = "sketches"
RECORD = np.dtype([("vector_id", "S64"), ("norm", "<f8"), ("sketch", "<f4", (SKETCH_DIM,))])


def path(root: str, base_hash: str, arch_fingerprint: str) -> str:
    return os.path.join(root, FOLDER, f"{base_hash}-{arch_fingerprint[:16]}.bin")


def append(root: str, base_hash: str, arch_fingerprint: str,
           rows: list[tuple[str, float, np.ndarray]]) -> None:
    """Append ``(vector_id, norm, sketch)`` records (one write, under an exclusive lock)."""
    if not rows:
        return
    import fcntl

    records = np.zeros(len(rows), dtype=RECORD)
    for i, (vid, norm, sketch) in enumerate(rows):
        records[i] = (vid.encode("ascii"), norm, np.asarray(sketch, dtype=np.float32))
    data = memoryview(records.tobytes())
    file = path(root, base_hash, arch_fingerprint)
    os.makedirs(os.path.dirname(file), exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        faults.step("sketch", file)
        size = os.fstat(fd).st_size
        if size % RECORD.itemsize:  # a torn record of an interrupted append: drop it
            os.ftruncate(fd, size - size % RECORD.itemsize)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def load(root: str, base_hash: str, arch_fingerprint: str) -> np.ndarray | None:
    """The records of one base (memory-mapped), or None if there is no usable file."""
    file = path(root, base_hash, arch_fingerprint)
    try:
        n = os.path.getsize(file) // RECORD.itemsize
        if n == 0:
            return None
        return np.memmap(file, dtype=RECORD, mode="r", shape=(n,))
    except (OSError, ValueError):
        return None


def clear(root: str) -> None:
    shutil.rmtree(os.path.join(root, FOLDER), ignore_errors=True)
