"""Push: copy versions (their blobs, manifests, records and tags) to a remote.

Order: blobs, then manifests, then version records, then tags, so a reader of the remote never
sees a record whose objects are missing. Versions the remote already holds need nothing sent
(their objects are there: that order); for the others, which objects the remote has is learned
from one listing of its ``objects/`` (not one request per object); only the missing ones are
sent, on a thread pool. A version number is claimed on the remote with an exclusive create; if
another pusher holds ``NAME@N`` with other content, the version goes to the next free number and the
mapping is reported. Nothing on the remote is overwritten except tags (which move by design).
Re-running an interrupted push completes it. The push holds a push lock on the remote
throughout (``locks/push-UUID.json``, :mod:`tvreg.remote.gc`), so no ``gc --remote`` deletes an
object it found there and will reference; one that may leave orphans notes so locally first,
and the next successful push to that remote deletes them. Last, the remote index (index/*.parquet)
is rebuilt from the remote's records and tags. With ``with_base`` the versions' stored bases go
too (:mod:`tvreg.remote.bases`): their objects with the vectors', their records and names
before the version records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tvreg.errors import InvalidInput, TvregError
from tvreg.format.manifest import Manifest
from tvreg.format.records import TagRecord, VersionRecord, utc_now
from tvreg.storage.documents import read_tag
from tvreg.storage.objects import PREFIX, ObjectDB, object_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.remote.config import Remote
    from tvreg.remote.index import Index
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store
    from tvreg.util.progress import Transfer


@dataclass
class PushReport:
    """What a push sent: objects, versions (renumbered ones mapped), tags, bases, and the index."""

    remote: str
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    versions_sent: int = 0
    versions_skipped: int = 0
    tags_sent: int = 0
    renumbered: dict[str, str] = field(default_factory=dict)  # local ref -> remote ref
    bases_sent: int = 0        # with_base: base records written there
    base_names_sent: int = 0   # with_base: base names written (or moved) there
    #: orphans that earlier failed pushes left there, deleted after this one succeeded
    orphans_removed: int = 0
    orphan_bytes_removed: int = 0
    #: why those orphans could not be removed now (they will be by a later push), or None
    orphans_note: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def select_records(reg: Repo, refs: list[str] | None) -> list[VersionRecord]:
    """Every version (no refs); a bare NAME: all its versions; NAME@N / NAME@TAG: that one."""
    from tvreg.names import parse_ref

    if not refs:
        return sorted(reg.all_records(), key=lambda r: (r.name, r.version))
    chosen: dict[tuple[str, int], VersionRecord] = {}
    for ref in refs:
        parsed = parse_ref(ref)
        versions = reg.versions(parsed.name) if parsed.name and "@" not in ref else []
        if versions:  # a bare name (names win over id prefixes, as everywhere)
            for r in versions:
                chosen[(r.name, r.version)] = r
            continue
        record, _ = reg.resolve_ref(ref)
        if record is None:
            raise InvalidInput(f"{ref}: push takes names and versions, not vector ids")
        chosen[(record.name, record.version)] = record
    return [chosen[k] for k in sorted(chosen)]


def _remote_ids(store: Store) -> set[str]:
    out = set()
    for key in store.list(PREFIX):
        parts = key.split("/")
        if len(parts) == 3:
            out.add(parts[1] + parts[2])
    return out


def remote_versions(store: Store, names: set[str]
                     ) -> tuple[dict[str, dict[int, VersionRecord]], Index | None, list[str]]:
    """The remote's versions of ``names``: one listing of ``refs/``; records the remote index
    describes are taken from it (a re-push of an unchanged registry reads no record), the
    others are read in parallel. A damaged record is left out but still holds its number
    (:func:`~tvreg.storage.documents.claim` never writes over a key that exists). Also returns the
    index and the listing, for the index refresh at the end."""
    from tvreg.remote.index import read as read_index
    from tvreg.remote.index import records_of
    from tvreg.storage.documents import (
        or_none,
        parse_record_key,
        read_many,
        read_record,
        record_keys,
    )

    try:
        index = read_index(store)
    except TvregError:
        index = None  # unreadable index: read every record
    hints = records_of(index) if index else {}
    listed = record_keys(store)
    keys = [k for k in listed if parse_record_key(k)[0] in names]
    out: dict[str, dict[int, VersionRecord]] = {name: {} for name in names}
    for key in keys:
        if key in hints:
            rec = hints[key]
            out[rec.name][rec.version] = rec
    unread = [k for k in keys if k not in hints]
    for found in read_many(or_none(lambda k: read_record(store, k)), unread):
        if found is not None:
            out[found.name][found.version] = found
    return out, index, listed


def push(reg: Repo, remote_name: str = "origin", refs: list[str] | None = None, *,
         workers: int = 8, progress: Transfer | None = None,
         with_base: bool = False) -> PushReport:
    """See :meth:`Registry.push`. A remote whose disk fills up fails with one line that names
    it and its URL (not the file the store was writing)."""
    reg.require_writable()
    with full_remote(reg, remote_name, "push"):
        return _push(reg, remote_name, refs, workers=workers, progress=progress,
                     with_base=with_base)


@contextlib.contextmanager
def full_remote(reg: Repo, remote_name: str, command: str) -> Iterator[None]:
    """An OSError of a full disk (ENOSPC, EDQUOT) raised inside becomes one
    :class:`~tvreg.errors.RemoteError` line that names the remote and its URL (not the file
    the store was writing) and says to run ``command`` again."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from tvreg.errors import RemoteError
        from tvreg.remote.config import get

        remote = get(reg, remote_name)
        raise RemoteError(f"remote {remote.name} ({remote.url}) is full (no space left on its "
                          f"disk): free some space there and {command} again") from None


