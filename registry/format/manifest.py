"""Manifests: the canonical JSON description of a task vector's content.

The sha256 of a manifest's canonical bytes is the vector id. Labels (name, task, …) live in
version records, not here, so equal content has one id whatever it is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tvreg import dtypes
from tvreg.codecs import CodecPipeline
from tvreg.codecs.bitdiff import BitDiff
from tvreg.digest import canonical_json, is_hex_digest, parse_json, sha256_hex
from tvreg.errors import FormatError

FORMAT = "tvreg.manifest/1"
#: the largest size (a dimension, a tensor's elements or bytes, a vector's total) a manifest may
#: state: a signed 64-bit integer, what the catalog, torch and numpy can hold
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: its blob (the sha256 of the encoded bytes) and sizes."""

    blob: str           # object id of the stored (encoded) bytes
    nbytes: int         # decoded size
    stored_nbytes: int  # encoded size (the blob's length)

    def to_json(self) -> dict[str, Any]:
        return {"blob": self.blob, "nbytes": self.nbytes, "stored_nbytes": self.stored_nbytes}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a manifest: name, dtypes, shape, the sha256 of its raw bytes, its codec
    pipeline and its chunks (docs/format.md §7)."""

    name: str
    dtype: str                  # dtype of the stored delta
    source_dtype: str           # dtype in the base checkpoint (what an applied tensor is cast to)
    shape: tuple[int, ...]
    codecs: CodecPipeline
    chunks: tuple[Chunk, ...]
    sha256: str                 # of the decoded raw bytes of the whole tensor
    #: dtype in the fine-tuned checkpoint where it differs from ``source_dtype`` (an fp32 base
    #: with a bf16 fine-tune), else None (and the key is left out of the JSON)
    finetuned_dtype: str | None = None

    @property
    def ft_dtype(self) -> str:
        """dtype of the tensor in the fine-tuned checkpoint (``source_dtype`` unless recorded)."""
        return self.finetuned_dtype or self.source_dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)

    @property
    def stored_nbytes(self) -> int:
        return sum(c.stored_nbytes for c in self.chunks)

    def to_json(self) -> dict[str, Any]:
        doc = {"name": self.name, "dtype": self.dtype, "source_dtype": self.source_dtype,
               "shape": list(self.shape), "codecs": self.codecs.specs(),
               "chunks": [c.to_json() for c in self.chunks], "sha256": self.sha256}
        if self.finetuned_dtype is not None:  # absent when equal: same-dtype ids unchanged
            doc["finetuned_dtype"] = self.finetuned_dtype
        return doc


@dataclass(frozen=True)
class SkippedTensor:
    """A tensor of the checkpoints that is not part of the vector (non-floating), with its dtype
    and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Manifest:
    """A vector's (or a stored base's) manifest ``tvreg.manifest/1``: its base hash, architecture
    fingerprint, tensors and skipped tensors; its id is the sha256 of its canonical JSON."""

    base_hash: str
    arch_fingerprint: str
    tensors: tuple[TensorEntry, ...]
    skipped: tuple[SkippedTensor, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "base_hash": self.base_hash,
                "arch_fingerprint": self.arch_fingerprint,
                "tensors": [t.to_json() for t in self.tensors],
                "skipped": [s.to_json() for s in self.skipped]}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def vector_id(self) -> str:
        return sha256_hex(self.to_bytes())

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def raw_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_nbytes for t in self.tensors)

    @property
    def exact(self) -> bool:
        """Whether the vector is stored in exact mode (read with its base, §5.7)."""
        return any(t.codecs.codecs[0].name == "bitdiff" for t in self.tensors)

    @property
    def codec_label(self) -> str:
        labels = sorted({t.codecs.label for t in self.tensors})
        return ",".join(labels) if labels else ""

    @property
    def dtype_label(self) -> str:
        """The dtypes of the vector's checkpoints: ``float32``, or ``bfloat16 fine-tune of
        float32`` where the fine-tuned checkpoint's dtypes were not the base's."""
        source = ",".join(sorted({t.source_dtype for t in self.tensors})) or "none"
        tuned = ",".join(sorted({t.ft_dtype for t in self.tensors})) or "none"
        return source if tuned == source else f"{tuned} fine-tune of {source}"

    def blob_ids(self) -> set[str]:
        return {c.blob for t in self.tensors for c in t.chunks}

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            doc = parse_json(data)
        except ValueError as e:
            raise FormatError(f"manifest is not JSON: {e}") from None
        return cls.from_json(doc)

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        _expect(isinstance(doc, dict), "manifest is not a JSON object")
        _expect(doc.get("format") == FORMAT, f"unsupported manifest format {doc.get('format')!r}")
        _keys(doc, {"format", "base_hash", "arch_fingerprint", "tensors", "skipped"}, "manifest")
        for k in ("base_hash", "arch_fingerprint"):
            _expect(isinstance(doc[k], str) and is_hex_digest(doc[k]), f"manifest: bad {k}")
        _expect(isinstance(doc["tensors"], list), "manifest: tensors is not a list")
        _expect(isinstance(doc["skipped"], list), "manifest: skipped is not a list")
        tensors = tuple(_tensor(t) for t in doc["tensors"])
        skipped = tuple(_skipped(s) for s in doc["skipped"])
        names = [t.name for t in tensors]
        _expect(names == sorted(set(names)), "manifest: tensor names not sorted and unique")
        for t in tensors:
            _check_exact(t, doc["base_hash"])
        manifest = cls(doc["base_hash"], doc["arch_fingerprint"], tensors, skipped)
        _expect(max(manifest.raw_bytes, manifest.stored_bytes) <= MAX_SIZE,
                f"manifest: sizes add up to more than {MAX_SIZE} bytes")
        return manifest


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(message)


