"""gc: delete the objects no record references, under the registry's gc lock."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvreg.errors import CorruptObject, FormatError

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo



@dataclass
class GcReport:
    """What a gc deleted (or, with ``dry_run``, would delete) and what it kept."""

    deleted_objects: int = 0
    deleted_bytes: int = 0
    kept_recent: int = 0
    scratch_removed: int = 0
    temp_files_removed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


def reachable_objects(reg: Repo, seen: set[str] | None = None) -> set[str]:
    """Ids of every manifest a version record or a base record references, and of their
    blobs. With ``seen``, only the records whose keys are not in it are read (and their keys
    added): what was recorded since an earlier call."""
    from tvreg.maintenance.bases import base_objects
    from tvreg.storage.documents import read_many, record_keys

    keep: set[str] = base_objects(reg, seen)
    keys = record_keys(reg.store)
    if seen is not None:
        keys = [k for k in keys if k not in seen]
        seen.update(keys)
    for rec in read_many(reg.read_record, keys):
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


def gc(reg: Repo, *, grace_seconds: float, dry_run: bool) -> GcReport:
    """Delete objects no version references, stale scratch folders and the temp files of
    interrupted writes (docs/format.md §11).

    A first pass, without a lock, finds the objects that no record references and that were
    not modified within ``grace_seconds``. Then, holding the gc lock exclusively (writes hold it
    shared from checking their objects to writing their record, :mod:`tvreg.storage.gclock`), it
    reads the records stored since the first pass and deletes the candidates that are still
    unreferenced and still older than the grace period. So an object a write is about to
    reference is never deleted: it was touched within the grace period, or the write's check
    comes after the deletion and fails the write before any record names it.
    """
    from tvreg.storage.gclock import gc_lock, in_use, remove_unless_locked
    from tvreg.stores import MissingKey

    reg.require_writable()

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
