"""verify (re-hash everything, check every reference) and gc (delete what nothing references)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import CorruptObject, FormatError, TvregError
from .objects import object_key
from .records import record_key

if TYPE_CHECKING:  # pragma: no cover
    from .manifest import Manifest
    from .registry import Registry


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
    from .base_maintenance import verify_bases

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
    from .codecs.bitdiff import BaseRequired
    from .encoding import decode_tensor, exact_codec

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


@dataclass
class GcReport:
    deleted_objects: int = 0
    deleted_bytes: int = 0
    kept_recent: int = 0
    scratch_removed: int = 0
    temp_files_removed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


def reachable_objects(reg: "Registry", seen: set[str] | None = None) -> set[str]:
    """Ids of every manifest a version record or a base record references, and of their
    blobs. With ``seen``, only the records whose keys are not in it are read (and their keys
    added): what was recorded since an earlier call."""
    from .base_maintenance import base_objects
    from .documents import read_many, record_keys

    keep: set[str] = base_objects(reg, seen)
    keys = record_keys(reg.store)
    if seen is not None:
        keys = [k for k in keys if k not in seen]
        seen.update(keys)
    for rec in read_many(reg._read_record, keys):
        if rec.vector_id in keep:
            continue
        keep.add(rec.vector_id)
        try:
            keep |= reg.manifest(rec.vector_id).blob_ids()
        except CorruptObject:
            # a damaged or missing manifest: its blobs cannot be named, so keep every blob
            # rather than guess; `verify` reports the damage
            raise FormatError(f"gc refused: manifest of {rec.ref} is missing or corrupted; "
                              "run `tvreg verify`") from None
    return keep


def gc(reg: "Registry", *, grace_seconds: float, dry_run: bool) -> GcReport:
    """Delete objects no version references, stale scratch folders and the temp files of
    interrupted writes (docs/format.md §11).

    A first pass, without a lock, finds the objects that no record references and that were
    not modified within ``grace_seconds``. Then, holding the gc lock exclusively (writes hold it
    shared from checking their objects to writing their record, :mod:`tvreg.gclock`), it reads
    the records stored since the first pass and deletes the candidates that are still
    unreferenced and still older than the grace period. So an object a write is about to
    reference is never deleted: it was touched within the grace period, or the write's check
    comes after the deletion and fails the write before any record names it.
    """
    from .gclock import gc_lock, in_use, remove_unless_locked
    from .stores import MissingKey

    rep = GcReport(dry_run=dry_run)
    seen: set[str] = set()
    keep = reachable_objects(reg, seen)
    now = time.time()
    candidates: list[str] = []
    for oid in list(reg.objects.ids()):
        if oid in keep:
            continue
        try:
            age = now - reg.objects.mtime(oid)
        except MissingKey:
            continue  # deleted meanwhile (by another gc)
        if age < grace_seconds:
            rep.kept_recent += 1
        else:
            candidates.append(oid)
    gone: list[str] = []
    if candidates:
        with gc_lock(reg.root, exclusive=True, timeout=reg.catalog.timeout) \
                if not dry_run else contextlib.nullcontext():
            keep |= reachable_objects(reg, seen)  # recorded since the first pass
            now = time.time()
            for oid in candidates:
                try:
                    size, age = reg.objects.size(oid), now - reg.objects.mtime(oid)
                except MissingKey:
                    continue
                if oid in keep or age < grace_seconds:  # referenced or reused meanwhile
                    rep.kept_recent += 1
                    continue
                rep.deleted_objects += 1
                rep.deleted_bytes += size
                gone.append(oid)
                if not dry_run:
                    reg.objects.delete(oid)
    if os.path.isdir(reg.scratch):
        for entry in os.scandir(reg.scratch):
            try:
                old = now - entry.stat().st_mtime >= grace_seconds
            except FileNotFoundError:
                continue
            if not old:
                continue
            if dry_run:
                rep.scratch_removed += not in_use(entry.path)
            elif remove_unless_locked(entry.path):  # a write in progress holds its own
                rep.scratch_removed += 1
    rep.temp_files_removed = reg.store.clean_temporary(grace_seconds, dry_run)
    if not dry_run:
        reg.catalog.forget_vectors(gone)
    return rep
