"""Push: copy versions (their blobs, manifests, records and tags) to a remote.

Order: blobs, then manifests, then version records, then tags, so a reader of the remote never
sees a record whose objects are missing. Which objects the remote has is learned from one
listing of its ``objects/`` (not one request per object); only the missing ones are sent, on a
thread pool. A version number is claimed on the remote with an exclusive create; if another
pusher holds ``NAME@N`` with other content, the version goes to the next free number and the
mapping is reported. Nothing on the remote is overwritten except tags (which move by design).
Re-running an interrupted push completes it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import CorruptObject, FormatError, InvalidInput
from .objects import PREFIX, object_key
from .records import TagRecord, VersionRecord, record_key, tag_key, utc_now

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry
    from .stores import Store


@dataclass
class PushReport:
    remote: str
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    versions_sent: int = 0
    versions_skipped: int = 0
    tags_sent: int = 0
    renumbered: dict[str, str] = field(default_factory=dict)  # local ref -> remote ref

    def to_json(self) -> dict:
        return dict(self.__dict__)


def select_records(reg: "Registry", refs: list[str] | None) -> list[VersionRecord]:
    """Every version (no refs); a bare NAME: all its versions; NAME@N / NAME@TAG: that one."""
    from .names import parse_ref

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


def _remote_ids(store: "Store") -> set[str]:
    out = set()
    for key in store.list(PREFIX):
        parts = key.split("/")
        if len(parts) == 3:
            out.add(parts[1] + parts[2])
    return out


def _remote_versions(store: "Store", name: str) -> dict[int, VersionRecord]:
    out = {}
    for key in store.list(f"refs/{name}"):
        rest = key[len(f"refs/{name}/"):]
        if "/" in rest or not rest.endswith(".json"):
            continue  # documents of longer names (NAME/sub)
        try:
            rec = VersionRecord.from_bytes(store.read(key), key)
        except (FormatError, CorruptObject):
            continue  # a damaged remote record is never ours to replace
        out[rec.version] = rec
    return out


def push(reg: "Registry", remote_name: str = "origin", refs: list[str] | None = None, *,
         workers: int = 8, on_bytes: Callable[[int], None] | None = None) -> PushReport:
    from .remotes import get

    remote = get(reg, remote_name)
    if not remote.writable:
        raise InvalidInput(f"remote {remote.name} ({remote.url}) is read-only: "
                           f"{remote.protocol} remotes can be pulled from, not pushed to")
    store = remote.store()
    records = select_records(reg, refs)
    report = PushReport(remote.name)
    # what the versions need, manifests last
    manifests = {r.vector_id: reg.manifest(r.vector_id) for r in records}
    blobs = sorted({b for m in manifests.values() for b in m.blob_ids()})
    have = _remote_ids(store)

    def send(oid: str) -> int:
        data = reg.objects.get(oid)  # checked against its hash before it leaves
        store.write_new(object_key(oid), data)
        return len(data)

    for batch in (blobs, sorted(manifests)):
        todo = [oid for oid in batch if oid not in have]
        report.objects_skipped += len(batch) - len(todo)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="tvreg-push") as pool:
            for n in pool.map(send, todo):
                report.objects_sent += 1
                report.bytes_sent += n
                if on_bytes:
                    on_bytes(n)
        have.update(todo)
    # records: claim numbers by exclusive create, never overwrite
    mapping: dict[tuple[str, int], int] = {}
    remote_versions: dict[str, dict[int, VersionRecord]] = {}
    for rec in records:
        theirs = remote_versions.setdefault(rec.name, _remote_versions(store, rec.name))
        same = next((v for v, r in sorted(theirs.items()) if r.same_content(rec)), None)
        if same is not None:
            mapping[(rec.name, rec.version)] = same
            report.versions_skipped += 1
            continue
        number = rec.version
        while True:
            if number not in theirs:
                claim = VersionRecord(rec.name, number, rec.vector_id, rec.base_hash,
                                      rec.arch_fingerprint, rec.metadata, rec.created_at,
                                      rec.parents, rec.recipe)
                if store.write_new(record_key(rec.name, number), claim.to_bytes()):
                    theirs[number] = claim
                    break
                theirs.update(_remote_versions(store, rec.name))  # someone was faster
                continue
            number = max(theirs) + 1
        mapping[(rec.name, rec.version)] = number
        report.versions_sent += 1
        if number != rec.version:
            report.renumbered[rec.ref] = f"{rec.name}@{number}"
    # tags of the pushed versions, pointing at their remote numbers
    for tag in reg.all_tags():
        target = mapping.get((tag.name, tag.version))
        if target is None:
            continue
        moved = TagRecord(tag.name, tag.tag, target, tag.vector_id, utc_now())
        key = tag_key(tag.name, tag.tag)
        try:
            current = TagRecord.from_bytes(store.read(key), key)
            if (current.version, current.vector_id) == (target, tag.vector_id):
                continue
        except Exception:  # noqa: BLE001 - missing or unreadable: write ours
            pass
        store.write(key, moved.to_bytes())
        report.tags_sent += 1
    return report
