"""The contract every :class:`tvreg.stores.Store` must meet, in the style of ``zarr.testing.store``:
shipped with tvreg so that a store of another package can be checked against it too. It needs
pytest (importing this module imports it; ``import tvreg.testing`` does not).

Subclass :class:`StoreContract` in a ``test_*.py`` file and provide a ``store`` fixture that returns
a fresh, empty, writable store::

    from tvreg.testing.store import StoreContract

    class TestLocalStore(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return LocalStore(tmp_path / "store")

A store that can hold files the store itself regards as temporary (a local directory can) also
overrides :meth:`StoreContract.plant_temp_file`, so that the contract can check that
:meth:`Store.list` never shows them.
"""

from __future__ import annotations

import os
import time

import pytest

from tvreg.errors import InvalidInput, NotFound
from tvreg.stores import MissingKey, Store

INVALID_KEYS = [
    "",
    "../x",
    "a/../b",
    "..",
    ".",
    "/abs",
    "/",
    "a//b",
    "a/",
    ".hidden",
    "a/.hidden",
    "a/./b",
    "a\0b",
    "a b",
    "a\\b",
    ".tmp-123",
]


class StoreContract:
    """Behaviour shared by all stores. Subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Store:  # pragma: no cover - subclasses override
        raise NotImplementedError("subclasses of StoreContract provide a `store` fixture")

    def plant_temp_file(self, store: Store, folder: str) -> None:
        """Leave a half-written temporary file in ``folder`` the way an interrupted write would.

        Stores that cannot hold such files skip the tests that need one.
        """
        pytest.skip(f"{type(store).__name__} cannot hold temporary files")

    # --- read / write ----------------------------------------------------------------------------

    def test_is_a_store(self, store):
        assert isinstance(store, Store)
        assert store.writable

    def test_write_read_round_trip(self, store):
        payloads = {
            "a": b"hello",
            "objects/ab/cdef": bytes(range(256)) * 40,
            "refs/org/model-x.v2/1.json": b'{"x":1}',
            "empty": b"",
            "b_with@at": b"\x00\xff\x00",
        }
        for key, data in payloads.items():
            store.write(key, data)
        for key, data in payloads.items():
            got = store.read(key)
            assert isinstance(got, bytes)
            assert got == data

    def test_write_replaces(self, store):
        store.write("k", b"first version, long enough to be noticed")
        store.write("k", b"2nd")
        assert store.read("k") == b"2nd"
        assert store.size("k") == 3
        assert sorted(store.list()) == ["k"]

    def test_write_accepts_memoryview_and_bytearray(self, store):
        store.write("mv", memoryview(b"abcdef")[1:4])
        store.write("ba", bytearray(b"xyz"))
        assert store.read("mv") == b"bcd"
        assert store.read("ba") == b"xyz"

    def test_read_missing_raises_missing_key(self, store):
        with pytest.raises(MissingKey):
            store.read("nope")
        with pytest.raises(MissingKey):
            store.read("deep/er/nope")
        # MissingKey is a NotFound, so callers can catch either
        assert issubclass(MissingKey, NotFound)

    def test_folder_is_not_a_key(self, store):
        store.write("dir/child", b"x")
        assert not store.exists("dir")
        with pytest.raises(MissingKey):
            store.read("dir")
        with pytest.raises(MissingKey):
            store.size("dir")
        with pytest.raises(MissingKey):
            store.mtime("dir")

    def test_key_under_a_value_is_missing(self, store):
        store.write("leaf", b"x")
        assert not store.exists("leaf/child")
        with pytest.raises(MissingKey):
            store.read("leaf/child")
        with pytest.raises(MissingKey):
            store.size("leaf/child")
        with pytest.raises(MissingKey):
            store.mtime("leaf/child")
        store.delete("leaf/child")  # missing: fine
        assert store.read("leaf") == b"x"

    # --- write_new ------------------------------------------------------------------------------

    def test_write_new_creates_once_and_never_overwrites(self, store):
        assert store.write_new("refs/n/1.json", b"first") is True
        assert store.write_new("refs/n/1.json", b"second") is False
        assert store.read("refs/n/1.json") == b"first"
        assert store.write_new("refs/n/2.json", b"other") is True
        assert sorted(store.list("refs")) == ["refs/n/1.json", "refs/n/2.json"]

    def test_write_new_after_write_and_after_delete(self, store):
        store.write("k", b"a")
        assert store.write_new("k", b"b") is False
        assert store.read("k") == b"a"
        store.delete("k")
        assert store.write_new("k", b"c") is True
        assert store.read("k") == b"c"

    def test_write_new_empty_value(self, store):
        assert store.write_new("e", b"") is True
        assert store.exists("e")
        assert store.read("e") == b""
        assert store.write_new("e", b"x") is False
        assert store.read("e") == b""

    # --- write_file -----------------------------------------------------------------------------

    def test_write_file_consumes_source(self, store, tmp_path):
        src = tmp_path / "src.bin"
        src.write_bytes(b"payload" * 100)
        assert store.write_file("objects/aa/bb", str(src)) is True
        assert store.read("objects/aa/bb") == b"payload" * 100
        assert not src.exists()

    def test_write_file_never_overwrites(self, store, tmp_path):
        store.write("k", b"original")
        src = tmp_path / "src.bin"
        src.write_bytes(b"intruder")
        assert store.write_file("k", str(src)) is False
        assert store.read("k") == b"original"
        assert not src.exists()  # consumed either way: callers never clean up after it

    # --- metadata -------------------------------------------------------------------------------

    def test_exists_size_mtime(self, store):
        assert not store.exists("k")
        with pytest.raises(MissingKey):
            store.size("k")
        with pytest.raises(MissingKey):
            store.mtime("k")
        store.write("k", b"12345")
        assert store.exists("k")
        assert store.size("k") == 5
        m = store.mtime("k")
        assert isinstance(m, float)
        # a plausible wall-clock time, not a monotonic counter (gc compares it with time.time())
        assert abs(m - time.time()) < 24 * 3600
        store.write("k", b"")
        assert store.size("k") == 0

    # --- delete ---------------------------------------------------------------------------------

    def test_delete(self, store):
        store.write("a/b", b"x")
        store.write("a/c", b"y")
        store.delete("a/b")
        assert not store.exists("a/b")
        with pytest.raises(MissingKey):
            store.read("a/b")
        assert store.read("a/c") == b"y"
        assert sorted(store.list()) == ["a/c"]

    def test_delete_missing_is_fine(self, store):
        store.delete("never-written")
        store.delete("no/such/folder/key")
        store.write("k", b"x")
        store.delete("k")
        store.delete("k")
        assert not store.exists("k")

    # --- list -----------------------------------------------------------------------------------

    def test_list_empty(self, store):
        assert list(store.list()) == []
        assert list(store.list("objects")) == []

    def test_list_recursive_and_by_folder(self, store):
        keys = ["objects/ab/cd", "objects/ab/ef", "objects/01/23", "refs/a/1.json",
                "refs/org/model/2.json", "config.json", "ab/zz"]
        for k in keys:
            store.write(k, k.encode())
        assert sorted(store.list()) == sorted(keys)
        assert sorted(store.list("")) == sorted(keys)
        assert sorted(store.list("objects")) == ["objects/01/23", "objects/ab/cd", "objects/ab/ef"]
        assert sorted(store.list("objects/ab")) == ["objects/ab/cd", "objects/ab/ef"]
        assert sorted(store.list("refs")) == ["refs/a/1.json", "refs/org/model/2.json"]
        assert list(store.list("nothing-here")) == []

    def test_list_prefix_is_a_folder_not_a_string_prefix(self, store):
        store.write("a/x", b"1")
        store.write("ab/y", b"2")
        store.write("a.json", b"3")
        assert sorted(store.list("a")) == ["a/x"]

    def test_list_after_write_new_and_write_file(self, store, tmp_path):
        src = tmp_path / "f"
        src.write_bytes(b"f")
        store.write_new("n/one", b"1")
        store.write_new("n/one", b"1 again")
        store.write_file("n/two", str(src))
        store.write("n/three", b"3")
        assert sorted(store.list("n")) == ["n/one", "n/three", "n/two"]

    def test_list_excludes_temp_files(self, store):
        store.write("objects/ab/cd", b"x")
        self.plant_temp_file(store, "objects/ab")
        self.plant_temp_file(store, "")
        assert sorted(store.list()) == ["objects/ab/cd"]
        assert sorted(store.list("objects")) == ["objects/ab/cd"]

    # --- keys -----------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_keys_refused(self, store, key):
        with pytest.raises(InvalidInput):
            store.write(key, b"x")
        with pytest.raises(InvalidInput):
            store.write_new(key, b"x")
        with pytest.raises(InvalidInput):
            store.read(key)
        with pytest.raises(InvalidInput):
            store.exists(key)
        with pytest.raises(InvalidInput):
            store.delete(key)
        # nothing was written anywhere
        assert list(store.list()) == []

    @pytest.mark.parametrize("key", ["../escape", "/tmp/escape", "a/../../escape"], ids=repr)
    def test_invalid_key_in_write_file_keeps_source(self, store, key, tmp_path):
        src = tmp_path / "src"
        src.write_bytes(b"x")
        with pytest.raises(InvalidInput):
            store.write_file(key, str(src))
        assert src.read_bytes() == b"x"
        assert list(store.list()) == []

    def test_invalid_list_prefix_refused(self, store):
        for prefix in ("../", "/etc", "a//b", ".hidden"):
            with pytest.raises(InvalidInput):
                list(store.list(prefix))


def temp_name_for(store_root: str | os.PathLike, folder: str, name: str) -> str:
    """Path of ``name`` inside ``folder`` of a directory-backed store (a helper for subclasses)."""
    parts = [p for p in folder.split("/") if p]
    return os.path.join(os.fspath(store_root), *parts, name)
