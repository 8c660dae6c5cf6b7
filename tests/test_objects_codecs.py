"""Content-addressed objects, staging, codecs and tensor encoding, on a real local store."""

from __future__ import annotations

import hashlib
import os
import zlib

import numpy as np
import pytest
import torch
from helpers import snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvreg.codecs import ByteGroup, CodecPipeline, Zstd, codec_from_spec, default_pipeline
from tvreg.digest import tensor_bytes
from tvreg.errors import CorruptObject, FormatError, InvalidInput
from tvreg.format.manifest import Chunk, Manifest, TensorEntry
from tvreg.storage.objects import ObjectDB, Staging, object_key
from tvreg.stores import LocalStore
from tvreg.tensors.encoding import TensorEncoder, decode_tensor


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def db(root):
    return ObjectDB(LocalStore(root))


# --- ObjectDB ---------------------------------------------------------------------------------


def test_put_get_round_trip(db, root):
    data = os.urandom(5000)
    oid = db.put(data)
    assert oid == hashlib.sha256(data).hexdigest()
    assert db.get(oid) == data
    assert db.exists(oid)
    assert db.size(oid) == len(data)
    # the file is named by its sha256, so `sha256sum objects/ab/cdef…` checks it
    path = root / "objects" / oid[:2] / oid[2:]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == oid
    assert object_key(oid) == f"objects/{oid[:2]}/{oid[2:]}"


def test_put_empty_object(db):
    oid = db.put(b"")
    assert oid == hashlib.sha256(b"").hexdigest()
    assert db.get(oid) == b""


def test_dedup_same_bytes_one_object(db, root):
    a = db.put(b"same bytes")
    b = db.put(bytes(bytearray(b"same bytes")))
    assert a == b
    assert list(db.ids()) == [a]
    assert [k for k, v in snapshot(root).items() if v is not None] == [f"objects/{a[:2]}/{a[2:]}"]


def test_put_does_not_rewrite_existing_object(db, root):
    oid = db.put(b"payload")
    path = root / "objects" / oid[:2] / oid[2:]
    os.utime(path, (1_000_000, 1_000_000))
    inode = path.stat().st_ino
    db.put(b"payload")
    assert path.stat().st_ino == inode and path.read_bytes() == b"payload"  # written once
    assert path.stat().st_mtime > 1_000_000  # but touched: reuse restarts gc's grace period


@pytest.mark.parametrize("position", [0, 1, 2500, 4999])
def test_flipped_byte_raises_corrupt_and_never_returns_data(db, root, position):
    data = os.urandom(5000)
    oid = db.put(data)
    path = root / "objects" / oid[:2] / oid[2:]
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject) as info:
        db.get(oid)
    assert oid in str(info.value)
    assert db.check(oid) is not None
    assert db.check(db.put(b"fine")) is None


def test_truncated_or_extended_object_is_corrupt(db, root):
    oid = db.put(b"0123456789")
    path = root / "objects" / oid[:2] / oid[2:]
    path.write_bytes(b"012345678")
    with pytest.raises(CorruptObject):
        db.get(oid)
    path.write_bytes(b"0123456789!")
    with pytest.raises(CorruptObject):
        db.get(oid)


def test_missing_object_is_corrupt(db):
    oid = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(CorruptObject, match="missing"):
        db.get(oid)
    assert not db.exists(oid)
    assert db.check(oid) is not None


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61])
def test_bad_object_ids_refused(db, bad):
    with pytest.raises(FormatError):
        db.get(bad)
    with pytest.raises(FormatError):
        object_key(bad)


def test_ids_lists_exactly_the_objects(db, root):
    ids = {db.put(f"object {i}".encode()) for i in range(30)}
    # stray files that are not objects are skipped
    (root / "objects" / "zz").mkdir()
    (root / "objects" / "zz" / "not-an-id").write_bytes(b"x")
    (root / "objects" / "README").write_bytes(b"x")
    some = next(iter(ids))
    # a file at an id's path is listed whatever it holds, so that verify re-hashes it
    (root / "objects" / some[:2] / ("f" * 62)).write_bytes(b"x")
    assert set(db.ids()) == ids | {some[:2] + "f" * 62}
    assert db.check(some[:2] + "f" * 62) is not None
    db.delete(some)
    assert some not in set(db.ids())
    db.delete(some)  # already gone: fine


