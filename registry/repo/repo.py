"""``Repo``: one registry's state and how it is read.

A ``Repo`` holds what a registry is made of (its folder, object store, objects, catalog), the
caches and thread pools its readers share, and the reads every operation builds on: the layout
and config, version records and tags, manifests, refs, tensors (exact-mode ones over their
base), stored bases, and the catalog's rebuild from the store (:meth:`Repo.reindex`). Writing
goes through :mod:`tvreg.repo.write`; every writer calls :meth:`Repo.require_writable` first,
which is how a registry opened by URL (:class:`tvreg.remote.view.RemoteRepo`) is read-only.

Operations (create, compose, verify, push, ...) take a ``Repo``, never the
:class:`tvreg.registry.Registry` facade (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tvreg.catalog.db import Catalog
from tvreg.digest import parse_json
from tvreg.errors import (
    AmbiguousRef,
    FormatError,
    InvalidInput,
    InvalidName,
    NotFound,
    ReadOnlyRegistry,
    TvregError,
)
from tvreg.format.bases import BaseRecord, base_key
from tvreg.format.manifest import Manifest, TensorEntry
from tvreg.format.records import TagRecord, VersionRecord, record_key, tag_key
from tvreg.names import _HEX as _HEX_RUN
from tvreg.names import MIN_ID_PREFIX, Ref, parse_ref, validate_name
from tvreg.repo import index
from tvreg.storage import documents
from tvreg.storage.gclock import LOCK_FILE
from tvreg.storage.objects import ObjectDB
from tvreg.stores import LocalStore, MissingKey, Store
from tvreg.stores.local import TMP_PREFIX

if TYPE_CHECKING:
    import torch

    from tvreg.catalog.snapshot import CatalogSnapshot
    from tvreg.tensors.stored_base import StoredBase
    from tvreg.tensors.taskvector import TaskVector

CONFIG_FORMAT = "tvreg.registry/1"
CATALOG_FILE = "catalog.duckdb"
CONFIG_FILE = "config.json"
SCRATCH_DIR = "tmp"
_LAYOUT_DIRS = {"objects", "refs", "tags", SCRATCH_DIR}

#: manifests of stored bases kept in memory (content-addressed, so never stale)
_BASE_MANIFESTS: dict[str, Manifest] = {}
_BASE_MANIFESTS_LOCK = threading.Lock()
_BASE_MANIFESTS_KEEP = 16


def _refuse_file_root(root: str) -> None:
    """A registry path that is (or lies under) a file is bad input, said so plainly: not
    advice to run ``tvreg init`` followed by ``[Errno 20] Not a directory``."""
    path = root
    while True:
        if os.path.isdir(path):
            return
        if os.path.lexists(path):
            raise InvalidInput(f"{path} is a file, not a registry folder (set TVREG_HOME or "
                               f"--registry to a folder)")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


class Repo:
    """One local registry: its folder ``root``, object ``store`` and ``objects``, ``catalog``,
    and the pools and caches its readers share. Made by :func:`tvreg.open`; operations take it.

    With ``check_tensors`` every decoded tensor is also checked against the sha256 in its
    manifest (every blob always is, against its name).
    """

    #: False for a registry opened by URL: :meth:`require_writable` refuses every write
    writable = True
    #: a failed write deletes the objects it committed (nothing names them yet; a concurrent
    #: write that reused one finds it gone when it commits): :mod:`tvreg.repo.write`
    keeps_failed_objects = False

    def __init__(self, root: str | os.PathLike, *, check_tensors: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        _refuse_file_root(self.root)
        self.check_tensors = check_tensors
        self.store: Store = LocalStore(self.root)
        self.objects = ObjectDB(self.store)
        self.catalog = Catalog(os.path.join(self.root, CATALOG_FILE))
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pool_lock = threading.Lock()
        self._base_sources: dict[str, Any] = {}  # base hash -> open Checkpoint (exact mode)
        self._stored_bases: dict[str, Any] = {}  # base hash -> StoredBase, once opened

    def __repr__(self) -> str:
        return f"<tvreg.Registry {self.root}>"

    @property
    def label(self) -> str:
        """How messages name this registry (its folder; a URL for one opened by URL)."""
        return self.root

    # --- layout ----------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Whether the registry has been created (its ``config.json`` is there)."""
        return os.path.isfile(os.path.join(self.root, CONFIG_FILE))

    def require_writable(self) -> None:
        """The one check every write makes first: :class:`ReadOnlyRegistry` if this registry
        was opened read-only (by URL)."""
        if not self.writable:
            raise ReadOnlyRegistry(f"{self.label} is opened read-only; pull from it into a local "
                                   "registry (`tvreg remote add` + `tvreg pull`) to change it")

    def init(self) -> bool:
        """Create the registry if needed; True if it was created now."""
        self.require_writable()
        if self.exists:
            self.check_config()
            return False
        # the layout folders (and the temp file of config.json) alone are a registry another
        # process is initializing right now
        if os.path.isdir(self.root) and {e for e in os.listdir(self.root)
                                         if not e.startswith(TMP_PREFIX)} \
                - _LAYOUT_DIRS - {LOCK_FILE}:
            raise InvalidInput(f"{self.root} is not empty and not a tvreg registry")
        for sub in ("objects", "refs", "tags", SCRATCH_DIR):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        config = {"format": CONFIG_FORMAT, "remotes": {}}
        created = self.store.write_new(CONFIG_FILE, json.dumps(config, indent=2).encode() + b"\n")
        self.catalog.index([], {})  # creates catalog.duckdb with the current schema
        return created

    def check_config(self) -> dict[str, Any]:
        """``config.json``, checked to be a registry's of the format this code reads."""
        try:
            config = parse_json(self.store.read(CONFIG_FILE))
        except ValueError:
            raise FormatError(f"{self.root}/{CONFIG_FILE} is not valid JSON") from None
        if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
            raise FormatError(f"{self.root}: unsupported registry format "
                              f"{config.get('format') if isinstance(config, dict) else config!r}")
        return config

    def require(self) -> None:
        """Reads need an existing registry; a missing catalog is rebuilt from the store."""
        if not self.exists:
            raise NotFound(f"no tvreg registry at {self.root} (create a vector or run "
                           "`tvreg init`)")
        self.check_config()
        if not os.path.exists(self.catalog.path):
            self.reindex()

    def refresh(self) -> None:
        """Read what changed since this object first read the registry. A local registry is
        always read as it is; a registry opened by URL refreshes its cached catalog."""

    def read_catalog_from_memory(self, check_interval: float = 0.0) -> CatalogSnapshot:
        """Read the catalog from now on from an in-memory copy of its file, copied again when
        the file changes (:class:`~tvreg.catalog.snapshot.CatalogSnapshot`): for a reader that
        serves many concurrent queries (``tvreg serve``). Writes still go to the file."""
        from tvreg.catalog.snapshot import CatalogSnapshot

        if not isinstance(self.catalog, CatalogSnapshot):
            self.catalog = CatalogSnapshot(self.catalog.path, self.catalog.timeout,
                                           check_interval=check_interval)
        return self.catalog

    @property
    def scratch(self) -> str:
        """The registry's scratch folder (staging of writes in progress)."""
        return os.path.join(self.root, SCRATCH_DIR)

    @property
    def lock_timeout(self) -> float:
        """Seconds to wait for the catalog or gc lock (``$TVREG_LOCK_TIMEOUT``)."""
        return self.catalog.timeout

    # --- records ---------------------------------------------------------------------------------

    def versions(self, name: str) -> list[VersionRecord]:
        """All version records of ``name`` from the store, oldest first."""
        return [r for _, r in sorted(documents.versions_in(self.store, name).items())]

    def read_record(self, key: str) -> VersionRecord:
        """The version record at store key ``key`` (checked)."""
        return documents.read_record(self.store, key)

    def read_tag(self, key: str) -> TagRecord:
        """The tag at store key ``key`` (checked)."""
        return documents.read_tag(self.store, key)

    def record(self, name: str, version: int) -> VersionRecord:
        """The record of ``name@version``; :class:`NotFound` if there is none."""
        try:
            return self.read_record(record_key(name, version))
        except MissingKey:
            raise NotFound(f"{name}@{version} does not exist") from None

    def tag_record(self, name: str, tag: str) -> TagRecord:
        """The tag ``name@tag``; :class:`NotFound` if there is none."""
        try:
            return self.read_tag(tag_key(name, tag))
        except MissingKey:
            raise NotFound(f"no tag {name}@{tag}") from None

    def all_records(self) -> list[VersionRecord]:
        """Every version record in the store."""
        return documents.read_many(self.read_record, documents.record_keys(self.store))

    def all_tags(self) -> list[TagRecord]:
        """Every tag in the store."""
        return documents.read_many(self.read_tag, documents.tag_keys(self.store))

    def tags_of(self, record: VersionRecord) -> list[str]:
        """Names of the tags that point at ``record`` (read from ``tags/NAME/``)."""
        tags = [self.read_tag(k) for k in documents.tag_keys(self.store, record.name)]
        return sorted(t.tag for t in tags if t.version == record.version)

    def manifest(self, vector_id: str) -> Manifest:
        """The manifest object ``vector_id`` (its bytes checked against the id)."""
        return Manifest.from_bytes(self.objects.get(vector_id))

    def readable(self, prefix: str, read: Callable[[str], Any], problems: list[str]) -> list:
        """The documents under ``prefix`` that ``read`` accepts; the others go to ``problems``."""
        return documents.readable(documents.json_keys(self.store, prefix), read, problems)

    # --- refs ------------------------------------------------------------------------------------

    def resolve_ref(self, ref: str | Ref) -> tuple[VersionRecord | None, str]:
        """``(record, vector_id)`` of a ref; record is None for an id prefix with no version.

        ``NAME`` is the latest version. A bare string that is both an existing name and a hex
        prefix means the name.
        """
        self.require()
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.name is not None and r.version is not None:
            rec = self.record(r.name, r.version)
            return rec, rec.vector_id
        if r.name is not None and r.tag is not None:
            tag = self.tag_record(r.name, r.tag)
            rec = self.record(r.name, tag.version)
            return rec, rec.vector_id
        if r.name is not None:
            versions = self.versions(r.name)
            if versions:
                return versions[-1], versions[-1].vector_id
        if r.id_prefix is not None:
            return self._resolve_prefix(r.id_prefix)
        if _HEX_RUN.fullmatch(r.text) and len(r.text) < MIN_ID_PREFIX:
            raise NotFound(f"no vector named {r.text!r} (an id prefix needs at least "
                           f"{MIN_ID_PREFIX} hex digits)")
        raise NotFound(f"no vector named {r.text!r}")

    def names_a_vector(self, name: str) -> bool:
        """Whether ``name`` is a valid name with at least one stored version."""
        try:
            validate_name(name)
        except InvalidName:
            return False
        return bool(self.versions(name))

    def _resolve_prefix(self, prefix: str) -> tuple[VersionRecord | None, str]:
        ids = [row["vector_id"] for row in self.catalog.rows(
            "SELECT vector_id FROM vectors WHERE starts_with(vector_id, ?) LIMIT 10", [prefix])]
        if not ids:
            raise NotFound(f"no vector named or with an id starting with {prefix!r}")
        if len(ids) > 1:
            raise AmbiguousRef(f"id prefix {prefix!r} matches {len(ids)} vectors; give more digits")
        rows = self.catalog.rows("SELECT name, version FROM versions WHERE vector_id = ? "
                                 "ORDER BY created_at, name, version LIMIT 1", [ids[0]])
        rec = self.record(rows[0]["name"], rows[0]["version"]) if rows else None
        return rec, ids[0]

    def get(self, ref: str) -> TaskVector:
        """The task vector a ref names; tensors are read lazily and verified."""
        from tvreg.tensors.taskvector import TaskVector

        record, vector_id = self.resolve_ref(ref)
        return TaskVector(self, self.manifest(vector_id), record, vector_id)

    # --- tensors ---------------------------------------------------------------------------------

    def load_tensor(self, entry: TensorEntry, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode one tensor of a manifest (into ``out`` if given), its blobs checked. An
        exact-mode tensor reads the base's tensor of its name too (:meth:`base_tensor`)."""
        from tvreg.tensors.encoding import decode_tensor, exact_codec

        exact = exact_codec(entry)
        base = None if exact is None else (lambda: self.base_tensor(exact.base, entry.name))
        return decode_tensor(entry, self.objects.get, self.executor("chunks"), out=out,
                             check_tensor=self.check_tensors, base=base)

    def finetuned_tensor(self, entry: TensorEntry, base: torch.Tensor) -> torch.Tensor:
        """The fine-tuned tensor an exact-mode entry rebuilds, bit for bit, over ``base`` (the
        base model's tensor of its name, in its dtype)."""
        from tvreg.tensors.encoding import restore_finetuned

        return restore_finetuned(entry, self.objects.get, base, self.executor("chunks"))

    def base_tensor(self, base_hash: str, name: str) -> torch.Tensor:
        """Tensor ``name`` of the base model ``base_hash``: from a checkpoint being applied to
        (:meth:`using_base`) or from the stored base; else :class:`BaseRequired`."""
        from tvreg.codecs.bitdiff import BaseRequired

        source = self._base_sources.get(base_hash)
        if source is None:
            source = self._stored_bases.get(base_hash)
        if source is None:  # not cached: absent ones are looked up again (a base may be added)
            source = self.stored_base(base_hash)
            if source is not None:
                self._stored_bases[base_hash] = source
        if source is None:
            raise BaseRequired(f"an exact-mode vector needs its base model (hash "
                               f"{base_hash[:12]}) to be read: store it with `tvreg base add "
                               "BASE`, or give it with --base")
        return source.tensor(name)

    @contextlib.contextmanager
    def using_base(self, checkpoint: Any, base_hash: str) -> Iterator[None]:
        """Within the block, exact-mode tensors of base ``base_hash`` read their base from
        ``checkpoint`` (whose hash the caller has checked)."""
        previous = self._base_sources.get(base_hash)
        self._base_sources[base_hash] = checkpoint
        try:
            yield
        finally:
            if previous is None:
                self._base_sources.pop(base_hash, None)
            else:
                self._base_sources[base_hash] = previous

    def executor(self, kind: str) -> ThreadPoolExecutor:
        """The registry's thread pool for one kind of work ("chunks": decoding a tensor's chunks;
        "operands": decoding the operands of a composition; "names": summing several names of a
        composition at once). Work of one kind waits only on kinds listed before it, never on
        its own pool, so nesting them cannot deadlock. Made on first use, shut down by close()."""
        from tvreg.tensors.encoding import default_workers

        with self._pool_lock:  # tensors may be loaded from several threads (prefetch)
            if kind not in self._pools:
                self._pools[kind] = ThreadPoolExecutor(default_workers(),
                                                       thread_name_prefix=f"tvreg-{kind}")
            return self._pools[kind]

    # --- stored bases ----------------------------------------------------------------------------

    def base_record(self, base_hash: str) -> BaseRecord | None:
        """The base record of ``base_hash``, or None if no such base is stored."""
        try:
            return documents.read_base(self.store, base_key(base_hash))
        except MissingKey:
            return None

    def base_manifest(self, record: BaseRecord, *, fresh: bool = False) -> Manifest:
        """The manifest a base record names, checked to be what the record says. Manifests are
        content-addressed (immutable), so a few recent ones are kept in memory: opening a
        stored base again reads only its record. ``fresh`` reads (and re-hashes) the object
        anyway."""
        with _BASE_MANIFESTS_LOCK:
            manifest = None if fresh else _BASE_MANIFESTS.get(record.manifest)
        if manifest is None:
            manifest = self.manifest(record.manifest)
            with _BASE_MANIFESTS_LOCK:
                if len(_BASE_MANIFESTS) >= _BASE_MANIFESTS_KEEP:
                    _BASE_MANIFESTS.pop(next(iter(_BASE_MANIFESTS)))
                _BASE_MANIFESTS[record.manifest] = manifest
        if not record.describes(manifest):
            raise FormatError(f"{record.key}: its manifest {record.manifest[:12]} does not match "
                              "it (base hash, architecture, sizes or skipped tensors differ)")
        return manifest

    def stored_base(self, base_hash: str, *, label: str | None = None) -> StoredBase | None:
        """The stored base of ``base_hash`` as a checkpoint (tensors decoded on demand, blobs
        verified), or None if none is stored."""
        from tvreg.tensors.stored_base import StoredBase

        record = self.base_record(base_hash)
        if record is None:
            return None
        return StoredBase(record, self.base_manifest(record), self.objects.get,
                          self.executor("chunks"), check_tensors=self.check_tensors,
                          label=label or f"stored base {base_hash[:12]}")

    # --- the catalog's rebuild -------------------------------------------------------------------

    def reindex(self) -> dict[str, Any]:
        """Rebuild the catalog from the object store (every record and manifest re-verified).

        Versions whose record or manifest cannot be read are left out and listed under
        ``problems`` (``verify`` says more); the rest is indexed.
        """
        if not self.exists:
            raise NotFound(f"no tvreg registry at {self.root}")
        problems: list[str] = []
        counts: dict[str, int] = {}

        def load() -> tuple[list[VersionRecord], dict[str, Manifest], list[TagRecord]]:
            problems.clear()
            records: list[VersionRecord] = []
            manifests: dict[str, Manifest] = {}
            broken: dict[str, str] = {}
            found = self.readable("refs", self.read_record, problems)

            def manifest(vid: str) -> Manifest | TvregError:
                try:
                    return self.manifest(vid)
                except TvregError as e:
                    return e

            vids = sorted({rec.vector_id for rec in found})
            for vid, got in zip(vids, documents.read_many(manifest, vids), strict=True):
                if isinstance(got, TvregError):
                    broken[vid] = str(got)
                else:
                    manifests[vid] = got
            for rec in found:
                vid = rec.vector_id
                if vid in broken:
                    problems.append(f"{rec.key}: manifest {vid[:12]}: {broken[vid]}")
                else:
                    records.append(rec)
            versions = {(r.name, r.version, r.vector_id) for r in records}
            tags = []
            for tag in self.readable("tags", self.read_tag, problems):
                if (tag.name, tag.version, tag.vector_id) in versions:
                    tags.append(tag)
                else:
                    problems.append(f"{tag.key}: points at a version that is missing or unreadable")
            counts.update(versions=len(records), vectors=len(manifests), tags=len(tags))
            return records, manifests, tags

        def bases(con: Any) -> None:
            counts.update(index.reindex_bases(
                self.store, lambda r: self.base_manifest(r, fresh=True), con, problems))

        self.catalog.rebuild(load, also=bases)  # load runs under the catalog's write lock
        return {**counts, "problems": problems}

    def close(self) -> None:
        """Shut down the registry's thread pools (a later read makes them again)."""
        with self._pool_lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown()