def writable_remote(reg: Repo, remote_name: str) -> Remote:
    """Remote ``remote_name`` of ``reg``'s config; InvalidInput if it cannot be written
    (HTTP), NotFound if there is none."""
    from tvreg.remote.config import get

    remote = get(reg, remote_name)
    if not remote.writable:
        raise InvalidInput(f"remote {remote.name} ({remote.url}) is read-only: "
                           f"{remote.protocol} remotes can be pulled from, not pushed to")
    return remote


def _push(reg: Repo, remote_name: str = "origin", refs: list[str] | None = None, *,
          workers: int = 8, progress: Transfer | None = None,
          with_base: bool = False) -> PushReport:
    from tvreg.remote.gc import PushNote, collect_after_push, push_lock

    remote = writable_remote(reg, remote_name)
    records = select_records(reg, refs)
    store = remote.store()
    note = PushNote(reg, remote.name)
    with push_lock(store, reg.catalog.timeout, f"remote {remote.name} ({remote.url})"):
        report = _push_locked(reg, remote, store, note, records, workers=workers,
                              progress=progress, with_base=with_base)
    note.remove()  # succeeded: nothing it sent is an orphan
    collected, why = collect_after_push(reg, remote)
    if collected is not None:
        report.orphans_removed = collected.deleted_objects
        report.orphan_bytes_removed = collected.deleted_bytes
    report.orphans_note = why or None
    return report


