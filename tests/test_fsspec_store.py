"""FsspecStore against the shared store contract, on fsspec's in-memory filesystem."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from store_contract import StoreContract
from tvreg.errors import InvalidInput
from tvreg.stores.fsspec_store import FsspecStore


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        root = f"memory://tvreg-test-{uuid.uuid4().hex}/store"
        yield FsspecStore.from_url(root)
        memory = fsspec.filesystem("memory")
        top = "/" + root.removeprefix("memory://").split("/")[0]
        if memory.exists(top):
            memory.rm(top, recursive=True)

    def plant_temp_file(self, store, folder):
        where = f"{store.root}/{folder}".rstrip("/")
        store.fs.pipe_file(f"{where}/.tmp-interrupted", b"half a value")
        store.fs.pipe_file(f"{where}/.hidden-dir/inner", b"x")


def test_read_only_store_refuses_writes():
    root = f"memory://tvreg-test-{uuid.uuid4().hex}"
    rw = FsspecStore.from_url(root)
    rw.write("k", b"v")
    ro = FsspecStore(rw.fs, rw.root, writable=False)
    assert ro.read("k") == b"v"
    for call in (lambda: ro.write("k", b"x"), lambda: ro.write_new("n", b"x"),
                 lambda: ro.delete("k"), lambda: ro.touch("k")):
        with pytest.raises(InvalidInput, match="read-only"):
            call()
    assert rw.read("k") == b"v" and not rw.exists("n")
