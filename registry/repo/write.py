"""The write protocol of a registry (docs/format.md §11): blobs -> manifest -> version record ->
catalog, and tags.

Every step leaves the registry readable: objects are staged and committed before the manifest
names them, the manifest before a record names it (the record is claimed under the gc lock, so
a concurrent gc cannot delete what it references), and the catalog, an index, last. A command
killed between two steps is completed by running it again (:func:`finish_version`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tvreg.errors import (
    CorruptObject,
    FormatError,
    InvalidInput,
    NotFound,
    RegistryError,
    TvregError,
)
from tvreg.format.manifest import Manifest
from tvreg.format.records import Metadata, TagRecord, VersionRecord, utc_now
from tvreg.names import validate_tag
from tvreg.storage.objects import Staging, referencing

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo
    from tvreg.storage.objects import ObjectDB

#: a name with at most this many versions has them all read on create (cheaper than a query)
READ_ALL_VERSIONS = 32

#: called with the versions a write stored, once they are indexed (the facade computes their
#: similarities here; docs/architecture.md)
AfterInsert = Callable[..., None]


@dataclass(frozen=True)
class CreateResult:
    """What a write of a version did: its ``record``, whether it made a new version
    (``created``; False when an identical version already existed), how many objects it wrote
    (``new_objects``; 0 when every blob deduplicated) and the vector's ``manifest``."""

    record: VersionRecord
    created: bool            # False when an identical version already existed
    new_objects: int         # objects written (0 when every blob deduplicated)
    manifest: Manifest

    @property
    def ref(self) -> str:
        """The new (or found) version's ``NAME@N``."""
        return self.record.ref


class VectorTarget(Protocol):
    """Where :func:`write_vector` stores a vector's objects: a local registry (a
    :class:`~tvreg.repo.repo.Repo`), or another registry's store
    (:class:`~tvreg.repo.target.StoreTarget`: a remote)."""

    @property
    def root(self) -> str:
        """Its folder (a StoreTarget, which has none: its label)."""

    @property
    def label(self) -> str:
        """How messages name it."""

    @property
    def objects(self) -> ObjectDB:
        """Its content-addressed objects."""

    @property
    def exists(self) -> bool:
        """Whether it was created (a StoreTarget always is)."""

    @property
    def scratch(self) -> str:
        """A local folder where writes stage their objects."""

    @property
    def keeps_failed_objects(self) -> bool:
        """Whether a failed write leaves the objects it committed (for gc) rather than
        deleting them."""

    def require_writable(self) -> None:
        """Raise if it cannot be written."""

    def init(self) -> bool:
        """Create it if needed; True if it was created now."""


def write_vector(repo: VectorTarget, produce: Callable[[Callable[[bytes], str]], Manifest]
                 ) -> tuple[Manifest, str, int]:
    """Blobs, then the manifest: ``produce(put)`` encodes the tensors through ``put``; returns
    the manifest, its id and the number of objects written.

    A registry that does not exist yet is created only once the vector is staged, so a
    failure leaves no trace; its staging area is then the system's temp folder. A target that
    ``keeps_failed_objects`` (a remote) keeps what a failed write committed, for its gc.
    """
    repo.require_writable()
    existing = repo.exists
    root_existed = existing or os.path.isdir(repo.root)
    staging = None
    try:
        staging = Staging(repo.objects, repo.scratch if existing else tempfile.gettempdir())
        manifest = produce(staging.put)
        if not existing:
            repo.init()
        new_objects = staging.commit()
        manifest_id = repo.objects.put(manifest.to_bytes())
    except OSError as e:
        _undo_write(repo, staging, existing, root_existed)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RegistryError(
                f"no space left on the disk of registry {repo.label}: nothing was stored; "
                "free some space and run the command again") from None
        raise
    except BaseException:
        _undo_write(repo, staging, existing, root_existed)
        raise
    finally:
        if staging is not None:
            staging.close()
    return manifest, manifest_id, new_objects


