"""The lossless delta codec ``bgzstd`` and the per-tensor choice (format §5.6), on real deltas."""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from tvreg.codecs import BgZstd, CodecPipeline, choose_pipeline, codec_from_spec
from tvreg.codecs.bgzstd import run_blocks
from tvreg.digest import tensor_bytes
from tvreg.errors import CorruptObject, FormatError, InvalidInput
from tvreg.format.manifest import Manifest
from tvreg.storage.objects import ObjectDB
from tvreg.stores import LocalStore
from tvreg.tensors.encoding import TensorEncoder, decode_tensor


@pytest.fixture(scope="module")
def deltas(zoo) -> dict[str, torch.Tensor]:
    """The float32 deltas of a real fine-tune (toy zoo, 20 Adam steps)."""
    base, ft = load_file(zoo.base), load_file(zoo.finetuned["sentiment"])
    return {n: (ft[n].float() - base[n].float()).contiguous() for n in sorted(base)
            if base[n].is_floating_point()}


def _raw(t: torch.Tensor) -> bytes:
    return bytes(tensor_bytes(t))


def _decode_into(pipeline: CodecPipeline, blob: bytes, nbytes: int, pool=None) -> bytes:
    dest = np.full(nbytes, 0xAB, dtype=np.uint8)
    pipeline.decode_into(blob, dest, pool)
    return dest.tobytes()


def _by_hand(codec: BgZstd, blob: bytes, nbytes: int) -> bytes:
    """Decode a blob following docs/format.md §5.6 only (zstandard and the standard library's
    zlib, no tvreg)."""
    k, block = codec.itemsize, codec.block
    n = nbytes // k
    nblocks = -(-n // block)
    sizes = [int.from_bytes(blob[4 * j:4 * j + 4], "little") for j in range(nblocks * k)]
    pos, out = 4 * nblocks * k, bytearray(nbytes)
    for b in range(nblocks):
        m = min(block, n - b * block)
        for j in range(k):
            seg = blob[pos:pos + sizes[b * k + j]]
            pos += len(seg)
            if len(seg) == m:
                stream = seg
            elif codec.levels[j] == "huf":
                stream = zlib.decompress(seg, -15)
            else:
                stream = zstandard.ZstdDecompressor().decompress(seg)
            out[(b * block) * k + j:(b * block + m) * k:k] = stream
    assert pos == len(blob)
    return bytes(out)


# --- round trips ------------------------------------------------------------------------------


def test_real_deltas_round_trip_bit_exact(deltas):
    labels = set()
    for name, t in deltas.items():
        raw = _raw(t)
        pipeline = choose_pipeline(t, 4)
        labels.add(pipeline.label)
        blob = pipeline.encode(raw)
        assert pipeline.decode(blob, len(raw)) == raw, name
        assert _decode_into(pipeline, blob, len(raw)) == raw, name
        # small blocks: many of them per chunk, the last one partial
        small = CodecPipeline((BgZstd(4, 1000, pipeline.codecs[0].levels),))
        blob = small.encode(raw)
        assert _decode_into(small, blob, len(raw)) == raw, name
        assert _by_hand(small.codecs[0], blob, len(raw)) == raw, name
    assert all(label.startswith("bgzstd4:") for label in labels)


def test_real_deltas_compress_at_least_as_well_as_bytegroup_zstd(deltas):
    """The chosen pipeline stores a real fine-tune's deltas within 1% of bytegroup4+zstd3 (the
    pipeline of tvreg 0.1.0) and below the raw size."""
    from tvreg.codecs import default_pipeline

    raw = sum(t.numel() * 4 for t in deltas.values())
    ours = sum(len(choose_pipeline(t, 4).encode(_raw(t))) for t in deltas.values())
    old = sum(len(default_pipeline(4).encode(_raw(t))) for t in deltas.values())
    assert ours <= 1.01 * old
    assert ours < 0.9 * raw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16,
                                   torch.int64, torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("n", [0, 1, 3, 999, 1000, 1001, 4097])
def test_edge_sizes_and_dtypes_round_trip(dtype, n):
    g = torch.Generator().manual_seed(n)
    if dtype.is_floating_point:
        t = (torch.randn(n, generator=g) * 1e-3).to(dtype)
        if n > 2:
            t[::3] = 0  # exact zeros, as fine-tuning leaves
    else:
        t = torch.randint(-5 if dtype != torch.uint8 else 0, 100, (n,), generator=g).to(dtype)
    raw = _raw(t)
    k = t.element_size()
    chosen = choose_pipeline(t, k)
    for pipeline in (chosen, CodecPipeline((BgZstd(k, 1000, chosen.codecs[0].levels),)),
                     CodecPipeline((BgZstd(k, 7, (1,) * k),)),
                     CodecPipeline((BgZstd(k, 7, (None,) * k),))):
        blob = pipeline.encode(raw)
        assert pipeline.decode(blob, len(raw)) == raw
        assert _decode_into(pipeline, blob, len(raw)) == raw
        assert _by_hand(pipeline.codecs[0], blob, len(raw)) == raw
        assert pipeline.encode(raw) == blob


def test_odd_item_sizes_round_trip():
    rng = np.random.default_rng(0)
    for k in (3, 5, 16):
        raw = rng.integers(0, 4, 1234 * k, dtype=np.uint8).tobytes()
        pipeline = CodecPipeline((BgZstd(k, 100, tuple(None if j % 2 else 1 for j in range(k))),))
        blob = pipeline.encode(raw)
        assert _decode_into(pipeline, blob, len(raw)) == raw
        assert _by_hand(pipeline.codecs[0], blob, len(raw)) == raw


def test_nan_inf_and_negative_zero_survive():
    t = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 0.0] * 50)
    blob = choose_pipeline(t, 4).encode(_raw(t))
    assert choose_pipeline(t, 4).decode(blob, t.numel() * 4) == _raw(t)


