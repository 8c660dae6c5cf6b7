"""A store in a local directory: atomic writes by temp file + rename, exclusive create by link."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator

from tvreg.stores.base import MissingKey, Store, check_key, is_key
from tvreg.util import faults
from tvreg.util.fsio import fsync_dir

TMP_PREFIX = ".tmp-"


def _file_mode() -> int:
    """What open(2) would give a new file under the current umask (mkstemp gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class LocalStore(Store):
    """A store in a local folder: atomic writes (temp file, fsync, rename), exclusive create by
    ``link(2)``."""

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def location(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _temp(self, path: str, data: bytes) -> str:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        faults.step("tmp", path)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except BaseException:
            _unlink(tmp)
            raise
        return tmp

    def read(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # a folder (or a path through a file) is not a key, as exists() and list() agree
            raise MissingKey(f"no such key: {key}") from None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        for attempt in _ATTEMPTS:
            tmp = self._temp(path, data)
            try:
                faults.step("rename", key)
                os.replace(tmp, path)
                break
            except FileNotFoundError:
                _vanished(tmp, attempt)
            except BaseException:
                _unlink(tmp)
                raise
        if self.fsync:
            fsync_dir(os.path.dirname(path))

    def write_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        for attempt in _ATTEMPTS:
            if os.path.exists(path):
                return False
            tmp = self._temp(path, data)
            try:
                return self._link_new(tmp, path)
            except FileNotFoundError:
                _vanished(tmp, attempt)
            except BaseException:
                _unlink(tmp)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def write_file(self, key: str, path: str) -> bool:
        dest = self._path(key)
        if os.path.exists(dest):
            _unlink(path)
            return False
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            return self._link_new(path, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        # the source is on another file system: copy it next to the destination first
        tmp = self._temp(dest, b"")
        try:
            shutil.copyfile(path, tmp)
            if self.fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            _unlink(path)
            return self._link_new(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise

    def _link_new(self, tmp: str, dest: str) -> bool:
        """link(2) fails if ``dest`` exists: an atomic, exclusive create of complete content.

        ``tmp`` is consumed when the create succeeds or ``dest`` exists; on any other error it
        is left to the caller (write_file may still copy it across file systems)."""
        faults.step("link", dest)
        try:
            os.link(tmp, dest)
            created = True
        except FileExistsError:
            created = False
        faults.step("unlink", tmp)
        _unlink(tmp)
        if created and self.fsync:
            fsync_dir(os.path.dirname(dest))
        return created

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def _stat(self, key: str) -> os.stat_result:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise MissingKey(f"no such key: {key}") from None
        if not stat.S_ISREG(st.st_mode):  # a folder is not a key
            raise MissingKey(f"no such key: {key}")
        return st

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def mtime(self, key: str) -> float:
        return self._stat(key).st_mtime

    def delete(self, key: str) -> None:
        path = self._path(key)
        faults.step("delete", key)
        _unlink(path)

    def touch(self, key: str) -> None:
        path = self._path(key)
        faults.step("touch", key)
        try:
            os.utime(path)
        except (FileNotFoundError, NotADirectoryError):
            raise MissingKey(f"no such key: {key}") from None

    def clean_temporary(self, older_than: float, dry_run: bool = False) -> int:
        now, removed = time.time(), 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                if name.startswith(TMP_PREFIX):
                    try:
                        if now - os.path.getmtime(path) >= older_than:
                            removed += 1
                            if not dry_run:
                                faults.step("delete", path)
                                _unlink(path)
                    except FileNotFoundError:
                        pass
        return removed

    def list(self, prefix: str = "") -> Iterator[str]:
        top = self._path(prefix) if prefix else self.root
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = os.path.relpath(folder, self.root)
            for name in sorted(files):
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if is_key(key):  # not hidden or temporary, nor a name no key can have
                    yield key


#: a write whose temporary file vanished before it was linked (a concurrent ``gc --grace 0``
#: removed it) writes it again, this many times at most
_ATTEMPTS = range(5)


def _vanished(tmp: str, attempt: int) -> None:
    """The temporary file of a write is gone: try again, or give up with a clear error."""
    from tvreg.errors import RegistryError

    _unlink(tmp)
    if attempt == _ATTEMPTS[-1]:
        raise RegistryError(f"{tmp}: the temporary file of this write kept being removed (by a "
                            "concurrent `tvreg gc` with a short --grace?); run the command again")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a path through a file
        pass
