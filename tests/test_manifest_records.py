"""Manifests, version/tag records, metadata, names and refs, and the hashes that name things."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvreg.codecs import default_pipeline
from tvreg.digest import BaseHasher, arch_fingerprint, canonical_json, sha256_hex, tensor_bytes
from tvreg.errors import FormatError, InvalidInput, InvalidName, InvalidRef
from tvreg.format.manifest import FORMAT, Chunk, Manifest, SkippedTensor, TensorEntry
from tvreg.format.records import Metadata, TagRecord, VersionRecord, parse_meta_value, seal, unseal
from tvreg.names import Ref, parse_ref, validate_name, validate_tag

H = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]


def _manifest() -> Manifest:
    p4 = default_pipeline(4)
    tensors = (
        TensorEntry("a.bias", "float32", "bfloat16", (3,), p4, (Chunk(H[2], 12, 10),), H[3]),
        TensorEntry("a.weight", "float32", "float32", (2, 4), p4,
                    (Chunk(H[4], 16, 9), Chunk(H[5], 16, 11)), H[6]),
        TensorEntry("b.empty", "float64", "float64", (0, 5), default_pipeline(8), (), H[7]),
        TensorEntry("c.scalar", "float32", "float16", (), p4, (Chunk(H[8], 4, 13),), H[9]),
    )
    return Manifest(H[0], H[1], tensors, (SkippedTensor("position_ids", "int64", (16,)),))


def _doc() -> dict:
    return _manifest().to_json()


# --- manifests --------------------------------------------------------------------------------


def test_manifest_round_trip_and_vector_id():
    m = _manifest()
    data = m.to_bytes()
    assert m.vector_id == hashlib.sha256(data).hexdigest()
    back = Manifest.from_bytes(data)
    assert back == m
    assert back.to_bytes() == data
    assert back.vector_id == m.vector_id
    assert m.n_params == 3 + 8 + 0 + 1
    assert m.raw_bytes == 12 + 32 + 0 + 4
    assert m.stored_bytes == 10 + 9 + 11 + 13
    assert m.blob_ids() == {H[2], H[4], H[5], H[8]}
    assert m.codec_label == "bytegroup4+zstd3,bytegroup8+zstd3"
    assert m.tensor("a.weight").chunks[1].blob == H[5]
    with pytest.raises(KeyError):
        m.tensor("nope")


def test_manifest_bytes_are_canonical():
    data = _manifest().to_bytes()
    text = data.decode("ascii")
    assert " " not in text and "\n" not in text
    assert json.loads(text)["format"] == FORMAT
    assert data == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode()


def test_canonical_json_independent_of_insertion_order():
    doc = _doc()

    def reverse(obj):
        if isinstance(obj, dict):
            return {k: reverse(obj[k]) for k in reversed(list(obj))}
        if isinstance(obj, list):
            return [reverse(v) for v in obj]
        return obj

    shuffled = reverse(doc)
    assert list(shuffled) != list(doc)
    assert canonical_json(shuffled) == canonical_json(doc)
    assert Manifest.from_json(shuffled).vector_id == _manifest().vector_id
    # a re-serialized manifest from JSON text with spaces and other key order names the same vector
    loose = json.dumps(shuffled, indent=3).encode()
    assert Manifest.from_bytes(loose).vector_id == _manifest().vector_id


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_metadata_is_not_part_of_the_vector_id():
    m = _manifest()
    # nothing about names, tasks or times appears in the manifest
    assert set(m.to_json()) == {"format", "base_hash", "arch_fingerprint", "tensors", "skipped"}


def _mutations():
    def tensor0(d):
        return d["tensors"][0]

    def m(fn):
        return fn

    yield "format", m(lambda d: d.update(format="tvreg.manifest/2"))
    yield "no-format", m(lambda d: d.pop("format"))
    yield "extra-key", m(lambda d: d.update(name="x"))
    yield "missing-skipped", m(lambda d: d.pop("skipped"))
    yield "missing-tensors", m(lambda d: d.pop("tensors"))
    yield "tensor-extra-key", m(lambda d: tensor0(d).update(extra=1))
    yield "tensor-missing-sha", m(lambda d: tensor0(d).pop("sha256"))
    yield "chunk-extra-key", m(lambda d: tensor0(d)["chunks"][0].update(x=1))
    yield "skipped-extra-key", m(lambda d: d["skipped"][0].update(x=1))
    yield "unsorted", m(lambda d: d["tensors"].reverse())
    yield "duplicate", m(lambda d: d["tensors"].insert(0, copy.deepcopy(tensor0(d))))
    yield "base-hash-upper", m(lambda d: d.update(base_hash=H[0].upper()))
    yield "base-hash-short", m(lambda d: d.update(base_hash=H[0][:63]))
    yield "arch-not-hex", m(lambda d: d.update(arch_fingerprint="z" * 64))
    yield "sha-not-hex", m(lambda d: tensor0(d).update(sha256="x" * 64))
    yield "blob-not-hex", m(lambda d: tensor0(d)["chunks"][0].update(blob="../" + "0" * 61))
    yield "negative-shape", m(lambda d: tensor0(d).update(shape=[-3]))
    yield "float-shape", m(lambda d: tensor0(d).update(shape=[3.0]))
    yield "bool-shape", m(lambda d: tensor0(d).update(shape=[True, 3]))
    yield "shape-not-list", m(lambda d: tensor0(d).update(shape=3))
    yield "chunks-short", m(lambda d: tensor0(d)["chunks"][0].update(nbytes=8))
    yield "chunks-long", m(lambda d: tensor0(d)["chunks"][0].update(nbytes=16))
    yield "chunks-missing", m(lambda d: tensor0(d).update(chunks=[]))
    yield "shape-vs-chunks", m(lambda d: tensor0(d).update(shape=[4]))
    yield "chunk-zero", m(lambda d: d["tensors"][1]["chunks"][0].update(nbytes=0))
    yield "chunk-unaligned", m(lambda d: d["tensors"][1]["chunks"][0].update(nbytes=15) or
                               d["tensors"][1]["chunks"][1].update(nbytes=17))
    yield "stored-zero", m(lambda d: tensor0(d)["chunks"][0].update(stored_nbytes=0))
    yield "dtype-unknown", m(lambda d: tensor0(d).update(dtype="float7"))
    yield "source-dtype-unknown", m(lambda d: tensor0(d).update(source_dtype=None))
    yield "codec-unknown", m(lambda d: tensor0(d).update(codecs=[{"name": "lz4", "configuration": {}}]))
    yield "codecs-empty", m(lambda d: tensor0(d).update(codecs=[]))
    yield "name-empty", m(lambda d: tensor0(d).update(name=""))
    yield "name-not-str", m(lambda d: tensor0(d).update(name=5))
    yield "tensors-not-list", m(lambda d: d.update(tensors={}))
    yield "skipped-dtype", m(lambda d: d["skipped"][0].update(dtype="int3"))


@pytest.mark.parametrize("label,mutate", list(_mutations()), ids=[n for n, _ in _mutations()])
def test_manifest_from_json_rejects(label, mutate):
    doc = _doc()
    Manifest.from_json(copy.deepcopy(doc))  # the unmutated document is fine
    mutate(doc)
    with pytest.raises(FormatError):
        Manifest.from_json(doc)
    with pytest.raises(FormatError):
        Manifest.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"null", b"\xff\xfe\x00", b'{"format"'])
def test_manifest_from_bytes_rejects_garbage(data):
    with pytest.raises(FormatError):
        Manifest.from_bytes(data)


# --- records ----------------------------------------------------------------------------------


def _record(**kw) -> VersionRecord:
    md = Metadata(task="sentiment", dataset="sst2 \u00e9t\u00e9", lr=2e-5, steps=100,
                  meta={"seed": 3, "note": "ok", "flag": True, "none": None, "ratio": 0.25})
    args = dict(name="org/model-x.v2", version=3, vector_id=H[10], base_hash=H[11],
                arch_fingerprint=H[12], metadata=md, created_at="2024-05-01T12:00:00.000001Z")
    args.update(kw)
    return VersionRecord(**args)


def _tag() -> TagRecord:
    return TagRecord("org/model-x.v2", "prod", 3, H[10], "2024-05-02T00:00:00.000000Z")


def test_version_record_round_trip():
    r = _record()
    data = r.to_bytes()
    assert VersionRecord.from_bytes(data) == r
    assert r.ref == "org/model-x.v2@3"
    assert r.key == "refs/org/model-x.v2/3.json"
    composed = _record(parents=(H[13], H[14]), recipe={"method": "ties", "density": 0.2})
    assert VersionRecord.from_bytes(composed.to_bytes()) == composed
    assert r.same_content(_record(created_at="2030-01-01T00:00:00.000000Z"))
    assert not r.same_content(_record(vector_id=H[15]))
    assert not r.same_content(_record(metadata=Metadata(task="sentiment")))


def test_tag_record_round_trip():
    t = _tag()
    assert TagRecord.from_bytes(t.to_bytes()) == t
    assert t.key == "tags/org/model-x.v2/prod.json"


def test_seal_unseal():
    doc = {"b": 1, "a": [1, 2, {"z": None}]}
    sealed = seal(doc)
    assert unseal(sealed, "doc") == doc
    body = json.loads(sealed)
    assert body["checksum"] == sha256_hex(canonical_json(doc))
    body["b"] = 2
    with pytest.raises(FormatError, match="checksum"):
        unseal(json.dumps(body).encode(), "doc")
    with pytest.raises(FormatError):
        unseal(json.dumps(doc).encode(), "doc")  # no checksum at all


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80, 0xFF])
@pytest.mark.parametrize("kind", ["version", "tag"])
def test_every_flipped_byte_is_detected(kind, mask):
    """Whatever byte of a sealed record flips, reading it fails with FormatError: the checksum
    catches a changed value, and the canonical-bytes check (format §8.1) the flips that JSON
    reads the same way (``\\u00e9`` -> ``\\u00E9``, ``1e-05`` -> ``1E-05``)."""
    original = _record() if kind == "version" else _tag()
    cls = type(original)
    data = original.to_bytes()
    assert cls.from_bytes(data) == original
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        with pytest.raises(FormatError):
            cls.from_bytes(bytes(bad))


def test_record_equal_after_parsing_but_not_canonical_is_refused():
    """Bytes that parse to the very same record (so its checksum matches) but are not the
    canonical encoding are damage too."""
    data = _record().to_bytes()
    assert b"e-05" in data and b"\\u00e9" in data  # the record has both forms
    for bad in (data.replace(b"e-05", b"E-05"), data.replace(b"\\u00e9", b"\\u00E9"),
                data.replace(b'","', b'", "', 1), data + b"\n"):
        assert json.loads(bad) == json.loads(data)
        with pytest.raises(FormatError, match="not in canonical form"):
            VersionRecord.from_bytes(bad)


def test_record_structural_errors():
    def reseal(mutate) -> bytes:
        doc = _record().to_json()
        mutate(doc)
        return seal(doc)

    bad = [
        lambda d: d.update(format="tvreg.version/2"),
        lambda d: d.update(version=0),
        lambda d: d.update(version=True),
        lambda d: d.update(version="3"),
        lambda d: d.update(name="Bad Name"),
        lambda d: d.update(vector_id="abc"),
        lambda d: d.update(parents=["x"]),
        lambda d: d.update(recipe=[1]),
        lambda d: d.update(created_at=5),
        lambda d: d.pop("recipe"),
        lambda d: d.update(extra=1),
        lambda d: d["metadata"].update(lr=-1.0),
        lambda d: d["metadata"].update(steps=1.5),
        lambda d: d["metadata"].pop("task"),
        lambda d: d["metadata"]["meta"].update({"bad key": 1}),
    ]
    VersionRecord.from_bytes(reseal(lambda d: None))
    for i, mutate in enumerate(bad):
        with pytest.raises(FormatError):
            VersionRecord.from_bytes(reseal(mutate))
    for data in (b"", b"[]", b"{}", b"\xff"):
        with pytest.raises(FormatError):
            VersionRecord.from_bytes(data)
        with pytest.raises(FormatError):
            TagRecord.from_bytes(data)
    tag = _tag().to_json()
    tag["tag"] = "Prod"
    with pytest.raises(FormatError):
        TagRecord.from_bytes(seal(tag))


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_accepts_and_normalizes():
    md = Metadata(task="t", dataset="d", lr=1, steps=0, meta={"a": 1, "b.c-d_e": "x", "_f": None})
    assert md.lr == 1.0 and isinstance(md.lr, float)
    assert Metadata(lr=0).lr == 0.0
    assert Metadata().to_json() == {"task": None, "dataset": None, "lr": None, "steps": None,
                                    "meta": {}}
    assert Metadata.from_json(md.to_json()) == md


@pytest.mark.parametrize("kwargs", [
    {"lr": -1e-5},
    {"lr": float("nan")},
    {"lr": float("inf")},
    {"lr": True},
    {"lr": "0.1"},
    {"steps": True},
    {"steps": -1},
    {"steps": 1.0},
    {"steps": "10"},
    {"task": ""},
    {"task": 5},
    {"task": "a\nb"},
    {"dataset": "x" * 257},
    {"meta": {"": 1}},
    {"meta": {"1abc": 1}},
    {"meta": {"a b": 1}},
    {"meta": {"k" * 65: 1}},
    {"meta": {5: 1}},
    {"meta": {"k": [1, 2]}},
    {"meta": {"k": {"a": 1}}},
    {"meta": {"k": float("nan")}},
    {"meta": {"k": float("-inf")}},
    {"meta": {"k": "v" * 4097}},
    {"meta": {f"k{i}": i for i in range(257)}},
    {"meta": [("k", 1)]},
], ids=repr)
def test_metadata_validation(kwargs):
    with pytest.raises(InvalidInput):
        Metadata(**kwargs)


@pytest.mark.parametrize("text,value", [
    ("3", 3), ("-2", -2), ("1e-4", 1e-4), ("0.5", 0.5), ("true", True), ("false", False),
    ("null", None), ('"quoted"', "quoted"), ("plain", "plain"), ("", ""), ("[1,2]", "[1,2]"),
    ('{"a":1}', '{"a":1}'), ("NaN", "NaN"), ("Infinity", "Infinity"), ("1e999", "1e999"),
    ("sst2", "sst2"), ("a=b", "a=b"),
])
def test_parse_meta_value(text, value):
    got = parse_meta_value(text)
    assert got == value and type(got) is type(value)
    Metadata(meta={"k": got})  # whatever it returns is a valid meta value


# --- names and refs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "org/model-x.v2", "a_b", "a.b", "x" * 128,
                                  "a/b/c", "sentiment", "a.jsonx", "json"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["A", "aB", "-a", "_a", ".a", "a/../b", "a/./b", "..", "a//b",
                                  "a/", "/a", "x.json", "a/x.json", "x" * 129, "a\0b", "a b",
                                  " a", "a@b", "", "é", "a\\b", "a/.hidden"], ids=repr)
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        validate_name(name)
    assert issubclass(InvalidName, InvalidInput)


def test_tags():
    for tag in ("prod", "v1", "a.b-c_d", "x" * 64):
        assert validate_tag(tag) == tag
    for tag in ("Prod", "1", "1a", "", "-x", "x" * 65, "a/b", "a b"):
        with pytest.raises(InvalidName):
            validate_tag(tag)


@pytest.mark.parametrize("text,expected", [
    ("name", Ref("name", "name")),
    ("org/m-x.v2", Ref("org/m-x.v2", "org/m-x.v2")),
    ("name@3", Ref("name@3", "name", version=3)),
    ("name@12", Ref("name@12", "name", version=12)),
    ("name@prod", Ref("name@prod", "name", tag="prod")),
    ("deadbeef", Ref("deadbeef", "deadbeef", id_prefix="deadbeef")),
    ("0123456789", Ref("0123456789", "0123456789", id_prefix="0123456789")),
    ("abcde", Ref("abcde", "abcde")),  # too short to be an id prefix: only a name
    (H[0], Ref(H[0], H[0], id_prefix=H[0])),
])
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["name@0", "name@", "@x", "@3", "name@Prod", "name@-1",
                                  "name@1.5", "Name", "name@3@4", "a//b@1", "", "name@³",
                                  "x.json@1", "DEADBEEF", "a" * 129, "name@" + "x" * 65], ids=repr)
def test_parse_ref_rejects(text):
    with pytest.raises(InvalidRef):
        parse_ref(text)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=200) | st.from_regex(r"[a-z0-9/._-]{0,20}(@[a-zA-Z0-9._-]{0,10})?",
                                             fullmatch=True))
def test_parse_ref_on_arbitrary_text(text):
    try:
        ref = parse_ref(text)
    except InvalidRef:
        return
    assert isinstance(ref, Ref) and ref.text == text
    assert ref.name is not None or ref.id_prefix is not None
    assert not (ref.version is not None and ref.tag is not None)
    if ref.name is not None:
        validate_name(ref.name)
    if ref.version is not None:
        assert ref.version >= 1
    if ref.tag is not None:
        validate_tag(ref.tag)


# --- digest -----------------------------------------------------------------------------------


def test_base_hasher_requires_increasing_names():
    h = BaseHasher()
    h.update("a", "float32", [1], b"\0\0\0\0")
    h.update("b", "float32", [1], b"\0\0\0\0")
    with pytest.raises(ValueError):
        h.update("b", "float32", [1], b"\0\0\0\0")
    h2 = BaseHasher()
    h2.update("b", "float32", [1], b"\0\0\0\0")
    with pytest.raises(ValueError):
        h2.update("a", "float32", [1], b"\0\0\0\0")


def test_base_hasher_follows_its_documented_encoding():
    import struct

    h = BaseHasher()
    h.update("w", "float16", (2,), b"\x01\x02\x03\x04")
    header = b'["w","float16",[2]]'
    expected = hashlib.sha256(struct.pack("<Q", len(header)) + header
                              + struct.pack("<Q", 4) + b"\x01\x02\x03\x04").hexdigest()
    assert h.hexdigest() == expected


def test_base_hasher_is_unambiguous():
    """Moving bytes between a tensor's header and data, or between tensors, changes the hash."""
    def digest(items):
        h = BaseHasher()
        for item in items:
            h.update(*item)
        return h.hexdigest()

    a = digest([("a", "float32", [2], b"\0" * 8), ("b", "float32", [1], b"\1" * 4)])
    b = digest([("a", "float32", [3], b"\0" * 8 + b"\1" * 4)])
    c = digest([("a", "float32", [2], b"\0" * 8), ("b", "float32", [1], b"\1" * 3 + b"\2")])
    d = digest([("a", "float32", [2], b"\0" * 8), ("b", "bfloat16", [2], b"\1" * 4)])
    assert len({a, b, c, d}) == 4


