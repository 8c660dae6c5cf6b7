"""What verify finds (``VerifyReport``) and the checks it makes of every part: each document
read (:func:`read_each`), each manifest and the blobs it names (:func:`check_manifest`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from tvreg.errors import CorruptObject, FormatError, TvregError
from tvreg.storage.objects import object_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.repo.repo import Repo

T = TypeVar("T")


@dataclass
class VerifyReport:
    """Counts of what ``verify`` checked, the ``problems`` it found (one line each), and the
    ``damaged`` keys a repair could put back."""

    objects: int = 0
    bytes: int = 0
    versions: int = 0
    tags: int = 0
    tensors: int = 0  # decoded and checked (deep verification only)
    without_base: int = 0  # exact-mode tensors not decoded: their base is not stored
    bases: int = 0    # base records that parsed
    base_names: int = 0
    problems: list[str] = field(default_factory=list)
    #: what a repair could put back, by key: objects that are corrupted, or missing while a
    #: manifest or record names them; documents (records, tags, base records and names) that do
    #: not read, or records and base records the catalog lists but the store lacks.
    #: Values: "corrupted" or "missing".
    damaged: dict[str, str] = field(default_factory=dict)
    #: ids of the manifests that readable records and base records name, and of their blobs
    referenced: set[str] = field(default_factory=set, repr=False)
    manifests: set[str] = field(default_factory=set, repr=False)
    #: with ``verify(repair=REMOTE)``: the remote, the keys put back, and ``KEY: why`` of those
    #: that could not be
    remote: str | None = None
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    reindexed: bool = False

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def damage(self, key: str, state: str) -> None:
        """Record ``key`` as damaged (``"corrupted"`` or ``"missing"``), first state wins."""
        self.damaged.setdefault(key, state)

    def to_json(self) -> dict:
        """The report as ``tvreg verify --json`` prints it."""
        out = {"ok": self.ok, "objects": self.objects, "bytes": self.bytes,
               "versions": self.versions, "tags": self.tags, "bases": self.bases,
               "base_names": self.base_names, "tensors": self.tensors,
               "without_base": self.without_base, "problems": self.problems,
               "damaged": dict(sorted(self.damaged.items()))}
        if self.remote is not None:
            out["repair"] = {"remote": self.remote, "repaired": self.repaired,
                             "unrepaired": self.unrepaired, "reindexed": self.reindexed}
        return out


def read_each(keys: Iterable[str], read: Callable[[str], T], rep: VerifyReport) -> Iterator[T]:
    """Each document of ``keys`` that ``read`` accepts; one that does not read is a problem,
    and its key damaged ("corrupted")."""
    for key in keys:
        try:
            doc = read(key)
        except TvregError as e:
            rep.problems.append(str(e))
            rep.damage(key, "corrupted")
            continue
        yield doc


def check_manifest(reg: Repo, manifest_id: str, bad: set[str], rep: VerifyReport,
                   what: str, prefix: str = "") -> Manifest | None:
    """The manifest ``manifest_id`` of ``what`` (a vector or a base) if it reads, else None;
    each blob it names must exist (the object pass re-hashed them all and put the damaged ones
    in ``bad``: :func:`blobs_intact` says whether all are fine). Problems (``prefix`` first) and
    damage go to ``rep``."""
    rep.manifests.add(manifest_id)
    rep.referenced.add(manifest_id)
    if manifest_id in bad:
        return None
    try:
        manifest = reg.manifest(manifest_id)
    except (CorruptObject, FormatError) as e:
        rep.problems.append(f"{prefix}manifest {manifest_id[:12]}: {e}")
        if not reg.objects.exists(manifest_id):
            rep.damage(object_key(manifest_id), "missing")
        return None
    for blob in sorted(manifest.blob_ids()):
        rep.referenced.add(blob)
        if blob not in bad and not reg.objects.exists(blob):
            rep.problems.append(f"object {blob} is missing (referenced by {what})")
            rep.damage(object_key(blob), "missing")
    return manifest


def blobs_intact(manifest: Manifest, rep: VerifyReport) -> bool:
    """Whether no blob of ``manifest`` is damaged."""
    return not any(object_key(b) in rep.damaged for b in manifest.blob_ids())
