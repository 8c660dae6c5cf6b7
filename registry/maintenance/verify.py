"""verify: re-hash every object, check every reference, optionally decode every tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from tvreg.errors import CorruptObject, FormatError, TvregError
from tvreg.format.records import record_key
from tvreg.storage.objects import object_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.registry import Registry


@dataclass
class VerifyReport:
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
        return not self.problems

    def damage(self, key: str, state: str) -> None:
        self.damaged.setdefault(key, state)

    def to_json(self) -> dict:
        out = {"ok": self.ok, "objects": self.objects, "bytes": self.bytes,
               "versions": self.versions, "tags": self.tags, "bases": self.bases,
               "base_names": self.base_names, "tensors": self.tensors,
               "without_base": self.without_base, "problems": self.problems,
               "damaged": dict(sorted(self.damaged.items()))}
        if self.remote is not None:
            out["repair"] = {"remote": self.remote, "repaired": self.repaired,
                             "unrepaired": self.unrepaired, "reindexed": self.reindexed}
        return out


def verify(reg: "Registry", on_progress: Callable[[int], None] | None = None, *,
           deep: bool = False) -> VerifyReport:
    """Re-hash every object; check that every record's manifest and blobs exist and parse, that
    every tag points at its version, and that the catalog indexes exactly the stored versions.
    ``deep`` also decodes every tensor of every stored vector and checks it against the sha256
    its manifest records (which catches a decoder that no longer reproduces what was stored)."""
    rep = VerifyReport()
    bad: set[str] = set()
    for oid in reg.objects.ids():
        rep.objects += 1
        try:
            rep.bytes += len(reg.objects.get(oid))
        except CorruptObject as e:
            bad.add(oid)
            rep.problems.append(str(e))
            rep.damage(object_key(oid), "corrupted")
        if on_progress:
            on_progress(1)
    stored: set[tuple[str, int, str]] = set()
    checked: dict[str, bool] = {}
    for key in sorted(k for k in reg.store.list("refs") if k.endswith(".json")):
        try:
            rec = reg._read_record(key)
        except TvregError as e:
            rep.problems.append(str(e))
            rep.damage(key, "corrupted")
            continue
        rep.versions += 1
        stored.add((rec.name, rec.version, rec.vector_id))
        if rec.vector_id not in checked:
            checked[rec.vector_id] = _check_vector(reg, rec.vector_id, bad, rep)
            if deep and checked[rec.vector_id]:
                checked[rec.vector_id] = _decode_vector(reg, rec.vector_id, rep)
        if not checked[rec.vector_id]:
            rep.problems.append(f"{rec.ref}: vector {rec.vector_id[:12]} is incomplete or corrupted")
    for key in sorted(k for k in reg.store.list("tags") if k.endswith(".json")):
        rep.tags += 1
        try:
            tag = reg._read_tag(key)
        except TvregError as e:
            rep.problems.append(str(e))
            rep.damage(key, "corrupted")
            continue
        if (tag.name, tag.version, tag.vector_id) not in stored:
            rep.problems.append(f"tag {tag.name}@{tag.tag} points at {tag.name}@{tag.version}, "
                                "which does not exist with that vector")
    indexed = {(r["name"], r["version"], r["vector_id"])
               for r in reg.catalog.rows("SELECT name, version, vector_id FROM versions")}
    if indexed != stored:
        rep.problems.append(f"catalog is out of date ({len(stored - indexed)} version(s) missing, "
                            f"{len(indexed - stored)} extra); run `tvreg reindex`")
        for name, version, _ in sorted(indexed - stored):
            key = record_key(name, version)
            if not reg.store.exists(key):  # listed, but its record is gone
                rep.damage(key, "missing")
    from tvreg.maintenance.bases import verify_bases

    verify_bases(reg, rep, bad, deep=deep)
    return rep


def check_manifest(reg: "Registry", manifest_id: str, bad: set[str], rep: VerifyReport,
                   what: str, prefix: str = "") -> "Manifest | None":
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


def blobs_intact(manifest: "Manifest", rep: VerifyReport) -> bool:
    return not any(object_key(b) in rep.damaged for b in manifest.blob_ids())


def _check_vector(reg: "Registry", vector_id: str, bad: set[str], rep: VerifyReport) -> bool:
    manifest = check_manifest(reg, vector_id, bad, rep, f"vector {vector_id[:12]}")
    return manifest is not None and blobs_intact(manifest, rep)


def _decode_vector(reg: "Registry", vector_id: str, rep: VerifyReport) -> bool:
    from tvreg.codecs.bitdiff import BaseRequired
    from tvreg.tensors.encoding import decode_tensor, exact_codec

    ok = True
    for entry in reg.manifest(vector_id).tensors:
        exact = exact_codec(entry)
        base = None if exact is None else \
            (lambda e=entry, h=exact.base: reg.base_tensor(h, e.name))
        try:
            decode_tensor(entry, reg.objects.get, reg.executor("chunks"), check_tensor=True,
                          base=base)
            rep.tensors += 1
        except BaseRequired:
            rep.without_base += 1
        except CorruptObject as e:
            rep.tensors += 1
            rep.problems.append(f"vector {vector_id[:12]}: {e}")
            ok = False
    return ok
