"""``verify --repair REMOTE``: put back what verify found damaged or missing, from a remote
(docs/format.md §12.1).

Objects are named by their sha256, so any copy that hashes to the name is the object: each is
fetched from the remote, checked against its name, and replaces the local copy atomically
(:meth:`tvreg.storage.objects.ObjectDB.restore`). A repaired manifest can name blobs that are
damaged too (they could not be known while it was unreadable): those follow in the next round.

Documents carry no content hash of their own that a reader could know in advance, so a remote
copy is taken only where the local catalog, an independent witness written when the document
was, vouches for it: a version record or base record when every field the catalog holds of it
agrees (so the restored bytes are the ones that were lost), a tag or base name when its target
does. A document the catalog does not know (or knows differently) is left as it is and reported.

Nothing is written that was not damaged or missing, and nothing is written that did not check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from tvreg.digest import sha256_hex
from tvreg.errors import CorruptObject, FormatError
from tvreg.repo.write import index_tag
from tvreg.storage.objects import PREFIX, object_key
from tvreg.stores import MissingKey

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.records import VersionRecord
    from tvreg.maintenance.report import VerifyReport
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store

class Source(Protocol):
    """Where repair reads from: a named remote that can be read (``tvreg.remote.Remote``)."""

    @property
    def name(self) -> str: ...

    def reader(self) -> Store: ...


#: a repaired manifest's blobs are checked in a further round; manifests name blobs only, so
#: two rounds suffice (a third is a safety margin)
_ROUNDS = 3


def repair(reg: Repo, remote: Source, *, deep: bool = False, workers: int = 8,
           on_progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify; put back each damaged or missing object and document from ``remote`` that
    checks; verify again. The returned report is the last verification's, with ``repaired``
    (keys put back) and ``unrepaired`` (``KEY: why``) filled in."""
    from tvreg.maintenance.verify import verify

    reg.require_writable()
    first = verify(reg, on_progress, deep=deep)
    repaired: list[str] = []
    unrepaired: list[str] = []
    reindexed = False
    if first.damaged:
        src = remote.reader()
        docs = {k: v for k, v in first.damaged.items() if not k.startswith(PREFIX + "/")}
        objects = {k: v for k, v in first.damaged.items() if k.startswith(PREFIX + "/")}
        manifests = set(first.manifests)
        # documents first: a restored record or base record names a manifest to check
        follow: set[str] = set()
        for key, state in sorted(docs.items()):
            try:
                named = _document(reg, src, remote.name, key, state)
            except _NotRepaired as e:
                unrepaired.append(f"{key}: {e}")
                continue
            repaired.append(key)
            if named is not None:
                manifests.add(named)
                follow.add(named)
        todo = sorted(objects) + _damaged_parts(reg, sorted(follow), first)
        seen: set[str] = set()
        for _ in range(_ROUNDS):
            todo = [k for k in dict.fromkeys(todo) if k not in seen]
            if not todo:
                break
            seen.update(todo)
            fixed_manifests = []
            with ThreadPoolExecutor(max(1, min(workers, len(todo))),
                                    thread_name_prefix="tvreg-repair") as pool:
                for key, outcome in zip(todo, pool.map(
                        lambda k: _object(reg, src, remote.name, k, first), todo), strict=True):
                    if outcome is None:
                        repaired.append(key)
                        oid = _oid(key)
                        if oid in manifests:
                            fixed_manifests.append(oid)
                    else:
                        unrepaired.append(f"{key}: {outcome}")
            todo = _damaged_parts(reg, fixed_manifests, first)
    final = verify(reg, deep=deep) if first.damaged else first
    if repaired and not final.damaged and \
            any(p.startswith("catalog is out of date") for p in final.problems):
        # the store is the truth: a version left out of the catalog while its manifest was
        # damaged is indexed again now that it reads. Not while anything is still damaged: a
        # rebuild would drop its rows, the witness a later repair checks a remote copy against
        reg.reindex()
        reindexed = True
        final = verify(reg, deep=deep)
    final.remote = remote.name
    final.repaired = sorted(repaired)
    final.unrepaired = sorted(unrepaired)
    final.reindexed = reindexed
    return final


def _oid(key: str) -> str:
    return key[len(PREFIX) + 1:].replace("/", "")