def test_arch_fingerprint():
    infos = [("w", "float32", (4, 3)), ("b", "float32", (4,)), ("pos", "int64", (16,))]
    fp = arch_fingerprint(infos)
    assert fp == arch_fingerprint(list(reversed(infos)))
    assert fp == arch_fingerprint([(n, d, list(s)) for n, d, s in infos])
    changed_shape = [("w", "float32", (3, 4))] + infos[1:]
    changed_dtype = [("w", "bfloat16", (4, 3))] + infos[1:]
    renamed = [("w2", "float32", (4, 3))] + infos[1:]
    dropped = infos[:2]
    others = {arch_fingerprint(x) for x in (changed_shape, changed_dtype, renamed, dropped)}
    assert len(others) == 4 and fp not in others
    # the documented rule: sha256 of the canonical JSON list of [name, shape, dtype], sorted
    rows = sorted([n, list(s), d] for n, d, s in infos)
    assert fp == hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def test_tensor_bytes_little_endian_c_order():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    assert bytes(tensor_bytes(t)) == t.contiguous().numpy().tobytes()
    bf = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert bytes(tensor_bytes(bf)) == bytes([0x80, 0x3F, 0x00, 0xC0])
    assert bytes(tensor_bytes(torch.empty(0, 3))) == b""
    assert bytes(tensor_bytes(torch.tensor(1.0))) == b"\x00\x00\x80\x3f"