def test_through_the_tensor_encoder_many_chunks_and_blocks(tmp_path, deltas):
    """A tensor in several chunks of several blocks each, through TensorEncoder and
    decode_tensor, with the tensor's sha256 checked."""
    db = ObjectDB(LocalStore(tmp_path / "store"))
    t = deltas["mlp.fc1.weight"]
    pipeline = CodecPipeline((BgZstd(4, 300, choose_pipeline(t, 4).codecs[0].levels),))
    with TensorEncoder(db.put, chunk_bytes=4000, workers=3) as enc:
        entry = enc.submit("w", t, "float32", pipeline).result()
    assert len(entry.chunks) > 3
    with ThreadPoolExecutor(3) as pool:
        out = decode_tensor(entry, db.get, pool, check_tensor=True)
    assert torch.equal(out.view(torch.int32), t.view(torch.int32))
    back = Manifest.from_bytes(Manifest("a" * 64, "b" * 64, (entry,)).to_bytes())
    assert back.tensors[0].codecs == pipeline
    assert torch.equal(decode_tensor(back.tensors[0], db.get), t)


# --- determinism ------------------------------------------------------------------------------


def test_same_tensor_same_pipeline_and_bytes(deltas):
    for t in deltas.values():
        a, b = choose_pipeline(t, 4), choose_pipeline(t.clone(), 4)
        assert a == b and a.specs() == b.specs()
        # rebuilt from its manifest spec, it encodes to the same bytes
        again = CodecPipeline.from_specs(a.specs())
        assert again == a and again.encode(_raw(t)) == a.encode(_raw(t))


def test_encoding_does_not_depend_on_threads(deltas):
    t = deltas["mlp.fc2.weight"]
    raw = _raw(t)
    pipeline = CodecPipeline((BgZstd(4, 256, choose_pipeline(t, 4).codecs[0].levels),))
    alone = pipeline.encode(raw)
    for workers in (1, 2, 5):
        with ThreadPoolExecutor(workers) as pool:
            assert pipeline.encode(raw, pool) == alone
            assert _decode_into(pipeline, alone, len(raw), pool) == raw


def test_registry_blobs_do_not_depend_on_workers(tmp_path, deltas):
    ids = []
    for workers in (1, 4):
        db = ObjectDB(LocalStore(tmp_path / f"store{workers}"))
        with TensorEncoder(db.put, chunk_bytes=8192, workers=workers) as enc:
            entries = [enc.submit(n, t, "float32", choose_pipeline(t, 4)).result()
                       for n, t in deltas.items()]
        ids.append([(e.codecs.specs(), [c.blob for c in e.chunks]) for e in entries])
    assert ids[0] == ids[1]