def _push_locked(reg: Repo, remote, store: Store, note, records: list[VersionRecord], *,
                 workers: int, progress: Transfer | None, with_base: bool) -> PushReport:
    """The push itself, under a push lock on the remote (:mod:`tvreg.remote.gc`)."""
    from tvreg.remote.bases import plan_push, push_records
    from tvreg.storage.documents import claim

    report = PushReport(remote.name)
    # with_base: the versions' stored bases, all checked here before anything is sent
    # exact-mode versions are read with their base: theirs goes too
    carried = records if with_base else [r for r in records if reg.manifest(r.vector_id).exact]
    bases = plan_push(reg, carried, store, exact_only=not with_base) if carried else None
    base_blobs = bases.blob_ids() if bases else set()
    base_manifests = set(bases.manifests) if bases else set()
    # versions the remote already holds (same content under some number) need nothing sent:
    # a record on a remote is only ever written after all of its objects (§9.2)
    theirs, index, listed = remote_versions(store, {r.name for r in records})
    held = [r for r in records if any(t.same_content(r) for t in theirs[r.name].values())]
    manifests = {r.vector_id: reg.manifest(r.vector_id) for r in records}
    needed = {r.vector_id for r in records} - {r.vector_id for r in held}
    blobs = sorted({b for v in needed for b in manifests[v].blob_ids()} | base_blobs)
    # one listing, only if anything may be sent
    have = _remote_ids(store) if needed or base_manifests else set()
    todo = {"blobs": [b for b in blobs if b not in have],
            "manifests": [v for v in sorted(needed | base_manifests) if v not in have]}
    report.objects_skipped = len({b for m in manifests.values() for b in m.blob_ids()}
                                 | base_blobs) + len(set(manifests) | base_manifests) \
        - sum(map(len, todo.values()))
    if any(todo.values()):  # what it sends is an orphan there until its records are written
        note.write([o for batch in todo.values() for o in batch])
    if progress:
        progress.start(sum(map(len, todo.values())),
                       sum(reg.objects.size(o) for batch in todo.values() for o in batch))

    def send(oid: str) -> int:
        data = reg.objects.get(oid)  # checked against its hash before it leaves
        store.write_new(object_key(oid), data)
        if progress:
            progress.advance(len(data))
        return len(data)

    for batch in todo.values():  # every blob is there before the first manifest
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="tvreg-push") as pool:
            for n in pool.map(send, batch):
                report.objects_sent += 1
                report.bytes_sent += n
    if bases:  # their objects are all there now
        report.bases_sent, report.base_names_sent = push_records(store, bases)
    # records: claim numbers by exclusive create, never overwrite
    mapping: dict[tuple[str, int], int] = {}
    for rec in records:
        claimed, created = claim(store, rec, theirs[rec.name])
        mapping[(rec.name, rec.version)] = claimed.version
        if not created:
            report.versions_skipped += 1
            continue
        report.versions_sent += 1
        if claimed.version != rec.version:
            report.renumbered[rec.ref] = claimed.ref
    # tags of the pushed versions, pointing at their remote numbers (read there in parallel)
    from tvreg.storage.documents import or_none, read_many

    current = or_none(lambda key: read_tag(store, key))  # missing or unreadable: write ours
    wanted = [(tag, mapping[(tag.name, tag.version)]) for tag in reg.all_tags()
              if (tag.name, tag.version) in mapping]
    there_now = read_many(current, [t.key for t, _ in wanted])
    for (tag, target), there in zip(wanted, there_now, strict=True):
        if there is not None and (there.version, there.vector_id) == (target, tag.vector_id):
            continue
        store.write(tag.key, TagRecord(tag.name, tag.tag, target, tag.vector_id,
                                       utc_now()).to_bytes())
        report.tags_sent += 1
    # the index says what the remote holds (for ls/sql --remote and HTTP readers)
    update_index(store, manifests, index, listed, changed=bool(report.versions_sent))
    return report


def update_index(store: Store, manifests: Mapping[str, Manifest], previous: Index | None,
                 listed: list[str], *, changed: bool) -> None:
    """Rebuild the remote's index after writing records there (:func:`tvreg.remote.index.refresh`):
    ``manifests`` are those of the vectors just written (the others are read there),
    ``previous`` and ``listed`` what :func:`remote_versions` returned before, ``changed``
    whether any record was written since (else ``listed`` still holds)."""
    from tvreg.remote.index import refresh

    remote_objects = ObjectDB(store)
    refresh(store, lambda vid: manifests[vid] if vid in manifests
            else Manifest.from_bytes(remote_objects.get(vid)),
            previous=previous, keys=None if changed else listed)