def _damaged_parts(reg: Repo, manifest_ids: list[str], first: VerifyReport) -> list[str]:
    """Keys of the objects among ``manifest_ids`` and their blobs that are damaged or missing
    (a manifest that reads is intact: it is checked against its name; the first verification
    re-hashed every object there was, so a blob not among its damage is intact or missing)."""
    from tvreg.format.manifest import Manifest

    out: list[str] = []
    for vid in manifest_ids:
        try:
            manifest = Manifest.from_bytes(reg.objects.get(vid))
        except (CorruptObject, FormatError):
            out.append(object_key(vid))
            continue
        for blob in sorted(manifest.blob_ids()):
            key = object_key(blob)
            if key in first.damaged or not reg.objects.exists(blob):
                out.append(key)
    return out


# --- objects ----------------------------------------------------------------------------------


def _object(reg: Repo, src: Store, remote: str, key: str,
            first: VerifyReport) -> str | None:
    """Put back object ``key`` from ``src``; None when done, else why not."""
    oid = _oid(key)
    try:
        data = src.read(key)
    except MissingKey:
        if oid in first.referenced or oid in first.manifests:
            return f"remote {remote} does not have it"
        return (f"remote {remote} does not have it (nothing references it: `tvreg gc` "
                "removes it)")
    if sha256_hex(data) != oid:
        return f"remote {remote} has it damaged too (its sha256 does not match its name)"
    reg.objects.restore(oid, data)
    return None


# --- documents --------------------------------------------------------------------------------


class _NotRepaired(Exception):
    """Why a document was not put back (one line)."""


def _document(reg: Repo, src: Store, remote: str, key: str,
              state: str) -> str | None:
    """Put back document ``key`` from ``src`` if the catalog vouches for the remote's copy.
    Returns the manifest id a restored record or base record names (None for a tag or a name);
    raises :class:`_NotRepaired` with the reason if it was not put back."""
    kind = key.split("/", 1)[0]
    try:
        if kind == "refs":
            return _record(reg, src, remote, key, state)
        if kind == "tags":
            _tag(reg, src, remote, key)
            return None
        if key.startswith("bases/names/"):
            _base_name(reg, src, remote, key)
            return None
        if kind == "bases":
            return _base_record(reg, src, remote, key, state)
    except MissingKey:
        raise _NotRepaired(f"remote {remote} does not have it") from None
    except (FormatError, CorruptObject) as e:
        raise _NotRepaired(f"remote {remote} has it damaged too ({e})") from None
    raise _NotRepaired("not a document a repair knows")


def _still_damaged(reg: Repo, key: str, read: Callable[[Any, str], Any]) -> bool:
    """Whether ``key`` still does not read here (another process may have repaired it)."""
    try:
        read(reg.store, key)
    except (FormatError, CorruptObject, MissingKey):
        return True
    return False


def _put(reg: Repo, key: str, data: bytes, state: str,
         read: Callable[[Any, str], Any]) -> None:
    """Write a checked document: a missing one by exclusive create (a number taken meanwhile is
    not overwritten), a damaged one by atomic replace, only if it is still damaged."""
    if state == "missing":
        if not reg.store.write_new(key, data):
            raise _NotRepaired("another document took its place meanwhile; left as it is")
    elif _still_damaged(reg, key, read):
        reg.store.write(key, data)


def _catalog_row(reg: Repo, query: str, params: list) -> dict[str, Any] | None:
    rows = reg.catalog.rows(query, params)
    return rows[0] if rows else None


def _record_fields(rec: VersionRecord) -> tuple:
    """What the catalog's ``versions`` row holds of a record (migration 1), as it stores it."""
    from tvreg.catalog.db import timestamp

    md = rec.metadata
    return (rec.vector_id, rec.base_hash, rec.arch_fingerprint, md.task, md.dataset, md.lr,
            md.steps, json.loads(json.dumps(md.meta, sort_keys=True)), timestamp(rec.created_at),
            list(rec.parents), rec.recipe)


def _row_fields(row: dict[str, Any]) -> tuple:
    return (row["vector_id"], row["base_hash"], row["arch_fingerprint"], row["task"],
            row["dataset"], row["lr"], row["steps"], _json(row["meta"]), row["created_at"],
            _json(row["parents"]), _json(row["recipe"]))


