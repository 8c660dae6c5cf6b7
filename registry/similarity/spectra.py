"""Spectra files: each vector's per-matrix spectra, kept so that a later pass need not compute
them again (a derived cache next to the catalog, docs/format.md §10):

    spectra/<vector_id>.npz

one uncompressed numpy ``.npz`` per vector (``numpy.load`` without pickles), written while a
similarity pass computes the vector's spectra, a tensor at a time, into a temporary file renamed
into place when every matrix is in. Per matrix i (its position among the manifest's tensors):
``g<i>`` the float64 Gram matrix of the short side, ``w<i>`` the singular vectors a projection
uses (the top k, or the s − k after them where k > s/2) and ``k<i>``. The arrays are the ones
the pass computed, bit for bit, so a value is the same whether its spectra came from here or
were computed afresh. A vector id names its content, so a file never goes stale; one that is
missing, torn or of another format is computed again. ``tvreg similarities --rebuild`` deletes
the folder; passes delete the files of vectors the catalog no longer lists, and temporary files
whose writer's process is gone.

Measured (benchmarks/bench_similarity.py, 2 cores): storing the 6th vector of 21M parameters
(21 matrices, 20 of 1024 × 1024) spent 73 of its 77 busy seconds computing the 126 spectra of
the 6 vectors, 53 s in all; with the other 5 vectors' spectra read from here it computes 21 and
takes 13.2 s (3.3 s without the alignment). A file is 2.2× the vector's float32 size there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zipfile

import numpy as np

FOLDER = "spectra"
#: bump when what a file holds changes (the share of the norm, the arrays)
FORMAT = "tvreg-spectra-v1"


def path(root: str, vector_id: str) -> str:
    return os.path.join(root, FOLDER, f"{vector_id}.npz")


class Reader:
    """One vector's stored spectra, read lazily (a matrix at a time); every method returns None
    where the file or the matrix cannot be read."""

    def __init__(self, root: str, vector_id: str, share: float) -> None:
        self._lock = threading.Lock()
        self._file = None
        try:
            f = np.load(path(root, vector_id), allow_pickle=False)
            if str(f["format"]) == FORMAT and float(f["share"]) == share:
                self._file = f
            else:
                f.close()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            self._file = None
        #: whether a file of this format was found
        self.complete = self._file is not None

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(gram, vectors, k) of the vector's i-th tensor."""
        if self._file is None:
            return None
        with self._lock:  # NpzFile reads through one zip handle
            try:
                return self._file[f"g{i}"], self._file[f"w{i}"], int(self._file[f"k{i}"])
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
                return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Writer:
    """Builds one vector's file a matrix at a time; :meth:`commit` renames it into place. Any
    failure to write only means no file (the cache is optional)."""

    def __init__(self, root: str, vector_id: str, share: float) -> None:
        self._lock = threading.Lock()
        self._final = path(root, vector_id)
        self._tmp = f"{self._final}.{os.getpid()}.{threading.get_ident()}.tmp"
        self._zip: zipfile.ZipFile | None = None
        try:
            os.makedirs(os.path.dirname(self._final), exist_ok=True)
            self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
            self._put("format", np.array(FORMAT))
            self._put("share", np.array(share))
        except OSError:
            self.abort()

    def _put(self, key: str, array: np.ndarray) -> None:
        assert self._zip is not None
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)

    def add(self, i: int, gram: np.ndarray, vectors: np.ndarray, k: int) -> None:
        with self._lock:
            if self._zip is None:
                return
            try:
                self._put(f"g{i}", gram)
                self._put(f"w{i}", vectors)
                self._put(f"k{i}", np.array(k))
            except OSError:
                self.abort()

    def commit(self) -> None:
        with self._lock:
            if self._zip is None:
                return
            try:
                self._zip.close()
                self._zip = None
                os.replace(self._tmp, self._final)
            except OSError:
                self.abort()

    def abort(self) -> None:
        if self._zip is not None:
            with contextlib.suppress(Exception):
                self._zip.close()
            self._zip = None
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


def clear(root: str) -> None:
    """Delete every spectra file."""
    import shutil

    shutil.rmtree(os.path.join(root, FOLDER), ignore_errors=True)


def prune(root: str, keep: set[str]) -> None:
    """Delete the files of vectors not in ``keep``, and temporary files whose writer's process
    is gone (a pass killed while writing; a live one may still be writing its own)."""
    folder = os.path.join(root, FOLDER)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if (name.endswith(".npz") and name[:-4] not in keep) or (
                name.endswith(".tmp") and not _alive(name.split(".")[-3])):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (a temporary file's) still runs; True where it cannot tell."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True
