"""Version records (``refs/NAME/N.json``) and tags (``tags/NAME/TAG.json``).

Both are canonical JSON with a ``checksum`` field: the sha256 of the document's canonical bytes
without that field, so a flipped byte is caught on read like it is for objects.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tvreg.digest import canonical_json, is_hex_digest, parse_json, sha256_hex
from tvreg.errors import FormatError, InvalidInput
from tvreg.names import MAX_VERSION, validate_name, validate_tag

VERSION_FORMAT = "tvreg.version/1"
TAG_FORMAT = "tvreg.tag/1"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_META_ITEMS = 256
MAX_META_VALUE = 4096
#: the largest ``steps`` (the catalog's BIGINT column); versions: names.MAX_VERSION
MAX_STEPS = 2**63 - 1


def _valid_time(value: Any) -> bool:
    """UTC timestamps as utc_now() writes them, and that exist on the calendar."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return False
    try:
        _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_key(name: str, version: int) -> str:
    return f"refs/{name}/{version}.json"


def tag_key(name: str, tag: str) -> str:
    return f"tags/{name}/{tag}.json"


def seal(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return canonical_json({**body, "checksum": sha256_hex(canonical_json(body))})


def unseal(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = parse_json(data)
    except ValueError:
        raise FormatError(f"{what} is not valid JSON (corrupted?)") from None
    if not isinstance(doc, dict) or "checksum" not in doc:
        raise FormatError(f"{what} has no checksum")
    body = {k: v for k, v in doc.items() if k != "checksum"}
    if doc["checksum"] != sha256_hex(canonical_json(body)):
        raise FormatError(f"{what} is corrupted (checksum mismatch)")
    # the file must be the canonical bytes themselves (format §8.1): a flipped byte that JSON
    # reads the same way (`1e-05` -> `1E-05`, `\u00e9` -> `\u00E9`) passes the checksum but is
    # still damage, and is reported as such rather than left on disk unnoticed
    if canonical_json(doc) != bytes(data):
        raise FormatError(f"{what} is corrupted (not in canonical form)")
    return body


@dataclass(frozen=True)
class Metadata:
    """What the user says about a version. ``meta`` holds free key/values (str, number, bool)."""

    task: str | None = None
    dataset: str | None = None
    lr: float | None = None
    steps: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("task", "dataset"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v or len(v) > 256
                                  or not v.isprintable()):
                raise InvalidInput(f"invalid {k} {v!r}: a printable string of 1-256 characters")
        if self.lr is not None:
            if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) \
                    or not math.isfinite(self.lr) or self.lr < 0:
                raise InvalidInput(f"invalid lr {self.lr!r}: a finite number >= 0")
            object.__setattr__(self, "lr", float(self.lr))
        if self.steps is not None and (isinstance(self.steps, bool)
                                       or not isinstance(self.steps, int)
                                       or not 0 <= self.steps <= MAX_STEPS):
            raise InvalidInput(f"invalid steps {self.steps!r}: an integer from 0 to {MAX_STEPS}")
        check_meta(self.meta)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "dataset": self.dataset, "lr": self.lr, "steps": self.steps,
                "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, doc: Any) -> Metadata:
        if not isinstance(doc, dict) or set(doc) != {"task", "dataset", "lr", "steps", "meta"}:
            raise FormatError("malformed metadata in version record")
        try:
            return cls(**doc)
        except InvalidInput as e:
            raise FormatError(f"version record: {e}") from None


def check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise InvalidInput("meta must be a mapping of keys to values")
    if len(meta) > MAX_META_ITEMS:
        raise InvalidInput(f"too many meta items (at most {MAX_META_ITEMS})")
    for k, v in meta.items():
        if not isinstance(k, str) or not _META_KEY.fullmatch(k):
            raise InvalidInput(f"invalid meta key {k!r}: use [A-Za-z_][A-Za-z0-9_.-]*, at most 64")
        ok = v is None or isinstance(v, (bool, int, str)) or (
            isinstance(v, float) and math.isfinite(v))
        if not ok or (isinstance(v, str) and len(v) > MAX_META_VALUE):
            raise InvalidInput(f"invalid meta value for {k!r}: a string (<= {MAX_META_VALUE} "
                               "chars), a finite number, true/false or null")


def parse_meta_value(text: str) -> Any:
    """``--meta k=v`` values: JSON scalars (``3``, ``1e-4``, ``true``, ``null``, ``"x"``) are
    taken as such; anything else is a plain string."""
    try:
        v = parse_json(text)
    except ValueError:
        return text
    if v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
        return v
    return text


@dataclass(frozen=True)
class VersionRecord:
    """``refs/NAME/N.json``: version ``N`` of ``NAME`` names a vector, with its metadata, lineage
    (``parents``) and ``recipe`` (docs/format.md §8.1)."""

    name: str
    version: int
    vector_id: str
    base_hash: str
    arch_fingerprint: str
    metadata: Metadata
    created_at: str
    parents: tuple[str, ...] = ()
    recipe: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def key(self) -> str:
        return record_key(self.name, self.version)

    def to_json(self) -> dict[str, Any]:
        return {"format": VERSION_FORMAT, "name": self.name, "version": self.version,
                "vector_id": self.vector_id, "base_hash": self.base_hash,
                "arch_fingerprint": self.arch_fingerprint, "metadata": self.metadata.to_json(),
                "created_at": self.created_at, "parents": list(self.parents),
                "recipe": self.recipe}

    def to_bytes(self) -> bytes:
        return seal(self.to_json())

    def same_content(self, other: VersionRecord) -> bool:
        """Equal vector, metadata and lineage (the creation time is ignored)."""
        return (self.vector_id, self.metadata, self.parents, self.recipe) == \
               (other.vector_id, other.metadata, other.parents, other.recipe)

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "version record") -> VersionRecord:
        doc = unseal(data, key)
        expected = {"format", "name", "version", "vector_id", "base_hash", "arch_fingerprint",
                    "metadata", "created_at", "parents", "recipe"}
        if set(doc) != expected or doc["format"] != VERSION_FORMAT:
            raise FormatError(f"{key}: not a {VERSION_FORMAT} document")
        try:
            validate_name(doc["name"])
        except InvalidInput:
            raise FormatError(f"{key}: invalid name") from None
        v = doc["version"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VERSION:
            raise FormatError(f"{key}: invalid version")
        for k in ("vector_id", "base_hash", "arch_fingerprint"):
            if not isinstance(doc[k], str) or not is_hex_digest(doc[k]):
                raise FormatError(f"{key}: invalid {k}")
        parents = doc["parents"]
        if not isinstance(parents, list) or not all(isinstance(p, str) and is_hex_digest(p)
                                                    for p in parents):
            raise FormatError(f"{key}: invalid parents")
        if doc["recipe"] is not None and not isinstance(doc["recipe"], dict):
            raise FormatError(f"{key}: invalid recipe")
        if not _valid_time(doc["created_at"]):
            raise FormatError(f"{key}: invalid created_at")
        return cls(doc["name"], v, doc["vector_id"], doc["base_hash"], doc["arch_fingerprint"],
                   Metadata.from_json(doc["metadata"]), doc["created_at"], tuple(parents),
                   doc["recipe"])


@dataclass(frozen=True)
class TagRecord:
    """``tags/NAME/TAG.json``: a movable pointer from ``NAME@TAG`` to a version."""

    name: str
    tag: str
    version: int
    vector_id: str
    updated_at: str

    @property
    def key(self) -> str:
        return tag_key(self.name, self.tag)

    def to_json(self) -> dict[str, Any]:
        return {"format": TAG_FORMAT, "name": self.name, "tag": self.tag,
                "version": self.version, "vector_id": self.vector_id,
                "updated_at": self.updated_at}

    def to_bytes(self) -> bytes:
        return seal(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "tag") -> TagRecord:
        doc = unseal(data, key)
        if set(doc) != {"format", "name", "tag", "version", "vector_id", "updated_at"} \
                or doc["format"] != TAG_FORMAT:
            raise FormatError(f"{key}: not a {TAG_FORMAT} document")
        try:
            validate_name(doc["name"])
            validate_tag(doc["tag"])
        except InvalidInput:
            raise FormatError(f"{key}: invalid name or tag") from None
        v = doc["version"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VERSION or \
                not isinstance(doc["vector_id"], str) or not is_hex_digest(doc["vector_id"]):
            raise FormatError(f"{key}: invalid version or vector id")
        if not _valid_time(doc["updated_at"]):
            raise FormatError(f"{key}: invalid updated_at")
        return cls(doc["name"], doc["tag"], v, doc["vector_id"], doc["updated_at"])