def _undo_write(repo: VectorTarget, staging: Staging | None, existing: bool,
                root_existed: bool) -> None:
    """After a failed :func:`write_vector`: a registry it created is removed again; in an
    existing one, the objects its commit added (no manifest or record names them yet) are
    deleted, so the registry is as it was (docs/cli.md, full disk)."""
    import shutil

    if not existing and repo.exists:
        if not root_existed:
            shutil.rmtree(repo.root, ignore_errors=True)
        else:  # the folder was there, empty: empty it again
            for entry in os.listdir(repo.root):
                path = os.path.join(repo.root, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        return
    if staging is not None and not repo.keeps_failed_objects:
        for oid in staging.committed:
            with contextlib.suppress(OSError, TvregError):
                repo.objects.delete(oid)


def claim_version(repo: Repo, name: str, manifest: Manifest, vector_id: str,
                  metadata: Metadata, parents: tuple[str, ...] = (),
                  recipe: dict[str, Any] | None = None) -> tuple[VersionRecord, bool]:
    """Claim the next number of ``name`` unless a version holds the same content (then that
    version, and False). Only versions that can hold it are read: with many versions, those
    the catalog does not show under another vector (records never change, so its rows are
    exact)."""
    from tvreg.storage.documents import claim, parse_record_key, read_many, record_keys

    repo.require_writable()
    keys = {parse_record_key(k)[1]: k for k in record_keys(repo.store, name)}
    other: dict[int, str] = {}
    if len(keys) > READ_ALL_VERSIONS and os.path.exists(repo.catalog.path):
        try:
            other = {r["version"]: r["vector_id"] for r in repo.catalog.rows(
                "SELECT version, vector_id FROM versions WHERE name = ? AND vector_id <> ?",
                [name, vector_id])}
        except TvregError:
            other = {}  # no usable catalog: read them all
    candidates = [k for n, k in sorted(keys.items()) if n not in other]
    existing = {r.version: r for r in read_many(repo.read_record, candidates)}
    record = VersionRecord(name, max(keys, default=0) + 1, vector_id, manifest.base_hash,
                           manifest.arch_fingerprint, metadata, utc_now(), parents, recipe)
    # its objects are still there (a concurrent gc cannot delete them until the record is)
    with referencing(repo, [vector_id, *manifest.blob_ids()],
                     restore={vector_id: manifest.to_bytes()}):
        return claim(repo.store, record, existing, taken=set(keys))


def finish_version(repo: Repo, record: VersionRecord, created: bool, manifest: Manifest,
                   after_insert: AfterInsert | None = None) -> None:
    """Index a version just claimed, then call ``after_insert(record)`` (its similarities). A
    version the write found already stored (``created`` False) may be what an earlier run of
    the same command left when it was killed after the record (docs/format.md §11): it is
    indexed if the catalog misses it, and ``after_insert`` called if its similarities are
    missing, so running the command again completes it."""
    if created or unindexed(repo, [record]):
        index_new(repo, record, manifest)
    if after_insert is not None and (created or without_stats(repo, [record])):
        after_insert(record)


def store_version(repo: Repo, name: str, produce: Callable[[Callable[[bytes], str]], Manifest],
                  metadata: Metadata, parents: tuple[str, ...] = (),
                  recipe: dict[str, Any] | None = None,
                  after_insert: AfterInsert | None = None) -> CreateResult:
    """The whole protocol for a vector ``produce`` encodes: write, claim, index, finish."""
    manifest, vector_id, new_objects = write_vector(repo, produce)
    record, created = claim_version(repo, name, manifest, vector_id, metadata, parents, recipe)
    finish_version(repo, record, created, manifest, after_insert)
    return CreateResult(record, created, new_objects, manifest)


def unindexed(repo: Repo, records: list[VersionRecord]) -> list[VersionRecord]:
    """Those of ``records`` the catalog does not list (all, if it cannot be read)."""
    if not records or not os.path.exists(repo.catalog.path):
        return list(records)
    try:
        rows = repo.catalog.rows(
            "SELECT name, version, vector_id FROM versions WHERE name IN (SELECT unnest(?))",
            [sorted({r.name for r in records})])
    except TvregError:
        return list(records)
    have = {(r["name"], r["version"], r["vector_id"]) for r in rows}
    return [r for r in records if (r.name, r.version, r.vector_id) not in have]


def without_stats(repo: Repo, records: list[VersionRecord]) -> list[VersionRecord]:
    """Those of ``records`` whose vector has no statistics in the catalog: its similarities
    were never computed (they are stored with its statistics, in one transaction)."""
    if not records:
        return []
    try:
        rows = repo.catalog.rows("SELECT vector_id FROM vector_stats WHERE vector_id IN "
                                 "(SELECT unnest(?))", [sorted({r.vector_id for r in records})])
    except TvregError:
        return []  # no usable catalog: `tvreg similarities` says more
    have = {r["vector_id"] for r in rows}
    return [r for r in records if r.vector_id not in have]


def index_new(repo: Repo, record: VersionRecord, manifest: Manifest) -> None:
    """Add a stored version to the catalog (rebuilt whole if it was deleted)."""
    try:
        if os.path.exists(repo.catalog.path):
            repo.catalog.index([record], {record.vector_id: manifest})
        else:  # the catalog was deleted: rebuild it all, not just from this version on
            repo.reindex()
    except TvregError as e:
        raise type(e)(f"{record.ref} is stored, but the catalog was not updated ({e}); "
                      "run `tvreg reindex`") from None


# --- tags ----------------------------------------------------------------------------------------


def set_tag(repo: Repo, ref: str, tag: str) -> tuple[TagRecord, int | None]:
    """Point ``NAME@tag`` at the version ``ref`` names; returns the tag and the version it
    pointed at before (None if new)."""
    repo.require_writable()
    validate_tag(tag)
    record, vector_id = repo.resolve_ref(ref)
    if record is None:
        raise InvalidInput(f"{ref!r} names a vector with no version; tag a NAME@N ref")
    try:
        previous: int | None = repo.tag_record(record.name, tag).version
    except NotFound:
        previous = None
    rec = TagRecord(record.name, tag, record.version, vector_id, utc_now())
    repo.store.write(rec.key, rec.to_bytes())
    try:
        index_tag(repo, rec.name, rec.tag)
    except TvregError as e:
        raise type(e)(f"{rec.name}@{rec.tag} is set, but the catalog was not updated ({e}); "
                      "run `tvreg reindex`") from None
    return rec, previous


def index_tag(repo: Repo, name: str, tag: str) -> None:
    """Index the tag as its file holds it now, read under the catalog's write lock: of two
    concurrent `tag` commands, the one that writes the catalog last may not have written
    the file last, and must index the file's target, not its own."""
    def current() -> TagRecord | None:
        try:
            return repo.tag_record(name, tag)
        except (NotFound, FormatError, CorruptObject):
            return None
    repo.catalog.set_tag(name, tag, current)
