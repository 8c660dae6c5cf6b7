"""Bulk ingest into a remote (``tvreg ingest LIST.jsonl --to REMOTE``).

The list, its checks, the engines and the resumability are those of :mod:`tvreg.repo.ingest`;
only where the vectors go differs. The engine's workers (threads here, or Dask tasks that open
the remote's store by its URL and storage options) stage each item straight into the remote's
store (:class:`~tvreg.repo.target.StoreTarget`): the blobs and the manifest a ``push`` of that
version would write there, the same content-addressed objects as a local ``create``. This
process then makes the versions there, in list order, as push makes them (:mod:`tvreg.remote.push`):
``NAME@N`` claimed by exclusive create (the next number after those the remote holds; a number
another writer took meanwhile moves the version to the next free one), a version whose content
(vector, metadata, lineage) the remote already holds reused; then the remote index is rebuilt,
once. The whole run holds a push lock on the remote (:mod:`tvreg.remote.gc`), so a ``gc
--remote`` cannot delete objects that are staged but not yet named by a record.

A rerun skips every item whose ``ingest.key`` a version record on the remote holds (the records
are read as push reads them, from the remote index where it describes them). Nothing is written
to the local registry (its config only names the remote), and no similarities are computed (a
remote has no catalog; a ``pull`` computes them). An item that fails after some of its objects
went to the remote leaves them there, unreferenced, for ``gc --remote`` (after its grace
period) to delete; no local note of them is kept, unlike a failed push's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from tvreg.format.records import VersionRecord, utc_now
from tvreg.remote.push import full_remote, remote_versions, update_index, writable_remote
from tvreg.repo.ingest import begin, check_options, landed_in, open_executor, stage_and_land
from tvreg.repo.write import CreateResult
from tvreg.storage.documents import claim, parse_record_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.repo.create import StagedVersion
    from tvreg.repo.ingest import IngestItem, IngestResult
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store


class RemoteLander:
    """Makes staged vectors versions on a remote, one at a time, as push makes them: ``theirs``
    (name -> number -> record) and ``listed`` (its record keys) as
    :func:`~tvreg.remote.push.remote_versions` read them, kept up to date."""

    def __init__(self, store: Store, theirs: dict[str, dict[int, VersionRecord]],
                 listed: list[str]) -> None:
        self.store, self.theirs = store, theirs
        self.taken: dict[str, set[int]] = {}  # numbers whose records may not read (damaged)
        for key in listed:
            name, number = parse_record_key(key)
            self.taken.setdefault(name, set()).add(number)
        self.manifests: dict[str, Manifest] = {}  # of the versions written, for the index
        self.written = 0

    def land(self, staged: StagedVersion) -> CreateResult:
        """Claim the next number of the staged vector's name on the remote (or find the
        version there that holds the same content)."""
        from tvreg.repo.create import warn_if_zero

        warn_if_zero(staged, 3)
        known = self.theirs.setdefault(staged.name, {})
        taken = self.taken.setdefault(staged.name, set())
        m = staged.manifest
        record = VersionRecord(staged.name, max(known.keys() | taken, default=0) + 1,
                               staged.vector_id, m.base_hash, m.arch_fingerprint,
                               staged.metadata, utc_now(), (), staged.recipe)
        claimed, created = claim(self.store, record, known, taken)
        taken.add(claimed.version)
        if created:
            self.manifests[staged.vector_id] = m
            self.written += 1
        return CreateResult(claimed, created, staged.new_objects, m)


def ingest(reg: Repo, items: list[IngestItem], remote_name: str, *, engine: str = "local",
           workers: int | None = None, scheduler: str | None = None, level: int | None = None,
           on_item: Callable[[IngestItem, str], None] | None = None) -> IngestResult:
    """Create a version on remote ``remote_name`` (of ``reg``'s config) for each item no
    version there holds yet (see the module's docstring; the options are those of
    :func:`tvreg.repo.ingest.ingest`). Refs in the result are the remote's."""
    from tvreg.remote.gc import push_lock
    from tvreg.repo.target import StoreTarget

    check_options(engine, workers, scheduler)
    remote = writable_remote(reg, remote_name)
    store = remote.store()
    label = f"remote {remote.name} ({remote.url})"
    key = json.dumps([remote.url, remote.options], sort_keys=True)
    target = StoreTarget(remote.store, label, key)  # opened again, by URL, on a Dask worker
    with full_remote(reg, remote_name, "ingest"), push_lock(store, reg.lock_timeout, label):
        theirs, index, listed = remote_versions(store, {it.name for it in items})
        done = landed_in(r for versions in theirs.values() for r in versions.values())
        result, todo = begin(items, done, on_item)
        if not todo:
            return result
        lander = RemoteLander(store, theirs, listed)
        with open_executor(engine, workers, scheduler) as executor:
            stage_and_land(target, items, todo, executor, level, result, on_item, lander.land)
        if lander.written:
            update_index(store, lander.manifests, index, listed, changed=True)
    return result