def test_create_records_the_choice(reg, zoo):
    res = reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"])
    for entry in res.manifest.tensors:
        (codec,) = entry.codecs.codecs
        assert codec.name == "bgzstd" and codec.itemsize == 4
        t = reg.get("sentiment").tensors()[entry.name]
        assert entry.codecs == choose_pipeline(t, 4)
    rows = reg.sql("SELECT DISTINCT codec FROM tensors")
    assert rows and all(r["codec"].startswith("bgzstd4:") for r in rows)
    assert reg.verify(deep=True).ok


def test_choice_follows_the_data():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 4 * 300_000, dtype=np.uint8)  # > the sample: windows
    assert choose_pipeline(noise, 4).codecs[0].levels == (None,) * 4
    zeros = np.zeros(300_000, dtype=np.float32)
    assert choose_pipeline(zeros, 4).codecs[0].levels == (1,) * 4
    mixed = noise.view(np.float32).copy()
    mixed.view(np.uint8).reshape(-1, 4)[:, 3] = 0x3C  # constant top byte
    assert choose_pipeline(mixed, 4).codecs[0].levels == (None, None, None, 1)
    assert choose_pipeline(mixed, 4, level=5).codecs[0].levels == (None, None, None, 5)
    assert choose_pipeline(b"", 8).codecs[0].levels == (1,) * 8


def _skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """A skewed byte stream with no long repeats (~2.9 bits a byte)."""
    return np.minimum(rng.geometric(0.3, n), 255).astype(np.uint8)


def _dense_delta(rng: np.random.Generator, n: int) -> np.ndarray:
    """The float32 delta of a dense layer's update: weights ~N(0, 0.05) moved by ~N(0, 3e-4),
    rounded to float32 before subtracting, so each delta is a multiple of its weight's ulp."""
    base = rng.normal(0, 0.05, n).astype(np.float32)
    return (base + rng.normal(0, 3e-4, n).astype(np.float32)) - base


