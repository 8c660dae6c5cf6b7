"""The JSON Schemas in schema/json/ (shipped as tvreg.schema/json) against real registry documents.

Every manifest, version record, tag and config.json of a registry built from the toy zoo must
validate; broken documents (extra key, bad hex, bad name, ...) must not. Where the code's own
parser is meant to reject the same thing, that is checked too, so schema and code stay in step.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import pathlib

import jsonschema
import pytest

import tvreg
from tvreg.errors import FormatError
from tvreg.format.manifest import Manifest
from tvreg.format.records import TagRecord, VersionRecord, seal

NAMES = ("manifest", "version", "tag", "config")


def load_schema(name: str) -> dict:
    path = importlib.resources.files("tvreg.schema") / "json" / f"{name}.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    out = {}
    for name in NAMES:
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema)
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory, zoo, zoo_bf16):
    """Real documents, read from disk: a registry with fp32 and bf16 vectors, a nested name,
    metadata of every kind, a version that deduplicates to an existing vector, and tags (one
    moved)."""
    with tvreg.open(tmp_path_factory.mktemp("schema-registry")) as reg:
        for task, path in zoo.finetuned.items():
            reg.create(task, zoo.base, path, **zoo.meta[task])
        return _fill(reg, zoo, zoo_bf16)


def _fill(reg, zoo, zoo_bf16) -> dict[str, list[dict]]:
    reg.create("team/sentiment-bf16", zoo_bf16.base, zoo_bf16.finetuned["sentiment"],
               task="sentiment", dataset="toy-sentiment", lr=1e-5, steps=20,
               meta={"seed": 0, "note": "bf16 run", "warmup": 0.1, "frozen": False, "parent": None})
    reg.create("topic", zoo.base, zoo.finetuned["toxicity"])   # topic@2 = toxicity@1's vector
    reg.create("exact", zoo.base, zoo.finetuned["sentiment"], exact=True, similarities=False)
    reg.tag("sentiment@1", "prod")
    reg.add_remote("origin", "s3://team-bucket/vectors", {"endpoint_url": "http://127.0.0.1:9"})
    reg.set_similarity_exact_limit(64)
    reg.tag("topic@1", "prod")
    reg.tag("topic@2", "prod")
    reg.tag("team/sentiment-bf16", "staging")
    reg.save_composition("multi", reg.resolve("0.5*sentiment + topic@1", method="ties",
                                              density=0.3, trim="global", lam=0.8))
    reg.save_composition("no-embed", reg.resolve("topic@2", exclude=r"^embed\."), task="t")
    root = pathlib.Path(reg.root)
    read = lambda path: json.loads(path.read_bytes())  # noqa: E731
    records = [read(p) for p in sorted((root / "refs").rglob("*.json"))]
    tags = [read(p) for p in sorted((root / "tags").rglob("*.json"))]
    # objects/ab/cdef...: the manifests are the objects the version records name (a blob's
    # first byte may happen to be "{")
    # (and the stored bases' manifests, which base records name)
    ids = {r["vector_id"] for r in records} | \
        {read(p)["manifest"] for p in (root / "bases").glob("*.json")}
    manifests = [read(root / "objects" / v[:2] / v[2:]) for v in sorted(ids)]
    config = read(root / "config.json")
    return {"manifest": manifests, "version": records, "tag": tags, "config": [config]}


def _errors(validator, doc) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


# --- real documents validate --------------------------------------------------------------------


def test_schemas_load_from_package_and_are_valid(validators):
    assert set(validators) == set(NAMES)
    for name in NAMES:
        assert load_schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("kind", NAMES)
def test_real_documents_validate(validators, docs, kind):
    assert docs[kind], f"no {kind} documents found"
    for doc in docs[kind]:
        assert _errors(validators[kind], doc) == [], doc


def test_real_documents_cover_the_interesting_cases(docs):
    assert len(docs["version"]) == 8 and len(docs["tag"]) == 3
    # the vectors' manifests, and the stored base's (create --exact stores the base)
    assert len(docs["manifest"]) == len({r["vector_id"] for r in docs["version"]}) + 1 == 8
    assert any(t["codecs"][0]["name"] == "bitdiff" for m in docs["manifest"] for t in m["tensors"])
    assert sum(r["recipe"] is not None for r in docs["version"]) == 2
    assert {t["source_dtype"] for m in docs["manifest"] for t in m["tensors"]} == \
        {"float32", "bfloat16", "int64"}  # int64: a buffer of the stored base
    assert any(m["skipped"] for m in docs["manifest"])
    assert any("/" in r["name"] for r in docs["version"])
    assert any(r["metadata"]["meta"] for r in docs["version"])
    assert any(r["metadata"]["task"] is None for r in docs["version"])


# --- broken documents are rejected ---------------------------------------------------------------

BAD_HEX = ["ABCDEF" + "0" * 58, "0" * 63, "0" * 65, "g" * 64, ""]


def _first(docs, kind, pred=lambda d: True) -> dict:
    return copy.deepcopy(next(d for d in docs[kind] if pred(d)))


def _manifest_cases(m: dict) -> dict:
    cases = {}

    def case(label, fn):
        doc = copy.deepcopy(m)
        fn(doc)
        cases[label] = doc

    case("extra top-level key", lambda d: d.update(name="x"))
    case("missing skipped", lambda d: d.pop("skipped"))
    case("unknown format", lambda d: d.update(format="tvreg.manifest/2"))
    case("extra key in tensor", lambda d: d["tensors"][0].update(extra=1))
    case("extra key in chunk", lambda d: d["tensors"][0]["chunks"][0].update(crc=1))
    case("extra key in codec", lambda d: d["tensors"][0]["codecs"][0].update(id="x"))
    case("unknown codec", lambda d: d["tensors"][0]["codecs"].__setitem__(
        0, {"name": "gzip", "configuration": {"level": 1}}))
    case("zstd level out of range", lambda d: d["tensors"][0]["codecs"][-1].update(
        configuration={"level": 99}))
    case("no codecs", lambda d: d["tensors"][0].update(codecs=[]))
    case("unknown dtype", lambda d: d["tensors"][0].update(dtype="float13"))
    case("negative dimension", lambda d: d["tensors"][0].update(shape=[-1]))
    case("empty tensor name", lambda d: d["tensors"][0].update(name=""))
    case("zero-size chunk", lambda d: d["tensors"][0]["chunks"][0].update(nbytes=0))
    case("boolean size", lambda d: d["tensors"][0]["chunks"][0].update(stored_nbytes=True))
    for i, bad in enumerate(BAD_HEX):
        case(f"bad base_hash {i}", lambda d, bad=bad: d.update(base_hash=bad))
        case(f"bad blob id {i}", lambda d, bad=bad: d["tensors"][0]["chunks"][0].update(blob=bad))
        case(f"bad tensor sha256 {i}", lambda d, bad=bad: d["tensors"][0].update(sha256=bad))
    return cases


def test_broken_manifests_are_rejected(validators, docs):
    m = _first(docs, "manifest", lambda d: d["skipped"])
    for label, doc in _manifest_cases(m).items():
        assert _errors(validators["manifest"], doc), f"schema accepted a manifest with {label}"
        with pytest.raises(FormatError):
            Manifest.from_json(doc)


def _record_cases(r: dict) -> tuple[dict, dict]:
    """(cases the code rejects too, cases only the schema rejects)."""
    both, schema_only = {}, {}

    def case(label, fn, target=both):
        doc = copy.deepcopy(r)
        doc.pop("checksum")
        fn(doc)
        target[label] = json.loads(seal(doc))  # a valid checksum: only the content is wrong

    case("extra top-level key", lambda d: d.update(tags=[]))
    case("missing recipe", lambda d: d.pop("recipe"))
    case("unknown format", lambda d: d.update(format="tvreg.version/2"))
    case("extra metadata key", lambda d: d["metadata"].update(seed=0))
    case("uppercase name", lambda d: d.update(name="Sentiment"))
    case("name component ending in .json", lambda d: d.update(name="a.json/b"))
    case("name with empty component", lambda d: d.update(name="a//b"))
    case("name starting with a dot", lambda d: d.update(name=".hidden"))
    case("name too long", lambda d: d.update(name="a" * 129))
    case("version 0", lambda d: d.update(version=0))
    case("version as string", lambda d: d.update(version="1"))
    case("negative lr", lambda d: d["metadata"].update(lr=-1.0))
    case("boolean steps", lambda d: d["metadata"].update(steps=True))
    case("empty task", lambda d: d["metadata"].update(task=""))
    case("meta key starting with a digit", lambda d: d["metadata"]["meta"].update({"1x": 1}))
    case("meta value a list", lambda d: d["metadata"]["meta"].update(xs=[1, 2]))
    case("meta value too long", lambda d: d["metadata"]["meta"].update(s="x" * 4097))
    case("recipe a list", lambda d: d.update(recipe=[]))
    case("created_at not a string", lambda d: d.update(created_at=0))
    case("created_at without microseconds", lambda d: d.update(created_at="2026-01-01T00:00:00Z"),
         schema_only)
    case("task with a control character", lambda d: d["metadata"].update(task="a\nb"))
    for i, bad in enumerate(BAD_HEX):
        case(f"bad vector_id {i}", lambda d, bad=bad: d.update(vector_id=bad))
        case(f"bad parent {i}", lambda d, bad=bad: d.update(parents=[bad]))
    return both, schema_only


def test_broken_version_records_are_rejected(validators, docs):
    r = _first(docs, "version", lambda d: d["metadata"]["meta"])
    both, schema_only = _record_cases(r)
    for label, doc in {**both, **schema_only}.items():
        assert _errors(validators["version"], doc), f"schema accepted a record with {label}"
    for label, doc in both.items():
        with pytest.raises(FormatError):
            VersionRecord.from_bytes(seal(doc), label)


def test_checksum_must_be_hex(validators, docs):
    r = _first(docs, "version")
    for bad in BAD_HEX:
        assert _errors(validators["version"], {**r, "checksum": bad})
    t = _first(docs, "tag")
    for bad in BAD_HEX:
        assert _errors(validators["tag"], {**t, "checksum": bad})


def test_broken_tags_are_rejected(validators, docs):
    t = _first(docs, "tag")
    cases = {
        "extra key": {**t, "previous": 1},
        "missing updated_at": {k: v for k, v in t.items() if k != "updated_at"},
        "unknown format": {**t, "format": "tvreg.tag/2"},
        "tag starting with a digit": {**t, "tag": "1prod"},
        "uppercase tag": {**t, "tag": "Prod"},
        "tag too long": {**t, "tag": "p" * 65},
        "bad name": {**t, "name": "a/../b"},
        "version 0": {**t, "version": 0},
        **{f"bad vector_id {i}": {**t, "vector_id": bad} for i, bad in enumerate(BAD_HEX)},
    }
    for label, doc in cases.items():
        assert _errors(validators["tag"], doc), f"schema accepted a tag with {label}"
        body = {k: v for k, v in doc.items() if k != "checksum"}
        with pytest.raises(FormatError):
            TagRecord.from_bytes(seal(body), label)


def test_broken_configs_are_rejected(validators, docs):
    c = docs["config"][0]
    cases = {
        "extra key": {**c, "compression": "zstd"},
        "unknown format": {**c, "format": "tvreg.registry/2"},
        "missing remotes": {"format": c["format"]},
        "remotes a list": {**c, "remotes": []},
        "remote without url": {**c, "remotes": {"origin": {}}},
        "remote with extra key": {**c, "remotes": {"origin": {"url": "s3://b/r", "x": 1}}},
        "option not a scalar": {**c, "remotes": {"o": {"url": "s3://b/r", "options": {"a": []}}}},
        "negative exact limit": {**c, "similarity": {"exact_limit": -1}},
        "exact limit not an integer": {**c, "similarity": {"exact_limit": 2.5}},
        "unknown similarity key": {**c, "similarity": {"exact_limit": 3, "x": 1}},
    }
    assert c["similarity"] == {"exact_limit": 64} and c["remotes"]["origin"]["options"]
    for label, doc in cases.items():
        assert _errors(validators["config"], doc), f"schema accepted a config with {label}"
    assert _errors(validators["config"], {**c, "remotes": {"origin": {"url": "s3://b/r"}}}) == []
