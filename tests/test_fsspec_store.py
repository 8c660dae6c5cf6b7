"""FsspecStore against the shared store contract, on fsspec's in-memory filesystem."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from tvreg.errors import InvalidInput
from tvreg.stores.fsspec_store import FsspecStore
from tvreg.testing.store import StoreContract


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


# --- a real S3 endpoint on loopback: moto's server, through s3fs ---------------------------------


def s3_store(endpoint: str) -> FsspecStore:
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return FsspecStore.from_url(f"s3://{bucket}/store", endpoint_url=endpoint,
                                skip_instance_cache=True, use_listings_cache=False)


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_endpoint):
        return s3_store(s3_endpoint)

    def plant_temp_file(self, store, folder):
        where = f"{store.root}/{folder}".rstrip("/")
        store.fs.pipe_file(f"{where}/.tmp-interrupted", b"half a value")
        store.fs.pipe_file(f"{where}/.hidden-dir/inner", b"x")


def test_s3_exclusive_create_is_a_conditional_put(s3_endpoint):
    """Two stores (two clients) racing for one key: the server keeps the first value."""
    a = s3_store(s3_endpoint)
    b = FsspecStore.from_url(f"s3://{a.root}", endpoint_url=s3_endpoint,
                             skip_instance_cache=True, use_listings_cache=False)
    assert a.write_new("refs/x/1.json", b"first") is True
    assert b.write_new("refs/x/1.json", b"second") is False
    assert b.read("refs/x/1.json") == b"first"
