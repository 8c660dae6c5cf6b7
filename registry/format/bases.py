"""Stored bases as documents: base records (``bases/BASE_HASH.json``) and base names
(``bases/names/NAME.json``), in any store (a local registry or a remote).

A base record binds a base hash to the manifest of the base's weights (every tensor of the
checkpoint, floating or not); it is written once, by exclusive create, and never changes. A
base name is a movable pointer to a base hash, like a tag. Both are sealed canonical JSON
(:func:`tvreg.format.records.seal`); reading checks the seal and that the document sits at the key
its content names (docs/format.md §8.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvreg.digest import is_hex_digest
from tvreg.errors import FormatError, InvalidInput
from tvreg.format.records import _valid_time, seal, unseal
from tvreg.names import validate_name

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest

BASE_FORMAT = "tvreg.base/1"
BASE_NAME_FORMAT = "tvreg.base-name/1"
BASES = "bases"
NAMES = "bases/names"
#: a stored base is named by a hash prefix of at least this many hex digits
MIN_HASH_PREFIX = 8


def base_key(base_hash: str) -> str:
    if not is_hex_digest(base_hash):
        raise FormatError(f"not a base hash: {base_hash[:80]!r}")
    return f"{BASES}/{base_hash}.json"


def base_name_key(name: str) -> str:
    return f"{NAMES}/{validate_name(name)}.json"


def _count(value: Any, most: int = 2**63 - 1) -> bool:
    """An integer from 0 to ``most`` (what the catalog's column holds)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


@dataclass(frozen=True)
class BaseRecord:
    """``bases/BASE_HASH.json``: the stored weights of one base model."""

    base_hash: str
    arch_fingerprint: str
    manifest: str           # object id of the manifest of every tensor of the base
    n_tensors: int
    n_params: int           # elements over all tensors
    raw_bytes: int          # decoded size of all tensors
    stored_bytes: int       # encoded size (sum of the blob sizes, before dedup)
    created_at: str

    @property
    def key(self) -> str:
        return base_key(self.base_hash)

    @classmethod
    def of(cls, manifest: Manifest, manifest_id: str, created_at: str) -> BaseRecord:
        return cls(manifest.base_hash, manifest.arch_fingerprint, manifest_id,
                   len(manifest.tensors), manifest.n_params, manifest.raw_bytes,
                   manifest.stored_bytes, created_at)

    def describes(self, manifest: Manifest) -> bool:
        """Whether ``manifest`` is what this record says it is: hashes and sizes, nothing
        skipped, every tensor stored in its own dtype."""
        return (manifest.base_hash, manifest.arch_fingerprint, len(manifest.tensors),
                manifest.n_params, manifest.raw_bytes, manifest.stored_bytes, manifest.skipped) \
            == (self.base_hash, self.arch_fingerprint, self.n_tensors, self.n_params,
                self.raw_bytes, self.stored_bytes, ()) \
            and all(t.dtype == t.source_dtype and t.finetuned_dtype is None
                    for t in manifest.tensors)

    def to_json(self) -> dict[str, Any]:
        return {"format": BASE_FORMAT, "base_hash": self.base_hash,
                "arch_fingerprint": self.arch_fingerprint, "manifest": self.manifest,
                "n_tensors": self.n_tensors, "n_params": self.n_params,
                "raw_bytes": self.raw_bytes, "stored_bytes": self.stored_bytes,
                "created_at": self.created_at}

    def to_bytes(self) -> bytes:
        return seal(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "base record") -> BaseRecord:
        doc = unseal(data, key)
        expected = {"format", "base_hash", "arch_fingerprint", "manifest", "n_tensors",
                    "n_params", "raw_bytes", "stored_bytes", "created_at"}
        if set(doc) != expected or doc["format"] != BASE_FORMAT:
            raise FormatError(f"{key}: not a {BASE_FORMAT} document")
        for k in ("base_hash", "arch_fingerprint", "manifest"):
            if not isinstance(doc[k], str) or not is_hex_digest(doc[k]):
                raise FormatError(f"{key}: invalid {k}")
        for k in ("n_tensors", "n_params", "raw_bytes", "stored_bytes"):
            if not _count(doc[k], 2**31 - 1 if k == "n_tensors" else 2**63 - 1):
                raise FormatError(f"{key}: invalid {k}")
        if not _valid_time(doc["created_at"]):
            raise FormatError(f"{key}: invalid created_at")
        return cls(doc["base_hash"], doc["arch_fingerprint"], doc["manifest"], doc["n_tensors"],
                   doc["n_params"], doc["raw_bytes"], doc["stored_bytes"], doc["created_at"])


@dataclass(frozen=True)
class BaseName:
    """``bases/names/NAME.json``: a movable name for a stored base."""

    name: str
    base_hash: str
    updated_at: str

    @property
    def key(self) -> str:
        return base_name_key(self.name)

    def to_json(self) -> dict[str, Any]:
        return {"format": BASE_NAME_FORMAT, "name": self.name, "base_hash": self.base_hash,
                "updated_at": self.updated_at}

    def to_bytes(self) -> bytes:
        return seal(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "base name") -> BaseName:
        doc = unseal(data, key)
        if set(doc) != {"format", "name", "base_hash", "updated_at"} \
                or doc["format"] != BASE_NAME_FORMAT:
            raise FormatError(f"{key}: not a {BASE_NAME_FORMAT} document")
        try:
            validate_name(doc["name"])
        except InvalidInput:
            raise FormatError(f"{key}: invalid name") from None
        if not isinstance(doc["base_hash"], str) or not is_hex_digest(doc["base_hash"]):
            raise FormatError(f"{key}: invalid base_hash")
        if not _valid_time(doc["updated_at"]):
            raise FormatError(f"{key}: invalid updated_at")
        return cls(doc["name"], doc["base_hash"], doc["updated_at"])