# --- Staging ----------------------------------------------------------------------------------


def test_staging_commit_moves_objects_in(db, root, tmp_path):
    scratch = tmp_path / "scratch"
    existing = db.put(b"already stored")
    staging = Staging(db, str(scratch))
    ids = [staging.put(f"blob {i}".encode()) for i in range(5)]
    assert staging.put(b"blob 0") == ids[0]  # staged twice: once
    assert staging.put(b"already stored") == existing  # in the store: not staged
    # nothing visible in the store before commit
    assert set(db.ids()) == {existing}
    assert staging.commit() == 5
    assert set(db.ids()) == {existing, *ids}
    for i, oid in enumerate(ids):
        assert db.get(oid) == f"blob {i}".encode()
    assert not os.path.exists(staging.dir)
    assert os.listdir(scratch) == []


def test_staging_close_without_commit_leaves_store_untouched(db, root, tmp_path):
    db.put(b"before")
    before = snapshot(root)
    scratch = tmp_path / "scratch"
    with Staging(db, str(scratch)) as staging:
        for i in range(5):
            staging.put(os.urandom(100 + i))
        assert len(os.listdir(staging.dir)) == 5
    assert snapshot(root) == before
    assert not os.path.exists(staging.dir)
    assert os.listdir(scratch) == []


def test_staging_commit_counts_objects_another_writer_stored_meanwhile(db, tmp_path):
    staging = Staging(db, str(tmp_path / "scratch"))
    oid = staging.put(b"raced")
    db.put(b"raced")  # another writer commits the same object first
    assert staging.commit() == 0
    assert db.get(oid) == b"raced"


# --- codecs -----------------------------------------------------------------------------------


