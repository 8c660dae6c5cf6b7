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

Next to it, a derived side file holds each record's *coarse* sketch, for a first ranking stage
that reads 8 times fewer bytes (docs/format.md §10):

    sketches/<base_hash>-<arch_fingerprint[:16]>.coarse.bin

records of :data:`COARSE` (2,112 bytes): the vector id and its sketch's buckets summed in
groups of 8 (``sketch.reshape(512, 8).sum(1)``: itself a CountSketch of 512 buckets, with hash
h(j) >> 3, since the signs are already applied), divided by the vector's norm (zeros for a
norm of 0), so that one product ranks by estimated cosine. Record i of the coarse file is
record i of the sketch file. :func:`load_coarse` brings it up to date (computing the records
the sketch file has and it lacks, under the sketch file's lock) and replaces it when its ids
do not match.

Both are memory-mapped once per process and size (:func:`_map`): a query then touches pages
already mapped instead of faulting them in again. Files are only appended to, or replaced
(a new inode), never cut below a whole record, so a mapping stays valid.
"""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np

from tvreg.util import faults

#: dimensions of the per-vector CountSketch (a format constant: sketches of any registry compare;
#: also the width of ``vector_stats.sketch``)
SKETCH_DIM = 4096
FOLDER = "sketches"
RECORD = np.dtype([("vector_id", "S64"), ("norm", "<f8"), ("sketch", "<f4", (SKETCH_DIM,))])
#: buckets of a coarse sketch: SKETCH_DIM / COARSE_GROUP
COARSE_DIM = 512
COARSE_GROUP = SKETCH_DIM // COARSE_DIM
COARSE = np.dtype([("vector_id", "S64"), ("sketch", "<f4", (COARSE_DIM,))])


def path(root: str, base_hash: str, arch_fingerprint: str) -> str:
    return os.path.join(root, FOLDER, f"{base_hash}-{arch_fingerprint[:16]}.bin")


def coarse_path(root: str, base_hash: str, arch_fingerprint: str) -> str:
    return os.path.join(root, FOLDER, f"{base_hash}-{arch_fingerprint[:16]}.coarse.bin")


def fold(sketches: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Coarse sketches (float32, n × COARSE_DIM) of full ones (n × SKETCH_DIM): each group of
    COARSE_GROUP adjacent buckets summed, in float64, divided by ``norms`` if given (0 where a
    norm is not positive), then rounded."""
    s = np.asarray(sketches, dtype=np.float64).reshape(-1, COARSE_DIM, COARSE_GROUP).sum(axis=2)
    if norms is not None:
        norms = np.asarray(norms, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(norms > 0, s / norms, 0.0)
    return s.astype(np.float32)


def append(root: str, base_hash: str, arch_fingerprint: str,
           rows: list[tuple[str, float, np.ndarray]]) -> None:
    """Append ``(vector_id, norm, sketch)`` records (one write, under an exclusive lock), and
    their coarse records where the side file exists."""
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
    if os.path.exists(coarse_path(root, base_hash, arch_fingerprint)):
        # keep the side file in step, so the first query after many inserts need not fold
        # them all (a cache: a failure here leaves it to that query)
        try:
            load_coarse(root, base_hash, arch_fingerprint)
        except OSError:
            pass


def load(root: str, base_hash: str, arch_fingerprint: str) -> np.ndarray | None:
    """The records of one base (memory-mapped), or None if there is no usable file."""
    got = _map(path(root, base_hash, arch_fingerprint), RECORD)
    return got if got is not None and len(got) else None


def _coarse_matches(table: np.ndarray, coarse: np.ndarray) -> bool:
    """Whether the coarse records are those of the first records of ``table`` (ids compared at
    the ends and at a few places between)."""
    n = len(coarse)
    if n > len(table):
        return False
    if n == 0:
        return True
    at = np.unique(np.linspace(0, n - 1, num=min(n, 17)).astype(np.int64))
    return bool(np.array_equal(coarse["vector_id"][at], table["vector_id"][at]))


def load_coarse(root: str, base_hash: str, arch_fingerprint: str,
                table: np.ndarray | None = None) -> np.ndarray | None:
    """The coarse records of the sketch file's records (``table``, as :func:`load` gives it),
    memory-mapped; the missing ones are computed and appended first (under the sketch file's
    exclusive lock). None when the sketch file is unusable or the side file cannot be written
    (a read-only registry): queries then rank on the full sketches."""
    if table is None:
        table = load(root, base_hash, arch_fingerprint)
        if table is None:
            return None
    n = len(table)
    file = coarse_path(root, base_hash, arch_fingerprint)
    got = _map(file, COARSE)
    if got is not None and len(got) >= n and _coarse_matches(table, got):
        return got[:n]
    try:
        _extend_coarse(root, base_hash, arch_fingerprint, table)
    except OSError:
        return None
    got = _map(file, COARSE)
    if got is None or len(got) < n or not _coarse_matches(table, got):
        return None
    return got[:n]


#: mappings of this process: file -> (inode, records, memmap); a few files at most
_MAPPED: dict[str, tuple[int, int, np.ndarray]] = {}
_MAPPED_LOCK = threading.Lock()


def _map(file: str, dtype: np.dtype) -> np.ndarray | None:
    """The whole records of ``file`` memory-mapped (empty if it is missing; None if it cannot
    be read), reusing this process's mapping while the file keeps its inode and size."""
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return np.zeros(0, dtype=dtype)
    except OSError:
        return None
    n = st.st_size // dtype.itemsize
    if n == 0:
        return np.zeros(0, dtype=dtype)
    with _MAPPED_LOCK:
        got = _MAPPED.get(file)
        if got is not None and got[0] == st.st_ino and got[1] == n and got[2].dtype == dtype:
            return got[2]
    try:
        mapped = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
    except (OSError, ValueError):
        return None
    with _MAPPED_LOCK:
        if len(_MAPPED) >= 8:
            _MAPPED.clear()
        _MAPPED[file] = (st.st_ino, n, mapped)
    return mapped


def _extend_coarse(root: str, base_hash: str, arch_fingerprint: str, table: np.ndarray) -> None:
    """Append the coarse records of ``table``'s records the side file lacks; write it anew (a
    new file renamed over it) when it does not match. Under the sketch file's lock, so appends
    and other readers wait."""
    import fcntl

    fd = os.open(path(root, base_hash, arch_fingerprint), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        file = coarse_path(root, base_hash, arch_fingerprint)
        mapped = _map(file, COARSE)
        have = 0 if mapped is None else len(mapped)
        if mapped is None or have > len(table) or not _coarse_matches(table, mapped):
            have, target = 0, f"{file}.{os.getpid()}.tmp"
        else:
            target = file
        out = os.open(target, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            if os.fstat(out).st_size != have * COARSE.itemsize:  # a torn record, or a stale tmp
                os.ftruncate(out, have * COARSE.itemsize)
            os.lseek(out, have * COARSE.itemsize, os.SEEK_SET)
            for start in range(have, len(table), 4096):
                part = table[start:start + 4096]
                records = np.zeros(len(part), dtype=COARSE)
                records["vector_id"] = part["vector_id"]
                records["sketch"] = fold(part["sketch"], part["norm"])
                data = memoryview(records.tobytes())
                while data:
                    data = data[os.write(out, data):]
        finally:
            os.close(out)
        if target != file:
            os.replace(target, file)
    finally:
        os.close(fd)


def clear(root: str) -> None:
    shutil.rmtree(os.path.join(root, FOLDER), ignore_errors=True)