def _json(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def _same(a: Any, b: Any) -> bool:
    """Equal, with the types of JSON numbers (1 and 1.0 and true are different documents)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _record(reg: Repo, src: Store, remote: str, key: str, state: str) -> str | None:
    from tvreg.format.records import VersionRecord
    from tvreg.storage.documents import parse_record_key, read_record, record_keys

    name, version = parse_record_key(key)
    row = _catalog_row(reg, "SELECT * FROM versions WHERE name = ? AND version = ?",
                       [name, version])
    if row is None:
        raise _NotRepaired("the catalog does not list this version, so no remote copy can be "
                           "checked against it")
    want = _row_fields(row)
    # the remote's record of the same number first, then its other versions of the name (a
    # version renumbered by a push or a pull sits under another number there)
    keys = [key] + [k for k in record_keys(src, name) if k != key]
    for candidate in keys:
        try:
            theirs = read_record(src, candidate)
        except (FormatError, CorruptObject, MissingKey):
            continue
        ours = VersionRecord(name, version, theirs.vector_id, theirs.base_hash,
                             theirs.arch_fingerprint, theirs.metadata, theirs.created_at,
                             theirs.parents, theirs.recipe)
        if _same(_record_fields(ours), want):
            _put(reg, key, ours.to_bytes(), state, read_record)
            return ours.vector_id
    raise _NotRepaired(f"remote {remote} has no intact copy that matches what the catalog lists "
                       f"for it (vector {row['vector_id'][:12]}, created {row['created_at']})")


def _tag(reg: Repo, src: Store, remote: str, key: str) -> None:
    from tvreg.storage.documents import read_tag

    theirs = read_tag(src, key)  # FormatError: damaged there too
    row = _catalog_row(reg, "SELECT version, vector_id FROM tags WHERE name = ? AND tag = ?",
                       [theirs.name, theirs.tag])
    if row is None or (row["version"], row["vector_id"]) != (theirs.version, theirs.vector_id):
        raise _NotRepaired(f"remote {remote}'s copy points at {theirs.name}@{theirs.version} "
                           f"({theirs.vector_id[:12]}), which is not what the catalog lists "
                           "for it")
    _put(reg, key, theirs.to_bytes(), "corrupted", read_tag)
    index_tag(reg, theirs.name, theirs.tag)


def _base_name(reg: Repo, src: Store, remote: str, key: str) -> None:
    from tvreg.repo.bases import _index_name
    from tvreg.storage.documents import read_base_name

    theirs = read_base_name(src, key)
    row = _catalog_row(reg, "SELECT base_hash FROM base_names WHERE name = ?", [theirs.name])
    if row is None or row["base_hash"] != theirs.base_hash:
        raise _NotRepaired(f"remote {remote}'s copy points at base {theirs.base_hash[:12]}, "
                           "which is not what the catalog lists for it")
    _put(reg, key, theirs.to_bytes(), "corrupted", read_base_name)
    _index_name(reg, theirs)


def _base_record(reg: Repo, src: Store, remote: str, key: str,
                 state: str) -> str | None:
    from tvreg.catalog.db import timestamp
    from tvreg.storage.documents import read_base

    base_hash = key[len("bases/"):-len(".json")]
    row = _catalog_row(reg, "SELECT * FROM bases WHERE base_hash = ?", [base_hash])
    if row is None:
        raise _NotRepaired("the catalog does not list this base, so no remote copy can be "
                           "checked against it")
    theirs = read_base(src, key)
    mine = (row["arch_fingerprint"], row["manifest_id"], row["n_tensors"], row["n_params"],
            row["raw_bytes"], row["stored_bytes"], row["created_at"])
    if (theirs.arch_fingerprint, theirs.manifest, theirs.n_tensors, theirs.n_params,
            theirs.raw_bytes, theirs.stored_bytes, timestamp(theirs.created_at)) != mine:
        raise _NotRepaired(f"remote {remote}'s copy does not match what the catalog lists for "
                           f"it (manifest {row['manifest_id'][:12]})")
    _put(reg, key, theirs.to_bytes(), state, read_base)
    return theirs.manifest