def test_huffman_and_literal_tuned_streams_where_they_store_smaller():
    """Each stream gets the setting that stores its sample smallest. In a dense delta the
    lowest mantissa byte and the sign/exponent byte are skewed and match-poor: an order-0
    Huffman code ("huf"), where zstd spends bits on short matches; the middle bytes are near
    random: raw. A skewed stream with runs of zeros (like an embedding's unused rows) gets zstd
    tuned for literals ("lit"), which codes the runs as matches. The blob decodes like any
    other, bit for bit, on one thread or many, and by hand with zlib and zstandard."""
    from tvreg.codecs import huffman
    from tvreg.codecs import zstd as zstd_module

    rng = np.random.default_rng(3)
    n = 300_032
    items = _dense_delta(rng, n).view(np.uint8).reshape(n, 4)
    runs = _skewed(rng, n).reshape(-1, 64)
    runs[rng.random(n // 64) < 0.3] = 0
    items[:, 1] = runs.reshape(-1)
    chosen = choose_pipeline(items.reshape(-1), 4).codecs[0]
    assert chosen.levels == ("huf", "lit", None, "huf")
    assert chosen.label() == "bgzstd4:huf/lit/raw/huf"
    skewed, with_runs = np.ascontiguousarray(items[:, 0]), np.ascontiguousarray(items[:, 1])
    assert len(huffman.compress(skewed)) < 0.9 * min(
        len(zstd_module.compress(skewed, "lit")), len(zstd_module.compress(skewed, 1)))
    assert len(zstd_module.compress(with_runs, "lit")) < min(
        len(zstd_module.compress(with_runs, 1)), len(huffman.compress(with_runs)))
    raw = items.tobytes()
    blob = chosen.encode(raw)
    assert blob == chosen.encode(raw)  # deterministic
    assert chosen.decode(blob, len(raw)) == raw
    assert _by_hand(chosen, blob, len(raw)) == raw
    _decode_on_pool(chosen, blob, len(raw))
    with ThreadPoolExecutor(2) as pool:
        dest = np.empty(len(raw), dtype=np.uint8)
        BgZstd(4, 50_000, chosen.levels).decode_into(
            BgZstd(4, 50_000, chosen.levels).encode(raw), dest, pool)
        assert dest.tobytes() == raw
    spec = chosen.spec()
    assert spec["configuration"]["levels"] == ["huf", "lit", None, "huf"]
    assert codec_from_spec(spec) == chosen


def test_a_near_tie_with_zstd_stays_zstd():
    """Huffman coding is chosen only where it stores the sample HUFFMAN_MARGIN smaller than
    zstd: inflating is slower than zstd's decoder, so a near tie keeps zstd."""
    from tvreg.codecs import choose, huffman
    from tvreg.codecs import zstd as zstd_module

    rng = np.random.default_rng(5)
    stream = np.ascontiguousarray(_dense_delta(rng, 200_000).view(np.uint8)[::4])
    huf = len(huffman.compress(stream))
    zstd_best = min(len(zstd_module.compress(stream, 1)), len(zstd_module.compress(stream, "lit")))
    assert choose._stream_setting(stream, 1) == "huf"
    margin = 1 - huf / zstd_best
    assert margin > choose.HUFFMAN_MARGIN
    old = choose.HUFFMAN_MARGIN
    try:
        choose.HUFFMAN_MARGIN = margin + 0.001
        assert choose._stream_setting(stream, 1) in (1, "lit")
    finally:
        choose.HUFFMAN_MARGIN = old


@pytest.mark.parametrize("args, kwargs", [
    ((torch.zeros(3), 0), {}), ((torch.zeros(3), 17), {}), ((torch.zeros(3), True), {}),
    ((b"abc", 2), {}), ((torch.zeros(3), 4), {"level": 23}), ((torch.zeros(3), 4), {"level": True}),
])
def test_choose_pipeline_bad_input(args, kwargs):
    with pytest.raises(InvalidInput):
        choose_pipeline(*args, **kwargs)


def test_create_refuses_a_bad_level_before_writing(reg, zoo):
    from helpers import snapshot

    before = snapshot(reg.root)
    with pytest.raises(InvalidInput, match="level"):
        reg.create("x", zoo.base, zoo.finetuned["topic"], level=99)
    assert snapshot(reg.root) == before


# --- corrupt blobs and bad configurations -----------------------------------------------------


def _blob(k: int = 4, n: int = 2500, block: int = 1000, levels=(1, None, 1, 1)):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 3, n * k, dtype=np.uint8).tobytes()
    codec = BgZstd(k, block, levels)
    return codec, raw, codec.encode(raw)


def _decode_on_pool(codec: BgZstd, blob: bytes, nbytes: int) -> None:
    with ThreadPoolExecutor(2) as pool:
        codec.decode_into(blob, np.empty(nbytes, dtype=np.uint8), pool)


DECODERS = pytest.mark.parametrize("decode", [
    lambda c, blob, n: c.decode(blob, n),
    lambda c, blob, n: c.decode_into(blob, np.empty(n, dtype=np.uint8)),
    _decode_on_pool,
], ids=["new", "into", "pool"])


@DECODERS
def test_truncated_or_extended_blob_is_corrupt(decode):
    codec, raw, blob = _blob()
    for cut in (0, 3, 4 * 12 - 1, 4 * 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CorruptObject):
            decode(codec, blob[:cut], len(raw))
    with pytest.raises(CorruptObject):
        decode(codec, blob + b"\0", len(raw))
    with pytest.raises(CorruptObject):  # another decoded size: another block count
        decode(codec, blob, len(raw) + 4000)
    with pytest.raises(CorruptObject):  # not whole items
        decode(codec, blob, len(raw) - 1)


def _with_sizes(blob: bytes, nsegments: int, change) -> bytes:
    sizes = np.frombuffer(blob, dtype="<u4", count=nsegments).copy()
    change(sizes)
    return sizes.tobytes() + blob[4 * nsegments:]


@DECODERS
def test_lying_size_table_is_corrupt(decode):
    codec, raw, blob = _blob()  # 3 blocks x 4 streams; stream 1 raw
    sizes = np.frombuffer(blob, dtype="<u4", count=12)
    assert sizes[1] == 1000 and sizes[9] == 500  # raw streams are stored at their size
    lies = {
        "bigger than the block": lambda s: s.__setitem__(0, 1001),
        "raw stream of another size": lambda s: s.__setitem__(5, 999),
        "zero": lambda s: s.__setitem__(2, 0),
        "huge": lambda s: s.__setitem__(3, 0xFFFFFFFF),
        "shifted": lambda s: (s.__setitem__(0, s[0] - 1), s.__setitem__(2, s[2] + 1)),
    }
    for what, change in lies.items():
        with pytest.raises(CorruptObject):
            decode(codec, _with_sizes(blob, 12, change), len(raw))


@DECODERS
def test_garbled_segment_is_corrupt(decode):
    codec, raw, blob = _blob()
    sizes = np.frombuffer(blob, dtype="<u4", count=12).astype(int)
    start = 48 + sizes[:4].sum()  # block 1, stream 0: a zstd frame
    for pos in range(start, start + 6):  # its header: magic, descriptor, content size
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(CorruptObject):
            decode(codec, bytes(bad), len(raw))


def test_segment_declaring_a_huge_size_is_refused_before_inflating():
    """A small segment whose frame would inflate to 40 MB is refused from its header."""
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(40 << 20))
    assert len(bomb) < 5000
    codec = BgZstd(1, 5000, (1,))
    blob = np.array([len(bomb)], dtype="<u4").tobytes() + bomb
    with pytest.raises(CorruptObject, match="declares 41943040 bytes"):
        codec.decode(blob, 5000)