def _random_bytes(n: int, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes()


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_default_pipeline_round_trip_bit_exact(itemsize):
    pipeline = default_pipeline(itemsize)
    assert pipeline.lossless
    names = [c.name for c in pipeline.codecs]
    assert names == (["zstd"] if itemsize == 1 else ["bytegroup", "zstd"])
    for n_items in (0, 1, 7, 1000, 40_000):
        data = _random_bytes(n_items * itemsize, seed=n_items + itemsize)
        encoded = pipeline.encode(data)
        assert isinstance(encoded, bytes)
        assert pipeline.decode(encoded, len(data)) == data
        assert pipeline.encode(data) == encoded  # deterministic


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_default_pipeline_round_trip_of_real_tensor_bytes(dtype):
    g = torch.Generator().manual_seed(3)
    t = (torch.randn(257, 33, generator=g) * 1e-3).to(dtype)
    raw = bytes(tensor_bytes(t))
    pipeline = default_pipeline(t.element_size())
    encoded = pipeline.encode(raw)
    assert pipeline.decode(encoded, len(raw)) == raw
    # a fresh pipeline (as rebuilt from a manifest) encodes to the same bytes
    again = CodecPipeline.from_specs(pipeline.specs())
    assert again == pipeline
    assert again.encode(raw) == encoded


def test_bytegroup_groups_bytes():
    data = bytes([1, 2, 3, 4, 11, 12, 13, 14])
    assert ByteGroup(4).encode(data) == bytes([1, 11, 2, 12, 3, 13, 4, 14])
    assert ByteGroup(4).decode(bytes([1, 11, 2, 12, 3, 13, 4, 14]), 8) == data


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(itemsize=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_round_trip_property(itemsize, data):
    n_items = data.draw(st.integers(0, 300))
    payload = data.draw(st.binary(min_size=n_items * itemsize, max_size=n_items * itemsize))
    pipeline = default_pipeline(itemsize, level=data.draw(st.sampled_from([1, 3, 9])))
    encoded = pipeline.encode(payload)
    assert pipeline.decode(encoded, len(payload)) == payload
    assert pipeline.encode(payload) == encoded
    group = ByteGroup(itemsize)
    assert group.decode(group.encode(payload), len(payload)) == payload


def _decode_new(pipeline, data, nbytes):
    return pipeline.decode(data, nbytes)


def _decode_into(pipeline, data, nbytes):
    dest = np.zeros(nbytes, dtype=np.uint8)
    pipeline.decode_into(data, dest)
    return dest.tobytes()


DECODERS = pytest.mark.parametrize("decode", [_decode_new, _decode_into], ids=["new", "into"])


@DECODERS
@pytest.mark.parametrize("itemsize", [1, 4])
def test_both_decoders_round_trip(decode, itemsize):
    raw = bytes(tensor_bytes(torch.linspace(-1, 1, 10_000)))
    pipeline = default_pipeline(itemsize)
    assert decode(pipeline, pipeline.encode(raw), len(raw)) == raw


@DECODERS
def test_truncated_zstd_data_is_corrupt(decode):
    raw = _random_bytes(40_000, seed=1)
    pipeline = default_pipeline(4)
    encoded = pipeline.encode(raw)
    for cut in (0, 1, 10, len(encoded) // 2, len(encoded) - 1):
        with pytest.raises(CorruptObject):
            decode(pipeline, encoded[:cut], len(raw))


@DECODERS
def test_garbled_zstd_data_is_corrupt_or_detected(decode):
    raw = bytes(tensor_bytes(torch.linspace(-1, 1, 10_000)))
    pipeline = default_pipeline(4)
    encoded = bytearray(pipeline.encode(raw))
    for pos in (0, 1, 2, 3, 4, 5, 6):  # the frame header: magic, descriptor, content size
        bad = bytearray(encoded)
        bad[pos] ^= 0xFF
        with pytest.raises(CorruptObject):
            decode(pipeline, bytes(bad), len(raw))
    # not a zstd frame at all
    with pytest.raises(CorruptObject):
        decode(pipeline, b"\x00" * 64, len(raw))
    with pytest.raises(CorruptObject):
        decode(pipeline, zlib.compress(raw), len(raw))


@DECODERS
def test_zstd_frame_of_wrong_size_is_corrupt(decode):
    pipeline = default_pipeline(4)
    encoded = pipeline.encode(b"\x01" * 400)
    with pytest.raises(CorruptObject):
        decode(pipeline, encoded, 404)
    with pytest.raises(CorruptObject):
        decode(pipeline, encoded, 396)


def test_zstd_frame_with_more_content_than_declared_is_corrupt():
    """A frame whose header understates its content (hand-made: header of one, data of another)."""
    import zstandard

    small = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x02" * 400)
    big = zstandard.ZstdCompressor(write_content_size=False).compress(_random_bytes(4000, seed=3))
    dest = np.zeros(400, dtype=np.uint8)
    with pytest.raises(CorruptObject):  # no content size in the header: refused up front
        Zstd(3).decode_into(big, dest)
    Zstd(3).decode_into(small, dest)
    assert dest.tobytes() == b"\x02" * 400


def test_codec_specs_round_trip():
    for codec in (ByteGroup(2), ByteGroup(8), Zstd(1), Zstd(19)):
        spec = codec.spec()
        assert codec_from_spec(spec) == codec
    assert default_pipeline(4).label == "bytegroup4+zstd3"
    assert default_pipeline(1, level=5).label == "zstd5"


@pytest.mark.parametrize("spec", [
    {"name": "lz4", "configuration": {}},
    {"name": "zstd"},
    {"name": "zstd", "configuration": {}, "extra": 1},
    {"name": "zstd", "configuration": []},
    {"name": "zstd", "configuration": {"level": 99}},
    {"name": "zstd", "configuration": {"level": "3"}},
    {"name": "zstd", "configuration": {"speed": 3}},
    {"name": "bytegroup", "configuration": {}},
    {"name": "bytegroup", "configuration": {"itemsize": 0}},
    {"name": "bytegroup", "configuration": {"itemsize": 4.0}},
    "zstd",
    None,
    ["zstd", {}],
], ids=repr)
def test_codec_from_spec_errors(spec):
    with pytest.raises(FormatError):
        codec_from_spec(spec)


def test_pipeline_needs_codecs():
    with pytest.raises(FormatError):
        CodecPipeline.from_specs([])
    with pytest.raises(FormatError):
        CodecPipeline.from_specs("zstd")
    with pytest.raises(InvalidInput):
        default_pipeline(0)


# --- tensor encoding --------------------------------------------------------------------------


class _Blobs:
    """A real ObjectDB that also counts puts."""

    def __init__(self, db: ObjectDB) -> None:
        self.db, self.puts = db, 0

    def put(self, data: bytes) -> str:
        self.puts += 1
        return self.db.put(data)


def _encode(db: ObjectDB, tensor: torch.Tensor, chunk_bytes: int = 1000,
            source_dtype: str = "float32") -> TensorEntry:
    with TensorEncoder(db.put, chunk_bytes=chunk_bytes, workers=2) as enc:
        return enc.submit("t", tensor, source_dtype, default_pipeline(tensor.element_size())).result()


def _tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.tensor(1.5, dtype=dtype),               # 0-d
        torch.empty(0, dtype=dtype),                  # empty
        torch.empty(3, 0, 2, dtype=dtype),            # empty with dims
        torch.randn(7, generator=g).to(dtype),        # one small chunk
        torch.randn(33, 29, generator=g).to(dtype),   # several chunks, last one partial
        torch.randn(4, 5, 6, generator=g).to(dtype) * 1e-4,
        torch.tensor([float("inf"), -0.0, float("nan"), 1e-40], dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_encode_decode_round_trip(db, dtype):
    for t in _tensors(dtype):
        entry = _encode(db, t)
        assert entry.shape == tuple(t.shape)
        assert entry.dtype == str(dtype).removeprefix("torch.")
        assert entry.nbytes == t.numel() * t.element_size()
        assert sum(c.nbytes for c in entry.chunks) == entry.nbytes
        assert all(c.nbytes <= 1000 and c.nbytes % t.element_size() == 0 for c in entry.chunks)
        if entry.nbytes > 1000:
            assert len(entry.chunks) == -(-entry.nbytes // (1000 // t.element_size() * t.element_size()))
        assert entry.sha256 == hashlib.sha256(bytes(tensor_bytes(t))).hexdigest()
        for c in entry.chunks:
            assert db.size(c.blob) == c.stored_nbytes
        out = decode_tensor(entry, db.get)
        assert out.dtype == t.dtype and out.shape == t.shape
        # bit-exact, NaN and -0.0 included
        assert bytes(tensor_bytes(out)) == bytes(tensor_bytes(t))


def test_decode_with_thread_pool(db):
    from concurrent.futures import ThreadPoolExecutor

    t = torch.randn(100, 100, generator=torch.Generator().manual_seed(1))
    entry = _encode(db, t, chunk_bytes=4096)
    assert len(entry.chunks) > 5
    with ThreadPoolExecutor(4) as pool:
        assert torch.equal(decode_tensor(entry, db.get, pool), t)


def test_entry_survives_manifest_json(db):
    t = torch.randn(50, 21, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    entry = _encode(db, t.float(), source_dtype="bfloat16")
    m = Manifest("a" * 64, "b" * 64, (entry,))
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert torch.equal(decode_tensor(back.tensors[0], db.get), t.float())


def test_identical_chunks_dedup(db):
    blobs = _Blobs(db)
    chunk = torch.arange(250, dtype=torch.float32)  # exactly 1000 bytes
    t = chunk.repeat(6)                              # six identical chunks
    with TensorEncoder(blobs.put, chunk_bytes=1000, workers=2) as enc:
        entry = enc.submit("t", t, "float32", default_pipeline(4)).result()
        again = enc.submit("u", t.clone(), "float32", default_pipeline(4)).result()
    assert len(entry.chunks) == 6
    assert len({c.blob for c in entry.chunks}) == 1
    assert [c.blob for c in again.chunks] == [c.blob for c in entry.chunks]
    assert again.sha256 == entry.sha256
    assert len(list(db.ids())) == 1
    assert torch.equal(decode_tensor(entry, db.get), t)


def test_decode_checks_the_tensor_sha256_when_asked(db):
    t = torch.randn(600, generator=torch.Generator().manual_seed(5))
    entry = _encode(db, t)
    assert torch.equal(decode_tensor(entry, db.get, check_tensor=True), t)
    wrong = TensorEntry(entry.name, entry.dtype, entry.source_dtype, entry.shape, entry.codecs,
                        entry.chunks, hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(CorruptObject, match="sha256"):
        decode_tensor(wrong, db.get, check_tensor=True)
    # by default the blobs' hashes are what is checked (they pin the decoded bytes)
    assert torch.equal(decode_tensor(wrong, db.get), t)


def test_decode_into_a_given_tensor(db):
    t = torch.randn(600, generator=torch.Generator().manual_seed(7))
    entry = _encode(db, t)
    out = torch.full((600,), 7.0)
    assert decode_tensor(entry, db.get, out=out).data_ptr() == out.data_ptr()
    assert torch.equal(out, t)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_tensor(entry, db.get, out=torch.empty(599))
    with pytest.raises(ValueError, match="cannot decode"):
        decode_tensor(entry, db.get, out=torch.empty(600, dtype=torch.float64))


def test_decode_raises_on_corrupt_or_missing_chunk(db, root):
    t = torch.randn(600, generator=torch.Generator().manual_seed(6))
    entry = _encode(db, t)
    victim = entry.chunks[1].blob
    path = root / "objects" / victim[:2] / victim[2:]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject):
        decode_tensor(entry, db.get)
    path.unlink()
    with pytest.raises(CorruptObject):
        decode_tensor(entry, db.get)


def test_decode_detects_swapped_chunks(db):
    """Chunks that are each intact but in the wrong order are caught by the tensor sha256 (a
    stored manifest cannot have them swapped: its own sha256 pins their order)."""
    t = torch.randn(600, generator=torch.Generator().manual_seed(7))
    entry = _encode(db, t)
    c = list(entry.chunks)
    c[0], c[1] = c[1], c[0]
    swapped = TensorEntry(entry.name, entry.dtype, entry.source_dtype, entry.shape, entry.codecs,
                          tuple(c), entry.sha256)
    with pytest.raises(CorruptObject):
        decode_tensor(swapped, db.get, check_tensor=True)


def test_encoder_propagates_put_failure(db):
    def failing_put(data: bytes) -> str:
        raise OSError("disk full")

    with TensorEncoder(failing_put, chunk_bytes=1000, workers=2) as enc:
        fut = enc.submit("t", torch.zeros(1000), "float32", default_pipeline(4))
        with pytest.raises(OSError, match="disk full"):
            fut.result()


def test_chunk_json():
    c = Chunk("0" * 64, 8, 5)
    assert c.to_json() == {"blob": "0" * 64, "nbytes": 8, "stored_nbytes": 5}


def test_zstd_frame_declaring_another_size_is_refused_before_inflating():
    """A small crafted blob that would inflate to 400 MB is refused from its frame header."""
    import zstandard

    from tvreg.codecs import Zstd

    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(400 << 20))
    assert len(bomb) < 100_000
    with pytest.raises(CorruptObject, match="declares 419430400 bytes"):
        Zstd(3).decode(bomb, 4096)


@pytest.mark.parametrize("spec", [
    {"name": "zstd", "configuration": {"level": True}},
    {"name": "bytegroup", "configuration": {"itemsize": True}},
])
def test_boolean_codec_settings_are_refused(spec):
    from tvreg.codecs import codec_from_spec

    with pytest.raises(FormatError):
        codec_from_spec(spec)