def _keys(obj: dict, expected: set[str], what: str) -> None:
    _expect(set(obj) == expected, f"{what}: expected keys {sorted(expected)}, got {sorted(obj)}")


def _shape(value: Any, what: str) -> tuple[int, ...]:
    _expect(isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                            and 0 <= d <= MAX_SIZE for d in value)
            and _fits(value), f"{what}: bad shape")
    return tuple(value)


def _fits(shape: list[int]) -> bool:
    """Whether ``prod(shape) <= MAX_SIZE``, without multiplying out a hostile shape's bigints."""
    if 0 in shape:
        return True
    n = 1
    for d in shape:
        n *= d
        if n > MAX_SIZE:
            return False
    return True


def _dtype(value: Any, what: str) -> str:
    _expect(isinstance(value, str), f"{what}: bad dtype")
    dtypes.check(value)
    return value


def _tensor(doc: Any) -> TensorEntry:
    _expect(isinstance(doc, dict), "manifest: tensor entry is not an object")
    keys = {"name", "dtype", "source_dtype", "shape", "codecs", "chunks", "sha256"}
    _keys(doc, keys | ({"finetuned_dtype"} & set(doc)), "manifest tensor")
    name = doc["name"]
    _expect(isinstance(name, str) and name != "", "manifest: bad tensor name")
    what = f"manifest tensor {name!r}"
    _expect(isinstance(doc["sha256"], str) and is_hex_digest(doc["sha256"]), f"{what}: bad sha256")
    _expect(isinstance(doc["chunks"], list), f"{what}: chunks is not a list")
    chunks = []
    for c in doc["chunks"]:
        _expect(isinstance(c, dict), f"{what}: bad chunk")
        _keys(c, {"blob", "nbytes", "stored_nbytes"}, f"{what} chunk")
        _expect(isinstance(c["blob"], str) and is_hex_digest(c["blob"]), f"{what}: bad blob id")
        for k in ("nbytes", "stored_nbytes"):
            _expect(isinstance(c[k], int) and not isinstance(c[k], bool)
                    and 0 < c[k] <= MAX_SIZE, f"{what}: bad chunk {k}")
        chunks.append(Chunk(c["blob"], c["nbytes"], c["stored_nbytes"]))
    entry = TensorEntry(name, _dtype(doc["dtype"], what), _dtype(doc["source_dtype"], what),
                        _shape(doc["shape"], what), CodecPipeline.from_specs(doc["codecs"]),
                        tuple(chunks), doc["sha256"], _finetuned_dtype(doc, what))
    if entry.finetuned_dtype is not None:
        _expect(dtypes.is_floating(entry.source_dtype),
                f"{what}: finetuned_dtype on a tensor whose source_dtype is not floating")
    _expect(entry.nbytes <= MAX_SIZE, f"{what}: larger than {MAX_SIZE} bytes")
    _expect(sum(c.nbytes for c in chunks) == entry.nbytes,
            f"{what}: chunk sizes do not add up to the tensor's size")
    item = dtypes.itemsize(entry.dtype)
    _expect(all(c.nbytes % item == 0 for c in chunks), f"{what}: chunk not item-aligned")
    return entry


def _finetuned_dtype(doc: dict, what: str) -> str | None:
    """The optional ``finetuned_dtype``: a floating dtype other than ``source_dtype``."""
    if "finetuned_dtype" not in doc:
        return None
    value = _dtype(doc["finetuned_dtype"], what)
    _expect(dtypes.is_floating(value), f"{what}: finetuned_dtype {value} is not floating")
    _expect(value != doc["source_dtype"],
            f"{what}: finetuned_dtype equals source_dtype (it is left out then)")
    return value


def _check_exact(entry: TensorEntry, base_hash: str) -> None:
    """An exact-mode entry (``bitdiff``, §5.7) is a delta of its source dtype over this base."""
    steps = entry.codecs.codecs
    where = [i for i, c in enumerate(steps) if c.name == "bitdiff"]
    if not where:
        return
    what = f"manifest tensor {entry.name!r}"
    _expect(where == [0], f"{what}: bitdiff must be the first codec")
    first = steps[0]
    assert isinstance(first, BitDiff)  # the codec registered under the name "bitdiff"
    _expect(first.dtype == entry.source_dtype and entry.finetuned_dtype is None
            and entry.dtype == dtypes.delta_dtype(entry.source_dtype),
            f"{what}: bitdiff of {first.dtype} does not match the entry's dtypes")
    _expect(first.base == base_hash, f"{what}: bitdiff names another base than the manifest")


def _skipped(doc: Any) -> SkippedTensor:
    _expect(isinstance(doc, dict), "manifest: skipped entry is not an object")
    _keys(doc, {"name", "dtype", "shape"}, "manifest skipped tensor")
    _expect(isinstance(doc["name"], str) and doc["name"] != "", "manifest: bad skipped name")
    what = f"manifest skipped tensor {doc['name']!r}"
    return SkippedTensor(doc["name"], _dtype(doc["dtype"], what), _shape(doc["shape"], what))
