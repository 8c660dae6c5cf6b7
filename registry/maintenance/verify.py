"""verify: re-hash every object, check every reference, optionally decode every tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tvreg.errors import CorruptObject
from tvreg.format.records import record_key
from tvreg.maintenance.bases import verify_bases
from tvreg.maintenance.report import VerifyReport, blobs_intact, check_manifest, read_each
from tvreg.storage.documents import json_keys
from tvreg.storage.objects import object_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo

__all__ = ["VerifyReport", "verify"]


def verify(reg: Repo, on_progress: Callable[[int], None] | None = None, *,
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
    for rec in read_each(json_keys(reg.store, "refs"), reg.read_record, rep):
        rep.versions += 1
        stored.add((rec.name, rec.version, rec.vector_id))
        if rec.vector_id not in checked:
            checked[rec.vector_id] = _check_vector(reg, rec.vector_id, bad, rep)
            if deep and checked[rec.vector_id]:
                checked[rec.vector_id] = _decode_vector(reg, rec.vector_id, rep)
        if not checked[rec.vector_id]:
            rep.problems.append(f"{rec.ref}: vector {rec.vector_id[:12]} is incomplete or "
                                "corrupted")
    tag_keys = json_keys(reg.store, "tags")
    rep.tags += len(tag_keys)
    for tag in read_each(tag_keys, reg.read_tag, rep):
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
    verify_bases(reg, rep, bad, deep=deep)
    return rep


def _check_vector(reg: Repo, vector_id: str, bad: set[str], rep: VerifyReport) -> bool:
    manifest = check_manifest(reg, vector_id, bad, rep, f"vector {vector_id[:12]}")
    return manifest is not None and blobs_intact(manifest, rep)


def _decode_vector(reg: Repo, vector_id: str, rep: VerifyReport) -> bool:
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
