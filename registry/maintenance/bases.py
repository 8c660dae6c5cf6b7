"""verify and gc for stored bases (docs/format.md §11, §12).

gc keeps every object a base record references (its manifest, and that manifest's blobs), and
refuses to run when a base record or its manifest does not read. verify checks every base
record, its manifest and blobs, every base name, and that the catalog lists exactly the stored
bases; ``--deep`` also decodes every tensor of every base (checking its sha256) and recomputes
the base hash and the architecture fingerprint from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvreg.errors import CorruptObject, FormatError, TvregError
from tvreg.format.bases import BaseRecord, base_key
from tvreg.maintenance.report import VerifyReport, blobs_intact, check_manifest, read_each
from tvreg.storage.documents import base_keys, base_name_keys, read_base, read_base_name

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.repo.repo import Repo


def base_objects(reg: Repo, seen: set[str] | None = None) -> set[str]:
    """Ids of every base manifest and of its blobs; raises if one cannot be known. With
    ``seen``, only the base records whose keys are not in it are read (and their keys added)."""
    keep: set[str] = set()
    for key in base_keys(reg.store):
        if seen is not None:
            if key in seen:
                continue
            seen.add(key)
        try:
            rec = read_base(reg.store, key)
            manifest = reg.manifest(rec.manifest)
        except TvregError:
            # which blobs it needs cannot be named: keep every blob rather than guess
            raise FormatError(f"gc refused: {key} or its manifest is missing or corrupted; "
                              "run `tvreg verify`") from None
        keep.add(rec.manifest)
        keep |= manifest.blob_ids()
    return keep


def verify_bases(reg: Repo, rep: VerifyReport, bad: set[str], *, deep: bool) -> None:
    """Add the stored bases' problems to ``rep`` (``bad``: objects that failed their hash)."""
    parsed: set[str] = set()
    for rec in read_each(base_keys(reg.store), lambda k: read_base(reg.store, k), rep):
        rep.bases += 1
        parsed.add(rec.base_hash)
        manifest = _check(reg, rec, bad, rep)
        ok = manifest is not None and (not deep or _decode(reg, rec, manifest, rep))
        if not ok:
            rep.problems.append(f"base {rec.base_hash[:12]} is incomplete or corrupted")
    name_keys = base_name_keys(reg.store)
    rep.base_names += len(name_keys)
    indexed = {r["base_hash"] for r in reg.catalog.rows("SELECT base_hash FROM bases")}
    for doc in read_each(name_keys, lambda k: read_base_name(reg.store, k), rep):
        # a name may point at a base whose weights are not stored (`tvreg base name`); one
        # whose base the catalog lists as stored has lost its base record
        if doc.base_hash not in parsed and doc.base_hash in indexed:
            rep.problems.append(f"base name {doc.name} points at base {doc.base_hash[:12]}, "
                                "which is not stored")
    if indexed != parsed:
        rep.problems.append(f"catalog is out of date ({len(parsed - indexed)} base(s) missing, "
                            f"{len(indexed - parsed)} extra); run `tvreg reindex`")
        for base_hash in sorted(indexed - parsed):
            if not reg.store.exists(base_key(base_hash)):  # listed, but its record is gone
                rep.damage(base_key(base_hash), "missing")


def _check(reg: Repo, rec: BaseRecord, bad: set[str],
           rep: VerifyReport) -> Manifest | None:
    """The base's manifest if it, and every blob it names, is there and intact."""
    from tvreg.digest import arch_fingerprint

    manifest = check_manifest(reg, rec.manifest, bad, rep, f"base {rec.base_hash[:12]}",
                              f"base {rec.base_hash[:12]}: ")
    if manifest is None:
        return None
    fingerprint = arch_fingerprint((t.name, t.source_dtype, t.shape) for t in manifest.tensors)
    if not rec.describes(manifest) or fingerprint != rec.arch_fingerprint:
        rep.problems.append(f"{rec.key}: its manifest {rec.manifest[:12]} does not match it "
                            "(base hash, architecture, dtypes or sizes differ)")
        return None
    return manifest if blobs_intact(manifest, rep) else None


def _decode(reg: Repo, rec: BaseRecord, manifest: Manifest, rep: VerifyReport) -> bool:
    """Decode every tensor (checked against its sha256) and recompute the base hash."""
    from tvreg import dtypes
    from tvreg.digest import BaseHasher, tensor_bytes
    from tvreg.tensors.encoding import decode_tensor

    hasher = BaseHasher()
    for entry in manifest.tensors:
        rep.tensors += 1
        try:
            t = decode_tensor(entry, reg.objects.get, reg.executor("chunks"), check_tensor=True)
        except CorruptObject as e:
            rep.problems.append(f"base {rec.base_hash[:12]}: {e}")
            return False
        if dtypes.is_floating(entry.source_dtype):
            hasher.update(entry.name, entry.source_dtype, entry.shape, tensor_bytes(t))
    if hasher.hexdigest() != rec.base_hash:
        rep.problems.append(f"base {rec.base_hash[:12]}: its tensors hash to "
                            f"{hasher.hexdigest()[:12]}, not to its base hash")
        return False
    return True