def _one_segment(segment: bytes) -> bytes:
    return np.array([len(segment)], dtype="<u4").tobytes() + segment


def _raw_deflate(data: bytes, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
    return c.compress(data) + c.flush()


def test_huffman_segment_inflating_past_its_size_is_refused():
    """A 40 MB DEFLATE bomb (back-references are valid DEFLATE) in a "huf" segment of 5000
    bytes is refused after at most 5000 bytes of output, not inflated."""
    bomb = _raw_deflate(bytes(40 << 20))
    assert len(bomb) < 50_000
    codec = BgZstd(1, 50_000, ("huf",))
    with pytest.raises(CorruptObject, match="more than 50000 bytes"):
        codec.decode(_one_segment(bomb), 50_000)
    one_more = _raw_deflate(bytes(50_001), zlib.Z_HUFFMAN_ONLY)
    with pytest.raises(CorruptObject, match="more than 50000 bytes"):
        codec.decode(_one_segment(one_more), 50_000)


@pytest.mark.parametrize("what, segment", [
    ("short", _raw_deflate(bytes(range(8)) * 320, zlib.Z_HUFFMAN_ONLY)),
    ("trailing bytes", _raw_deflate(bytes(range(8)) * 640, zlib.Z_HUFFMAN_ONLY) + b"\0"),
    ("cut", _raw_deflate(bytes(range(8)) * 640, zlib.Z_HUFFMAN_ONLY)[:-3]),
    ("not deflate", b"\xff" * 100),
    ("reserved block type", b"\x07" + bytes(99)),
])
def test_bad_huffman_segment_is_corrupt(what, segment):
    codec = BgZstd(1, 5120, ("huf",))
    with pytest.raises(CorruptObject, match="huf"):
        codec.decode(_one_segment(segment), 5120)


def test_huffman_segments_decode_with_any_inflater():
    """A "huf" segment is a plain raw DEFLATE stream: the standard library's zlib reads what
    tvreg wrote, and tvreg reads DEFLATE written with back-references too (any valid stream)."""
    data = _dense_delta(np.random.default_rng(7), 100_000).view(np.uint8)[::4].tobytes()
    codec = BgZstd(1, 100_000, ("huf",))
    blob = codec.encode(data)
    assert zlib.decompress(blob[4:], -15) == data
    assert codec.decode(_one_segment(_raw_deflate(data)), len(data)) == data


def test_zlib_and_zlib_ng_write_the_same_huffman_bytes():
    """The encoder uses zlib-ng where installed, else zlib: both must write the same bytes, so
    a tensor gets the same blob (and deduplicates) whichever a machine has."""
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    rng = np.random.default_rng(9)
    items = _dense_delta(rng, 300_000).view(np.uint8).reshape(-1, 4)
    for j in range(4):
        stream = np.ascontiguousarray(items[:, j])
        outs = []
        for mod in (zlib, zlib_ng):
            c = mod.compressobj(1, mod.DEFLATED, -15, 9, mod.Z_HUFFMAN_ONLY)
            outs.append(c.compress(stream) + c.flush())
        assert outs[0] == outs[1]
        from tvreg.codecs import huffman
        assert huffman.compress(stream) == outs[0]


@pytest.mark.parametrize("flip", range(0, 400, 7))
def test_garbled_huffman_data_is_corrupt_or_other_bytes(flip):
    """Flipping a byte of Huffman-coded data gives CorruptObject or other bytes of the same
    size, never another exception (the object layer's sha256 catches the second case)."""
    data = _dense_delta(np.random.default_rng(8), 20_000).view(np.uint8)[::4].tobytes()
    codec = BgZstd(1, 20_000, ("huf",))
    blob = bytearray(codec.encode(data))
    blob[4 + flip % (len(blob) - 4)] ^= 0x5A
    try:
        out = codec.decode(bytes(blob), len(data))
    except CorruptObject:
        return
    assert len(out) == len(data) and out != data


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(itemsize=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_any_settings_round_trip_property(itemsize, data):
    """Any mix of stream settings round-trips any bytes, deterministically, in any block size."""
    n = data.draw(st.integers(0, 400))
    payload = data.draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
    levels = tuple(data.draw(st.sampled_from([None, 1, 3, -1, "lit", "huf"]))
                   for _ in range(itemsize))
    codec = BgZstd(itemsize, data.draw(st.integers(1, 500)), levels)
    blob = codec.encode(payload)
    assert codec.encode(payload) == blob
    assert codec.decode(blob, len(payload)) == payload
    assert _by_hand(codec, blob, len(payload)) == payload


def test_errors_in_blocks_reach_the_caller_from_any_thread():
    codec, raw, blob = _blob(n=20_000, block=100)
    bad = bytearray(blob)
    sizes = np.frombuffer(blob, dtype="<u4", count=800).astype(int)
    last = 4 * 800 + sizes[:-4].sum()  # the last block's stream 0 (zstd)
    bad[last] ^= 0xFF
    with ThreadPoolExecutor(4) as pool:
        with pytest.raises(CorruptObject):
            codec.decode_into(bytes(bad), np.empty(len(raw), dtype=np.uint8), pool)


def test_run_blocks_from_inside_a_busy_pool_does_not_deadlock():
    """Every thread of the pool runs a task that itself spreads blocks over the same pool."""
    seen = []
    lock = threading.Lock()

    def task(t: int) -> None:
        def block(i: int) -> None:
            with lock:
                seen.append((t, i))
        run_blocks(50, block, pool)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(task, t) for t in range(6)]
        for f in futures:
            f.result(timeout=30)
    assert sorted(seen) == [(t, i) for t in range(6) for i in range(50)]


@pytest.mark.parametrize("conf", [
    {},
    {"itemsize": 4, "block": 1000},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, 1], "extra": 0},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, 23]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, True]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, 1.0]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, "raw"]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, "LIT"]},
    {"itemsize": 4, "block": 1000, "levels": [1, 1, 1, "lit "]},
    {"itemsize": 4, "block": 1000, "levels": "1111"},
    {"itemsize": 4, "block": 1000, "levels": {"0": 1}},
    {"itemsize": 4, "block": 0, "levels": [1, 1, 1, 1]},
    {"itemsize": 4, "block": (1 << 30) + 1, "levels": [1, 1, 1, 1]},
    {"itemsize": 4, "block": True, "levels": [1, 1, 1, 1]},
    {"itemsize": 0, "block": 1000, "levels": []},
    {"itemsize": 17, "block": 1000, "levels": [1] * 17},
    {"itemsize": "4", "block": 1000, "levels": [1, 1, 1, 1]},
], ids=repr)
def test_bad_configuration_is_a_format_error(conf):
    with pytest.raises(FormatError, match="bgzstd"):
        codec_from_spec({"name": "bgzstd", "configuration": conf})


def test_bgzstd_must_end_the_pipeline():
    bg = {"name": "bgzstd", "configuration": {"itemsize": 4, "block": 8, "levels": [1] * 4}}
    with pytest.raises(FormatError, match="last"):
        CodecPipeline.from_specs([bg, {"name": "zstd", "configuration": {"level": 3}}])
    low = {"name": "lowrank", "configuration": {"rows": 2, "cols": 2, "rank": 1, "scale": 1.0,
                                                "transpose": False}}
    assert CodecPipeline.from_specs([low, bg]).label == "lowrank1+bgzstd4:1/1/1/1"


def test_spec_and_label():
    codec = BgZstd(4, 1 << 20, [None, None, 1, 3])
    spec = codec.spec()
    assert spec == {"name": "bgzstd",
                    "configuration": {"itemsize": 4, "block": 1 << 20, "levels": [None, None, 1, 3]}}
    assert codec_from_spec(spec) == codec
    assert codec.label() == "bgzstd4:raw/raw/1/3"
    assert hash(codec) == hash(codec_from_spec(spec))
