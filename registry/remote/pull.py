"""Pull: copy versions (their blobs, manifests, records and tags) from a remote.

Same order as push: the objects of a vector are fetched into a staging folder, every one checked
against its sha256 before it enters the local store, and committed vector by vector (so a rerun
of an interrupted pull does not fetch them again); version records are written only once every
object of every requested version is in, then the catalog, the tags and the similarities. A
corrupted remote object stops the pull with its name and no record is written. A version number
already held locally by other content goes to the next free number (reported). With
``with_base`` the versions' stored bases come too (:mod:`tvreg.remote.bases`): their objects
with the vectors', their records and names before the version records.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tvreg.digest import sha256_hex
from tvreg.errors import CorruptObject, FormatError, InvalidInput, NotFound, TvregError
from tvreg.format.manifest import Manifest
from tvreg.format.records import TagRecord, VersionRecord, record_key, tag_key, utc_now
from tvreg.names import parse_ref
from tvreg.repo.write import index_tag, unindexed, without_stats
from tvreg.storage.documents import (
    claim,
    read_many,
    read_record,
    read_tag,
    record_keys,
    tag_keys,
    versions_in,
)
from tvreg.storage.objects import Staging, object_key
from tvreg.stores import MissingKey

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo
    from tvreg.repo.write import AfterInsert
    from tvreg.stores import Store
    from tvreg.util.progress import Transfer


@dataclass
class PullReport:
    """What a pull did: objects and versions fetched or already here, tags set, versions
    renumbered (remote ref -> local ref), bases fetched, and what could not be read there."""

    remote: str
    objects_fetched: int = 0
    bytes_fetched: int = 0
    objects_skipped: int = 0
    versions_fetched: int = 0
    versions_skipped: int = 0
    tags_set: int = 0
    renumbered: dict[str, str] = field(default_factory=dict)  # remote ref -> local ref
    pulled: list[str] = field(default_factory=list)          # local refs of the new versions
    bases_fetched: int = 0      # with_base: stored bases added here
    base_names_set: int = 0     # with_base: base names set (or moved) here
    problems: list[str] = field(default_factory=list)  # remote tags and base names that do not
    # read (damaged there): not pulled, one line each

    def to_json(self) -> dict:
        """The report as a JSON-able dict (``tvreg pull --json``)."""
        return dict(self.__dict__)


def _remote_error(remote: str, e: Exception | str) -> TvregError:
    return CorruptObject(f"remote {remote}: {e}")


def select_remote(store: Store, refs: list[str] | None, remote: str) -> list[VersionRecord]:
    """The remote's versions named by ``refs`` (default all): a bare NAME is all its versions,
    NAME@N and NAME@TAG one. Every record is read and its seal checked."""
    def read(key: str) -> VersionRecord:
        try:
            return read_record(store, key)
        except (FormatError, CorruptObject) as e:
            raise _remote_error(remote, e) from None

    def read_listed(key: str) -> VersionRecord:
        try:
            return read(key)
        except MissingKey:  # listed, so it must be there: the listing (an HTTP remote's index) lies
            raise CorruptObject(f"remote {remote}: {key} is listed but missing (a damaged "
                                "index?); nothing was pulled") from None

    if not refs:
        return read_many(read_listed, record_keys(store))
    chosen: dict[tuple[str, int], VersionRecord] = {}
    for ref in refs:
        r = parse_ref(ref)
        if r.name is None:
            raise InvalidInput(f"{ref}: pull takes names and versions, not vector ids")
        if r.version is not None:
            keys = [record_key(r.name, r.version)]
        elif r.tag is not None:
            try:
                tag = read_tag(store, tag_key(r.name, r.tag))
            except MissingKey:
                raise NotFound(f"no tag {r.name}@{r.tag} on remote {remote}") from None
            except (FormatError, CorruptObject) as e:
                raise _remote_error(remote, e) from None
            keys = [record_key(r.name, tag.version)]
        else:
            keys = record_keys(store, r.name)
            if not keys:
                raise NotFound(f"no vector named {r.name!r} on remote {remote}")
        try:
            for rec in read_many(read, keys):
                chosen[(rec.name, rec.version)] = rec
        except MissingKey:
            raise NotFound(f"{ref} does not exist on remote {remote}") from None
    return [chosen[k] for k in sorted(chosen)]


def pull(reg: Repo, remote_name: str = "origin", refs: list[str] | None = None, *,
         workers: int = 8, progress: Transfer | None = None, with_base: bool = False,
         after_insert: AfterInsert | None = None) -> PullReport:
    """See :meth:`tvreg.Registry.pull`; ``after_insert(*records)`` is called with the versions
    it stored once they are indexed (their similarities)."""
    from tvreg.remote.bases import check_manifests, plan_pull, pull_records
    from tvreg.remote.config import get
    from tvreg.remote.index import require_content

    reg.require_writable()
    remote = get(reg, remote_name)
    src = remote.reader()
    require_content(remote, remote.store())
    report = PullReport(remote.name)
    records = select_remote(src, refs, remote.name)
    # with_base: the versions' stored bases, each found on the remote before anything is written
    bases = plan_pull(reg, src, records, remote.name) if with_base else None

    def fetch(oid: str) -> bytes:
        try:
            return src.read(object_key(oid))
        except MissingKey:
            raise CorruptObject(f"remote {remote.name}: object {object_key(oid)} is missing") \
                from None

    # manifests first (small): they say which blobs to fetch
    manifests: dict[str, Manifest] = {}
    fetched: dict[str, bytes] = {}
    local: set[str] = set()

    def get_manifests(ids: list[str]) -> None:
        here = {v for v in ids if _reuse(reg, v)}
        local.update(here)
        manifests.update({v: reg.manifest(v) for v in here})
        todo = [v for v in ids if v not in here]
        for vid, data in zip(todo, read_many(fetch, todo, workers=workers), strict=True):
            if sha256_hex(data) != vid:
                raise CorruptObject(f"remote {remote.name}: object {object_key(vid)} is "
                                    "corrupted (its sha256 does not match its name); nothing "
                                    "was pulled")
            try:
                manifests[vid] = Manifest.from_bytes(data)
            except FormatError as e:
                raise _remote_error(remote.name, f"manifest {vid[:12]}: {e}") from None
            fetched[vid] = data

    vids = sorted({r.vector_id for r in records}
                  | ({b.manifest for b in bases.records.values()} if bases else set()))
    get_manifests(vids)
    for rec in records:
        m = manifests[rec.vector_id]
        if (m.base_hash, m.arch_fingerprint) != (rec.base_hash, rec.arch_fingerprint):
            raise CorruptObject(f"remote {remote.name}: {rec.key} does not match its manifest "
                                f"{rec.vector_id[:12]} (base or architecture differ)")
    exact = [r for r in records if manifests[r.vector_id].exact]
    if bases is None and exact:  # exact-mode versions are read with their base: it comes too
        bases = plan_pull(reg, src, exact, remote.name, exact_only=True)
        more = sorted({b.manifest for b in bases.records.values()} - set(vids))
        get_manifests(more)
        vids = sorted(set(vids) | set(more))
    if bases:
        check_manifests(bases, manifests, remote.name)
    needed = {v: sorted(manifests[v].blob_ids()) for v in vids}
    missing = {v: [b for b in blobs if not _reuse(reg, b)] for v, blobs in needed.items()}
    todo = sorted({b for blobs in missing.values() for b in blobs})
    report.objects_skipped = len({b for blobs in needed.values() for b in blobs}) - len(todo) \
        + len(local)
    if progress:
        progress.start(len(todo) + len(fetched),
                       sum(_blob_sizes(manifests).get(b, 0) for b in todo)
                       + sum(map(len, fetched.values())))
        for data in fetched.values():
            progress.advance(len(data))
    # every missing blob is fetched on one pool (so large and small objects of all vectors
    # overlap), staged per vector; a vector's blobs are committed, then its manifest, as soon as
    # they are all in and the vectors before it are committed (a rerun keeps what is done)
    owner: dict[str, str] = {}
    for vid in vids:
        for b in missing[vid]:
            owner.setdefault(b, vid)
    stagings = {vid: Staging(reg.objects, reg.scratch) for vid in vids}
    try:
        def stage(oid: str) -> int:
            data = fetch(oid)
            if stagings[owner[oid]].put(data) != oid:
                raise CorruptObject(f"remote {remote.name}: object {object_key(oid)} is corrupted "
                                    "(its sha256 does not match its name); no version was pulled")
            if progress:
                progress.advance(len(data))
            return len(data)

        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="tvreg-pull") as pool:
            futures = {vid: [pool.submit(stage, b) for b in missing[vid] if owner[b] == vid]
                       for vid in vids}
            try:
                for vid in vids:
                    for f in futures[vid]:
                        report.bytes_fetched += f.result()
                        report.objects_fetched += 1
                    stagings[vid].commit()
                    if vid in fetched:
                        reg.objects.put(fetched[vid])
                        report.objects_fetched += 1
                        report.bytes_fetched += len(fetched[vid])
            except BaseException:
                for f in (f for fs in futures.values() for f in fs):
                    f.cancel()
                raise
    finally:
        for staging in stagings.values():
            staging.close()
    # every object is in: check it is still there (a concurrent gc cannot delete it from here
    # until the records naming it are written), then the base records and names, the version
    # records, then the catalog, tags and similarities
    from tvreg.storage.objects import referencing

    mapping: dict[tuple[str, int], VersionRecord] = {}
    ours: dict[str, dict[int, VersionRecord]] = {}
    new: list[VersionRecord] = []
    with referencing(reg, [o for v in vids for o in (v, *needed[v])], restore=fetched):
        if bases:
            report.bases_fetched, report.base_names_set = pull_records(reg, bases)
        for rec in records:
            known = ours.setdefault(rec.name, versions_in(reg.store, rec.name))
            held, created = claim(reg.store, rec, known)
            mapping[(rec.name, rec.version)] = held
            if not created:
                report.versions_skipped += 1
                continue
            new.append(held)
            report.versions_fetched += 1
            report.pulled.append(held.ref)
            if held.version != rec.version:
                report.renumbered[rec.ref] = held.ref
    # versions held already but missing from the catalog are what a pull killed between its
    # records and its catalog commit left (docs/format.md §11): running it again indexes them
    new_keys = {r.key for r in new}
    held_before = sorted({r.key: r for r in mapping.values() if r.key not in new_keys}.values(),
                         key=lambda r: (r.name, r.version))
    indexed = new + unindexed(reg, held_before)
    if indexed:
        try:
            reg.catalog.index(indexed, {r.vector_id: manifests[r.vector_id] for r in indexed})
        except TvregError as e:
            raise type(e)(f"{', '.join(r.ref for r in indexed)} pulled, but the catalog was not "
                          f"updated ({e}); run `tvreg reindex`") from None
    if bases:
        report.problems += bases.problems
    indexed_tags = _catalog_tags(reg, {r.name for r in records})
    for tag in _remote_tags(src, {r.name for r in records}, remote.name, report.problems):
        target = mapping.get((tag.name, tag.version))
        if target is None or target.vector_id != tag.vector_id:
            continue
        want = (target.version, target.vector_id)
        try:
            current = reg.tag_record(tag.name, tag.tag)
        except NotFound:
            current = None
        if current is not None and (current.version, current.vector_id) == want:
            if indexed_tags.get((tag.name, tag.tag)) != want:  # a pull killed in between
                index_tag(reg, current.name, current.tag)
            continue
        moved = TagRecord(tag.name, tag.tag, target.version, target.vector_id, utc_now())
        reg.store.write(moved.key, moved.to_bytes())
        index_tag(reg, moved.name, moved.tag)
        report.tags_set += 1
    if after_insert is not None:  # and for versions a killed pull indexed but did not get to
        pending = new + without_stats(reg, held_before)
        if pending:
            after_insert(*pending)
    return report


def _catalog_tags(reg: Repo, names: set[str]) -> dict[tuple[str, str], tuple[int, str]]:
    """The catalog's tags of ``names``: (name, tag) -> (version, vector id)."""
    try:
        rows = reg.catalog.rows("SELECT name, tag, version, vector_id FROM tags "
                                "WHERE name IN (SELECT unnest(?))", [sorted(names)])
    except TvregError:
        return {}
    return {(r["name"], r["tag"]): (r["version"], r["vector_id"]) for r in rows}


def _reuse(reg: Repo, oid: str) -> bool:
    """Whether object ``oid`` is here already; if so it is touched, so that gc's grace period
    restarts (an old unreferenced object, e.g. of an interrupted pull, is about to be used)."""
    try:
        reg.store.touch(object_key(oid))
    except MissingKey:
        return False
    return True


def _remote_tags(store: Store, names: set[str], remote: str,
                 problems: list[str]) -> list[TagRecord]:
    """The remote's tags of ``names``; a damaged one is not pulled, and goes to ``problems``."""
    from tvreg.storage.documents import readable

    keys = [k for name in sorted(names) for k in tag_keys(store, name)]
    damaged: list[str] = []
    tags = readable(keys, lambda key: read_tag(store, key), damaged, keyed=False)
    problems += [f"remote {remote}: {p} (not pulled)" for p in damaged]
    return tags


def _blob_sizes(manifests: dict[str, Manifest]) -> dict[str, int]:
    return {c.blob: c.stored_nbytes for m in manifests.values() for t in m.tensors
            for c in t.chunks}
