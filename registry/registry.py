"""The registry: a local object store plus a DuckDB catalog, and the operations users call.

Write order (docs/format.md): blobs -> manifest -> version record -> catalog. The store is the
truth; the catalog is an index that :meth:`Registry.reindex` rebuilds from it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from tvreg.catalog.db import Catalog
from tvreg.codecs.choose import check_level
from tvreg.digest import parse_json
from tvreg.errors import (
    AmbiguousRef,
    CorruptObject,
    FormatError,
    InvalidInput,
    InvalidName,
    NotFound,
    RegistryError,
    TvregError,
)
from tvreg.format.manifest import Manifest, TensorEntry
from tvreg.format.records import Metadata, TagRecord, VersionRecord, record_key, tag_key, utc_now
from tvreg.names import _HEX as _HEX_RUN
from tvreg.names import MIN_ID_PREFIX, Ref, parse_ref, validate_name, validate_tag
from tvreg.storage.gclock import LOCK_FILE
from tvreg.storage.objects import ObjectDB, Staging, referencing
from tvreg.stores import LocalStore, MissingKey
from tvreg.stores.local import TMP_PREFIX
from tvreg.util import progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.compose.composition import Composition
    from tvreg.format.bases import BaseName, BaseRecord
    from tvreg.remote.config import Remote
    from tvreg.remote.pull import PullReport
    from tvreg.remote.push import PushReport
    from tvreg.repo.bases import AddBaseResult
    from tvreg.similarity.compute import SimilarityMatrix
    from tvreg.tensors.stored_base import StoredBase
    from tvreg.tensors.taskvector import TaskVector
    from tvreg.util.progress import Transfer

# torch and the modules that need it are imported where tensors are touched, so commands that
# only read the catalog (ls, sql, log, show) start in a fraction of the time

CONFIG_FORMAT = "tvreg.registry/1"
CATALOG_FILE = "catalog.duckdb"
CONFIG_FILE = "config.json"
SCRATCH_DIR = "tmp"
_LAYOUT_DIRS = {"objects", "refs", "tags", SCRATCH_DIR}
#: a name with at most this many versions has them all read on create (cheaper than a query)
_READ_ALL_VERSIONS = 32


class SimilarityWarning(UserWarning):
    """A version was stored but its similarities could not be computed (run `tvreg similarities`)."""




def _is_vector_id(text: str) -> bool:
    from tvreg.digest import is_hex_digest

    return is_hex_digest(text)


def default_root() -> str:
    return os.environ.get("TVREG_HOME") or os.path.join(os.path.expanduser("~"), ".tvreg")


def open(path: str | os.PathLike | None = None, *,  # noqa: A001 - the API name
         check_tensors: bool = False, options: dict[str, Any] | None = None,
         cache: str | os.PathLike | None = None) -> "Registry":
    """Open the registry at ``path`` (default ``$TVREG_HOME``, else ``~/.tvreg``).

    Nothing is created until the first write; reads of a registry that does not exist raise
    :class:`NotFound`. Every blob read is checked against its sha256 (its name); with
    ``check_tensors`` every decoded tensor is also checked against the sha256 in its manifest.

    A URL (``s3://bucket/team``, ``https://host/tvreg``, ``memory://x``, ``file:///srv/tvreg``)
    opens that remote read-only, with fsspec storage ``options`` and objects cached
    under ``cache`` (default ``$TVREG_CACHE``, else ``~/.cache/tvreg``); see
    :mod:`tvreg.remote.view`.
    """
    path = path if path is not None else default_root()
    from tvreg.remote.view import RemoteRegistry, is_url

    if is_url(path):
        return RemoteRegistry(path, options=options, cache=cache, check_tensors=check_tensors)
    if options or cache is not None:
        raise InvalidInput("options and cache are for registries opened by URL")
    return Registry(path, check_tensors=check_tensors)


@dataclass(frozen=True)
class CreateResult:
    record: VersionRecord
    created: bool            # False when an identical version already existed
    new_objects: int         # objects written (0 when every blob deduplicated)
    manifest: Manifest

    @property
    def ref(self) -> str:
        return self.record.ref


def _ls_query(all_versions: bool) -> str:
    """``ls``'s query; it runs on the catalog and on a remote's index alike (so the lossy
    codec and its error come from the recipe, which both have, not the catalog's columns)."""
    return f"""
        SELECT v.name, v.version, v.vector_id, v.task, v.dataset, v.lr, v.steps, v.n_params,
               v.raw_bytes, v.stored_bytes, v.codec,
               v.recipe->>'$.codec' AS codec_spec,
               TRY_CAST(v.recipe->'$.error'->>'$.rel_l2' AS DOUBLE) AS rel_l2,
               TRY_CAST(v.recipe->'$.error'->>'$.cosine' AS DOUBLE) AS cosine_to_exact,
               v.created_at,
               coalesce((SELECT list(t.tag ORDER BY t.tag) FROM tags t
                         WHERE t.name = v.name AND t.version = v.version), []) AS tags
        FROM {"versions" if all_versions else "latest"} v ORDER BY v.name, v.version"""


def _codec_fields(record: VersionRecord | None) -> dict[str, Any]:
    """``codec_spec``, ``rel_l2`` and ``cosine_to_exact`` of a version (None if lossless)."""
    from tvreg.catalog.db import CODEC_COLUMNS, codec_columns

    values = codec_columns(record) if record is not None else (None,) * len(CODEC_COLUMNS)
    return dict(zip(CODEC_COLUMNS, values))


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


#: the longest ``create.left_out_names`` value (a meta string holds at most 4096 characters)
LEFT_OUT_NAMES_CHARS = 1000


def _filter_meta(include: str | None, exclude: str | None, left_out: list[str]
                 ) -> dict[str, Any]:
    """The metadata that records a create's --include/--exclude: the patterns, how many tensors
    they left out and their sorted names (comma-separated; cut to about
    :data:`LEFT_OUT_NAMES_CHARS` characters with ", ... and N more")."""
    meta: dict[str, Any] = {"create.left_out": len(left_out)}
    if include is not None:
        meta["create.include"] = include
    if exclude is not None:
        meta["create.exclude"] = exclude
    shown: list[str] = []
    for i, n in enumerate(left_out):
        if len(", ".join(shown + [n])) > LEFT_OUT_NAMES_CHARS:
            shown.append(f"... and {len(left_out) - i} more")
            break
        shown.append(n)
    meta["create.left_out_names"] = ", ".join(shown)
    return dict(sorted(meta.items()))


class Registry:
    def __init__(self, root: str | os.PathLike, *, check_tensors: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        _refuse_file_root(self.root)
        self.check_tensors = check_tensors
        self.store = LocalStore(self.root)
        self.objects = ObjectDB(self.store)
        self.catalog = Catalog(os.path.join(self.root, CATALOG_FILE))
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pool_lock = threading.Lock()
        self._base_sources: dict[str, Any] = {}  # base hash -> open Checkpoint (exact mode)
        self._stored_bases: dict[str, Any] = {}  # base hash -> StoredBase, once opened

    def __repr__(self) -> str:
        return f"<tvreg.Registry {self.root}>"

    # --- layout ----------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.root, CONFIG_FILE))

    def init(self) -> bool:
        """Create the registry if needed; True if it was created now."""
        if self.exists:
            self._check_config()
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

    def _check_config(self) -> dict[str, Any]:
        try:
            config = parse_json(self.store.read(CONFIG_FILE))
        except ValueError:
            raise FormatError(f"{self.root}/{CONFIG_FILE} is not valid JSON") from None
        if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
            raise FormatError(f"{self.root}: unsupported registry format "
                              f"{config.get('format') if isinstance(config, dict) else config!r}")
        return config

    def _require(self) -> None:
        """Reads need an existing registry; a missing catalog is rebuilt from the store."""
        if not self.exists:
            raise NotFound(f"no tvreg registry at {self.root} (create a vector or run `tvreg init`)")
        self._check_config()
        if not os.path.exists(self.catalog.path):
            self.reindex()

    @property
    def scratch(self) -> str:
        """The registry's scratch folder (staging of writes in progress)."""
        return os.path.join(self.root, SCRATCH_DIR)

    @property
    def lock_timeout(self) -> float:
        """Seconds to wait for the catalog or gc lock (``$TVREG_LOCK_TIMEOUT``)."""
        return self.catalog.timeout

    # --- create ----------------------------------------------------------------------------------

    def create(self, name: str, base: "str | os.PathLike | Mapping[str, Any] | torch.nn.Module",
               finetuned: "str | os.PathLike | Mapping[str, Any] | torch.nn.Module | None" = None,
               *, lora: str | os.PathLike | None = None,
               task: str | None = None, dataset: str | None = None, lr: float | None = None,
               steps: int | None = None, meta: dict[str, Any] | None = None,
               allow_nonfinite: bool = False, level: int | None = None, similarities: bool = True,
               exact: bool = False, codec: str | None = None,
               include: str | None = None, exclude: str | None = None,
               on_progress: Callable[[int], None] | None = None) -> CreateResult:
        """Store τ = finetuned − base as a new version of ``name``; or, with ``lora`` (a PEFT
        LoRA adapter directory) instead of ``finetuned``, τ = scale · B·A on the adapted
        tensors and 0 elsewhere (:mod:`tvreg.tensors.lora`; its rank, alpha and rsLoRA flag go into the
        metadata as ``lora.*`` unless ``meta`` sets them).

        Everything the user can get wrong is checked before the registry is touched; a failure
        later (NaN found mid-way, I/O error) discards the staged objects and leaves the registry
        as it was. If an existing version of ``name`` has the same content and metadata, no new
        version is made and ``created`` is False. With ``similarities`` (the default) the new
        vector's statistics and its similarities with the stored vectors of its base are
        computed right after (docs/similarity.md).

        ``exact`` (exact mode) stores each tensor as the bit differences of the fine-tuned
        tensor over the base's, so that applying the vector at weight 1 rebuilds the fine-tuned
        checkpoint bit for bit; reading it needs the base, so the base is stored too
        (:meth:`add_base`, deduplicated) unless it already is.

        ``codec`` (a spec such as ``"int8"`` or ``"topk:density=0.1"``, docs/cli.md) stores the
        vector with that lossy codec (:mod:`tvreg.tensors.lossy`); the record's ``recipe`` keeps the
        codec and the error against the exact vector.

        ``base`` and ``finetuned`` are paths, or state dicts in memory (mappings of names to
        torch tensors or numpy arrays, or ``torch.nn.Module`` objects); they are only read.

        ``include`` / ``exclude`` (regexes, ``re.search`` on tensor names, as for
        :meth:`resolve`) select the tensors the vector is made of: base tensors they leave out
        are stored as zero deltas (the vector stays composable with the others of its base),
        fine-tuned-only tensors they leave out are ignored; the rest must match. The metadata
        records them as ``create.include``, ``create.exclude``, ``create.left_out`` (a count)
        and ``create.left_out_names``. A vector that is all zeros is stored with a
        :class:`~tvreg.errors.ZeroVectorWarning`.
        """
        import contextlib

        from tvreg.tensors.build import build_task_vector, plan_pair, work_total
        from tvreg.tensors.checkpoints import open_checkpoint

        validate_name(name)
        check_level(level)
        if (finetuned is None) == (lora is None):
            raise InvalidInput("give either a fine-tuned checkpoint or a LoRA adapter")
        if exact and lora is not None:
            raise InvalidInput("exact mode rebuilds a fine-tuned checkpoint: it does not apply "
                               "to a LoRA adapter (stored exactly as its factors anyway)")
        coder = None
        if codec is not None:
            from tvreg.tensors.lossy import LossyEncoder

            coder = LossyEncoder(codec, level)
            if exact:
                raise InvalidInput("--exact and --codec exclude each other: exact mode is "
                                   "lossless")
            if lora is not None:
                raise InvalidInput("a LoRA import is stored as its factors: --codec does not "
                                   "apply; import it, then `tvreg recode` it")
        if (include is not None or exclude is not None) and lora is not None:
            raise InvalidInput("--include/--exclude select tensors of a --finetuned checkpoint; "
                               "a LoRA adapter's tensors are its adapted layers")
        delta_of = adapter = None
        if lora is not None:
            from tvreg.tensors.lora import read_adapter

            adapter = read_adapter(lora)
            meta = {**adapter.summary(), **dict(meta or {})}
        Metadata(task=task, dataset=dataset, lr=lr, steps=steps, meta=dict(meta or {}))  # checks
        if include is not None or exclude is not None:
            from tvreg.tensors.build import compile_filter

            compile_filter(include, exclude)  # a bad regex is an error before anything is read
        with contextlib.ExitStack() as stack:
            cb = stack.enter_context(open_checkpoint(base, label="base"))
            cf = None
            left_out: frozenset[str] = frozenset()
            if adapter is None:
                cf = stack.enter_context(open_checkpoint(finetuned, label="finetuned"))
                plan = plan_pair(cb, cf, include, exclude)
                infos, left_out = plan.infos, plan.left_out
                if include is not None or exclude is not None:
                    meta = {**_filter_meta(include, exclude,
                                           sorted(left_out | set(plan.ignored))),
                            **dict(meta or {})}
            else:
                from tvreg.tensors.lora import delta_source

                infos = sorted(cb.infos(), key=lambda i: i.name)
                delta_of = delta_source(adapter, infos, allow_nonfinite=allow_nonfinite)
            if coder is not None:
                from tvreg.dtypes import is_floating, work_dtype
                from tvreg.tensors.build import finetuned_dtypes

                ft_dtypes = finetuned_dtypes(cf, infos)
                coder.check((i.name, work_dtype(i.dtype, ft_dtypes.get(i.name, i.dtype)),
                             tuple(i.shape)) for i in infos if is_floating(i.dtype))
            metadata = Metadata(task=task, dataset=dataset, lr=lr, steps=steps,
                                meta=dict(meta or {}))
            total = work_total(cb, cf, infos, left_out)
            zero: list[bool] = []
            with progress.bar(total * 4, f"create {name}") as bar:
                def tick(n: int) -> None:
                    bar.update(n)
                    if on_progress:
                        on_progress(n)
                manifest, vector_id, new_objects = self._write_vector(
                    lambda put: build_task_vector(cb, cf, infos, put,
                                                  allow_nonfinite=allow_nonfinite, level=level,
                                                  on_tensor=tick, delta_of=delta_of,
                                                  encode=coder and coder.submit,
                                                  exact=exact, left_out=left_out,
                                                  on_zero=lambda: zero.append(True)))
            if zero:  # said once the vector is written (it is stored anyway), at the caller
                import warnings

                from tvreg.errors import ZeroVectorWarning
                from tvreg.tensors.build import zero_vector_message

                warnings.warn(zero_vector_message(bool(left_out)), ZeroVectorWarning,
                              stacklevel=2)
            if exact:  # before the version exists: a reader never sees it without its base
                self._ensure_base(cb, manifest.base_hash)
        recipe = coder.recipe("create") if coder is not None else None
        record, created = self._claim_version(name, manifest, vector_id, metadata,
                                              recipe=recipe)
        self._finish_version(record, created, manifest, similarities)
        return CreateResult(record, created, new_objects, manifest)

    def _similarities_after_insert(self, *records: VersionRecord) -> None:
        """The versions are stored and indexed; similarities are derived data, so a failure
        here is a warning that says how to finish, not an error."""
        import warnings

        try:
            self.update_similarities([r.vector_id for r in records])
        except TvregError as e:
            refs = ", ".join(r.ref for r in records)
            warnings.warn(f"{refs} {'is' if len(records) == 1 else 'are'} stored, but the "
                          f"similarities were not computed ({e}); run `tvreg similarities`",
                          SimilarityWarning, stacklevel=3)

    def _write_vector(self, produce: Callable[[Callable[[bytes], str]], Manifest]
                      ) -> tuple[Manifest, str, int]:
        """Blobs, then the manifest: ``produce(put)`` encodes the tensors through ``put``.

        A registry that does not exist yet is created only once the vector is staged, so a
        failure leaves no trace; its staging area is then the system's temp folder.
        """
        existing = self.exists
        root_existed = os.path.isdir(self.root)
        staging = None
        try:
            staging = Staging(self.objects, self.scratch if existing else tempfile.gettempdir())
            manifest = produce(staging.put)
            if not existing:
                self.init()
            new_objects = staging.commit()
            manifest_id = self.objects.put(manifest.to_bytes())
        except OSError as e:
            self._undo_write(staging, existing, root_existed)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RegistryError(
                    f"no space left on the disk of registry {self.root}: nothing was stored; "
                    "free some space and run the command again") from None
            raise
        except BaseException:
            self._undo_write(staging, existing, root_existed)
            raise
        finally:
            if staging is not None:
                staging.close()
        return manifest, manifest_id, new_objects

    def _undo_write(self, staging: Staging | None, existing: bool, root_existed: bool) -> None:
        """After a failed :meth:`_write_vector`: a registry it created is removed again; in an
        existing one, the objects its commit added (no manifest or record names them yet) are
        deleted, so the registry is as it was (docs/cli.md, full disk)."""
        import shutil

        if not existing and self.exists:
            if not root_existed:
                shutil.rmtree(self.root, ignore_errors=True)
            else:  # the folder was there, empty: empty it again
                for entry in os.listdir(self.root):
                    path = os.path.join(self.root, entry)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
            return
        if staging is not None:
            for oid in staging.committed:
                with contextlib.suppress(OSError, TvregError):
                    self.objects.delete(oid)

    def _finish_version(self, record: VersionRecord, created: bool, manifest: Manifest,
                        similarities: bool) -> None:
        """Index a version just claimed, then compute its similarities. A version the write
        found already stored (``created`` False) may be what an earlier run of the same command
        left when it was killed after the record (docs/format.md §11): it is indexed if the
        catalog misses it, and its missing similarities computed, so running the command again
        completes it."""
        if created or self._unindexed([record]):
            self._index_new(record, manifest)
        if similarities and (created or self._without_stats([record])):
            self._similarities_after_insert(record)

    def _unindexed(self, records: list[VersionRecord]) -> list[VersionRecord]:
        """Those of ``records`` the catalog does not list (all, if it cannot be read)."""
        if not records or not os.path.exists(self.catalog.path):
            return list(records)
        try:
            rows = self.catalog.rows(
                "SELECT name, version, vector_id FROM versions WHERE name IN (SELECT unnest(?))",
                [sorted({r.name for r in records})])
        except TvregError:
            return list(records)
        have = {(r["name"], r["version"], r["vector_id"]) for r in rows}
        return [r for r in records if (r.name, r.version, r.vector_id) not in have]

    def _without_stats(self, records: list[VersionRecord]) -> list[VersionRecord]:
        """Those of ``records`` whose vector has no statistics in the catalog: its similarities
        were never computed (they are stored with its statistics, in one transaction)."""
        if not records:
            return []
        try:
            rows = self.catalog.rows("SELECT vector_id FROM vector_stats WHERE vector_id IN "
                                     "(SELECT unnest(?))", [sorted({r.vector_id for r in records})])
        except TvregError:
            return []  # no usable catalog: `tvreg similarities` says more
        have = {r["vector_id"] for r in rows}
        return [r for r in records if r.vector_id not in have]

    def _index_new(self, record: VersionRecord, manifest: Manifest) -> None:
        try:
            if os.path.exists(self.catalog.path):
                self.catalog.index([record], {record.vector_id: manifest})
            else:  # the catalog was deleted: rebuild it all, not just from this version on
                self.reindex()
        except TvregError as e:
            raise type(e)(f"{record.ref} is stored, but the catalog was not updated ({e}); "
                          "run `tvreg reindex`") from None

    def _claim_version(self, name: str, manifest: Manifest, vector_id: str, metadata: Metadata,
                       parents: tuple[str, ...] = (), recipe: dict[str, Any] | None = None
                       ) -> tuple[VersionRecord, bool]:
        """Claim the next number of ``name`` unless a version holds the same content. Only
        versions that can hold it are read: with many versions, those the catalog does not
        show under another vector (records never change, so its rows are exact)."""
        from tvreg.storage.documents import claim, parse_record_key, read_many, record_keys

        keys = {parse_record_key(k)[1]: k for k in record_keys(self.store, name)}
        other: dict[int, str] = {}
        if len(keys) > _READ_ALL_VERSIONS and os.path.exists(self.catalog.path):
            try:
                other = {r["version"]: r["vector_id"] for r in self.catalog.rows(
                    "SELECT version, vector_id FROM versions WHERE name = ? AND vector_id <> ?",
                    [name, vector_id])}
            except TvregError:
                other = {}  # no usable catalog: read them all
        candidates = [k for n, k in sorted(keys.items()) if n not in other]
        existing = {r.version: r for r in read_many(self._read_record, candidates)}
        record = VersionRecord(name, max(keys, default=0) + 1, vector_id, manifest.base_hash,
                               manifest.arch_fingerprint, metadata, utc_now(), parents, recipe)
        # its objects are still there (a concurrent gc cannot delete them until the record is)
        with referencing(self, [vector_id, *manifest.blob_ids()],
                         restore={vector_id: manifest.to_bytes()}):
            return claim(self.store, record, existing, taken=set(keys))

    # --- records ---------------------------------------------------------------------------------

    def versions(self, name: str) -> list[VersionRecord]:
        """All version records of ``name`` from the store, oldest first."""
        from tvreg.storage.documents import versions_in

        return [r for _, r in sorted(versions_in(self.store, name).items())]

    def _read_record(self, key: str) -> VersionRecord:
        from tvreg.storage.documents import read_record

        return read_record(self.store, key)

    def record(self, name: str, version: int) -> VersionRecord:
        try:
            return self._read_record(record_key(name, version))
        except MissingKey:
            raise NotFound(f"{name}@{version} does not exist") from None

    def tag_record(self, name: str, tag: str) -> TagRecord:
        try:
            return self._read_tag(tag_key(name, tag))
        except MissingKey:
            raise NotFound(f"no tag {name}@{tag}") from None

    def _read_tag(self, key: str) -> TagRecord:
        from tvreg.storage.documents import read_tag

        return read_tag(self.store, key)

    def all_records(self) -> list[VersionRecord]:
        from tvreg.storage.documents import read_many, record_keys

        return read_many(self._read_record, record_keys(self.store))

    def tags_of(self, record: VersionRecord) -> list[str]:
        """Names of the tags that point at ``record`` (read from ``tags/NAME/``)."""
        from tvreg.storage.documents import tag_keys

        tags = [self._read_tag(k) for k in tag_keys(self.store, record.name)]
        return sorted(t.tag for t in tags if t.version == record.version)

    def all_tags(self) -> list[TagRecord]:
        from tvreg.storage.documents import read_many, tag_keys

        return read_many(self._read_tag, tag_keys(self.store))

    def manifest(self, vector_id: str) -> Manifest:
        return Manifest.from_bytes(self.objects.get(vector_id))

    # --- refs ------------------------------------------------------------------------------------

    def resolve_ref(self, ref: str | Ref) -> tuple[VersionRecord | None, str]:
        """``(record, vector_id)`` of a ref; record is None for an id prefix with no version.

        ``NAME`` is the latest version. A bare string that is both an existing name and a hex
        prefix means the name.
        """
        self._require()
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

    def _names_a_vector(self, name: str) -> bool:
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

    def get(self, ref: str) -> "TaskVector":
        """The task vector a ref names; tensors are read lazily and verified."""
        from tvreg.tensors.taskvector import TaskVector

        record, vector_id = self.resolve_ref(ref)
        return TaskVector(self, self.manifest(vector_id), record, vector_id)

    def load_tensor(self, entry: TensorEntry, out: "torch.Tensor | None" = None) -> "torch.Tensor":
        """Decode one tensor of a manifest (into ``out`` if given), its blobs checked. An
        exact-mode tensor reads the base's tensor of its name too (:meth:`base_tensor`)."""
        from tvreg.tensors.encoding import decode_tensor, exact_codec

        exact = exact_codec(entry)
        base = None if exact is None else (lambda: self.base_tensor(exact.base, entry.name))
        return decode_tensor(entry, self.objects.get, self.executor("chunks"), out=out,
                             check_tensor=self.check_tensors, base=base)

    def finetuned_tensor(self, entry: TensorEntry, base: "torch.Tensor") -> "torch.Tensor":
        """The fine-tuned tensor an exact-mode entry rebuilds, bit for bit, over ``base`` (the
        base model's tensor of its name, in its dtype)."""
        from tvreg.tensors.encoding import restore_finetuned

        return restore_finetuned(entry, self.objects.get, base, self.executor("chunks"))

    def base_tensor(self, base_hash: str, name: str) -> "torch.Tensor":
        """Tensor ``name`` of the base model ``base_hash``: from a checkpoint being applied to
        (:meth:`using_base`) or from the stored base; else :class:`BaseRequired`."""
        from tvreg.codecs.bitdiff import BaseRequired

        source = self._base_sources.get(base_hash)
        if source is None:
            source = self._stored_base_checkpoint(base_hash)
        if source is None:
            raise BaseRequired(f"an exact-mode vector needs its base model (hash "
                               f"{base_hash[:12]}) to be read: store it with `tvreg base add "
                               "BASE`, or give it with --base")
        return source.tensor(name)

    def _stored_base_checkpoint(self, base_hash: str) -> Any:
        found = self._stored_bases.get(base_hash)
        if found is None:  # not cached: absent ones are looked up again (a base may be added)
            found = self.stored_base(base_hash)
            if found is not None:
                self._stored_bases[base_hash] = found
        return found

    def _ensure_base(self, checkpoint: Any, base_hash: str) -> None:
        """Store the base ``checkpoint`` (of hash ``base_hash``) unless it is stored."""
        from tvreg.repo.bases import add, base_record
        from tvreg.tensors.checkpoints import InMemoryCheckpoint

        if base_record(self, base_hash) is None:
            add(self, checkpoint if isinstance(checkpoint, InMemoryCheckpoint)
                else checkpoint.path)

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

    # --- composition -----------------------------------------------------------------------------

    def resolve(self, expression: str, *, method: str = "task_arithmetic",
                density: float | None = None, seed: int = 0, trim: str = "tensor",
                majority_sign: str = "total", lam: float = 1.0, include: str | None = None,
                exclude: str | None = None, allow_base_mismatch: bool = False) -> "Composition":
        """A composition of stored vectors, e.g. ``reg.resolve("0.5*a + b - c@2")``.

        Refs are resolved and compatibility (architecture, base) checked from the manifests;
        no tensor is read until the composition's tensors are asked for.
        """
        from tvreg.compose.composition import Composition, Operand
        from tvreg.compose.expr import ExpressionError, canonical, linear_terms, runs
        from tvreg.compose.merge import MergeParams

        params = MergeParams(method=method, density=density, seed=seed, trim=trim,
                             majority_sign=majority_sign)
        terms = linear_terms(expression)
        unspaced = runs(expression)
        for run in unspaced:  # `sent-topic` must never silently mean sent - topic
            if self._names_a_vector(run.name):
                raise ExpressionError(
                    f"{run.text!r} is a stored vector but reads as {run.spaced}: quote it "
                    f"(\"{run.text}\") to mean the vector, or write {run.spaced} with spaces to "
                    f"mean the difference", expression, run.column)
        operands = []
        for t in terms:
            try:
                operands.append(Operand(t.ref, t.coef, self.get(t.ref)))
            except NotFound as e:
                whole = next((r for r in unspaced if t.ref in r.parts), None)
                if whole is None:
                    raise
                raise NotFound(f"{e} (it is part of {whole.text!r}, read as {whole.spaced}; "
                               f"if {whole.text!r} is one name, quote it: \"{whole.text}\")"
                               ) from None
        return Composition(self, canonical(terms), operands, params, lam=lam, include=include,
                           exclude=exclude, allow_base_mismatch=allow_base_mismatch)

    def save_composition(self, name: str, comp: "Composition", *, task: str | None = None,
                         dataset: str | None = None, meta: dict[str, Any] | None = None,
                         level: int | None = None, similarities: bool = True) -> CreateResult:
        """Store a composition as a version of ``name``; its record keeps the recipe (expression,
        method, parameters, operand refs and vector ids) and the operands as parents."""
        import torch

        from tvreg.codecs import choose_pipeline
        from tvreg.format.manifest import Manifest as _Manifest
        from tvreg.tensors.encoding import TensorEncoder

        validate_name(name)
        check_level(level)
        metadata = Metadata(task=task, dataset=dataset, meta=dict(meta or {}))
        merged = comp.names()

        def produce(put: Callable[[bytes], str]) -> Manifest:
            futures = []
            with TensorEncoder(put) as encoder:
                tensors = comp.iter_tensors()
                for entry in comp.manifest.tensors:
                    if merged and merged[0] == entry.name:
                        merged.pop(0)
                        _, t = next(tensors)
                    else:  # left out by --include/--exclude: an unchanged (zero) delta
                        t = torch.zeros(entry.shape, dtype=torch.float32)
                    futures.append(encoder.submit(entry.name, t, entry.source_dtype,
                                                  choose_pipeline(t, t.element_size(),
                                                                  level=level)))
                entries = tuple(f.result() for f in futures)
            return _Manifest(comp.base_hash, comp.arch_fingerprint, entries, comp.manifest.skipped)

        manifest, vector_id, new_objects = self._write_vector(produce)
        record, created = self._claim_version(name, manifest, vector_id, metadata,
                                              tuple(comp.parents), comp.recipe)
        self._finish_version(record, created, manifest, similarities)
        return CreateResult(record, created, new_objects, manifest)

    def recode(self, ref: str, codec: str, *, name: str | None = None,
               level: int | None = None, similarities: bool = True) -> CreateResult:
        """Store the vector ``ref`` names again with a lossy ``codec`` (a spec, as for
        :meth:`create`) as a new version of ``name`` (default: ``ref``'s name), with the same
        metadata, ``parents`` = (the source's vector id,) and ``recipe`` = ``{"op": "recode",
        "codec", "source", "source_ref", "error"}``. The error is measured against the source
        vector as stored, so recoding an already lossy version reports the error added by
        this step only."""
        from tvreg.tensors.lossy import LossyEncoder, encode_vector
        from tvreg.tensors.taskvector import TaskVector

        coder = LossyEncoder(codec, level)
        if name is not None:
            validate_name(name)
        record, vector_id = self.resolve_ref(ref)
        if name is None and record is None:
            raise InvalidInput(f"{ref!r} names a vector with no version: give a name")
        name = name if name is not None else record.name
        vec = TaskVector(self, self.manifest(vector_id), record, vector_id)
        coder.check((t.name, t.dtype, t.shape) for t in vec.manifest.tensors)
        metadata = record.metadata if record is not None else Metadata()
        with progress.bar(vec.manifest.raw_bytes, f"recode {vec.ref}") as bar:
            manifest, new_id, new_objects = self._write_vector(
                lambda put: encode_vector(vec, coder, put, on_tensor=bar.update))
        recipe = coder.recipe("recode", source=vector_id,
                              source_ref=record.ref if record is not None else None)
        record, created = self._claim_version(name, manifest, new_id, metadata, (vector_id,),
                                              recipe)
        self._finish_version(record, created, manifest, similarities)
        return CreateResult(record, created, new_objects, manifest)

    def apply(self, comp: "Composition | str", base: "str | os.PathLike | None" = None,
              output: str | os.PathLike | None = None, *, dtype: str | None = None,
              allow_base_mismatch: bool | None = None) -> int:
        """Write θ_base + merged into a safetensors file. ``base`` is a checkpoint path, a
        state dict in memory (a mapping of names to torch tensors or numpy arrays, or a
        ``torch.nn.Module``), a stored base's name or hash prefix, or None: the stored base of
        the composition's base hash (:meth:`add_base`)."""
        from tvreg.compose.apply import apply_to_checkpoint, check_output_path
        from tvreg.repo.bases import open_base

        if output is None:
            raise InvalidInput("apply needs an output file")
        check_output_path(os.fspath(output),
                          [base] if isinstance(base, (str, os.PathLike)) else (), self.root)
        if isinstance(comp, str):
            comp = self.resolve(comp, allow_base_mismatch=bool(allow_base_mismatch))
        if allow_base_mismatch is None:
            allow_base_mismatch = comp.allow_base_mismatch
        return apply_to_checkpoint(comp, open_base(self, base, comp.base_hash),
                                   os.fspath(output), dtype=dtype,
                                   allow_base_mismatch=allow_base_mismatch)

    def search_coefficients(self, expression: str, evaluate: Callable[[dict], float],
                            grid: Any, *, base: Any = None, **params: Any) -> dict[str, Any]:
        """Pick λ the way the paper does: for each λ in ``grid``, build θ_base + λ·merged as a
        state dict, call ``evaluate(state_dict) -> score`` (e.g. validation accuracy) and return
        ``{"rows": [{"lambda", "score"}], "best_lambda", "best_score"}``.

        ``base`` is a checkpoint path, a stored base (its name or hash prefix; None: the
        expression's), or a state dict; the merged vector is computed once.
        """
        from tvreg.compose.composition import scale_grid, search
        from tvreg.repo.bases import open_base

        grid = scale_grid(grid)
        comp = self.resolve(expression, **params)
        merged = comp.state_dict()
        if base is None or isinstance(base, (str, os.PathLike)):
            with open_base(self, base, comp.base_hash) as ck:
                base_sd = {n: ck.tensor(n) for n in ck.names()}
        else:
            base_sd = dict(base)

        def make(lam: float) -> dict:
            return {n: (t.to(merged[n].dtype) + lam * merged[n]).to(t.dtype) if n in merged else t
                    for n, t in base_sd.items()}

        return search(make, evaluate, grid)

    # --- stored bases (tvreg.repo.bases) ---------------------------------------------------------------

    def add_base(self, path: "str | os.PathLike | Mapping[str, Any] | torch.nn.Module",
                 name: str | None = None, *,
                 level: int | None = None,
                 on_progress: Callable[[int], None] | None = None) -> "AddBaseResult":
        """Store every tensor of the base checkpoint at ``path`` (floating and not) under its
        base hash, and point base name ``name`` at it if given. A base already stored is not
        stored again (``created`` False, no object written). ``path`` may also be a state dict
        in memory (as for :meth:`create`)."""
        from tvreg.repo.bases import add

        return add(self, path, name, level=level, on_progress=on_progress)

    def stored_base(self, base_hash: str) -> "StoredBase | None":
        """The stored base of ``base_hash`` as a checkpoint (tensors decoded on demand, blobs
        verified), or None if none is stored."""
        from tvreg.repo.bases import stored_base

        return stored_base(self, base_hash)

    def base(self, ref: str) -> "BaseRecord":
        """The record of the stored base a name or a hash prefix (>= 8 hex digits) names."""
        from tvreg.repo.bases import resolve

        return resolve(self, ref)

    def bases(self) -> list[dict[str, Any]]:
        """One row per stored base (from the catalog), oldest first, with its names."""
        from tvreg.repo.bases import LS_QUERY

        self._require()
        return self.catalog.rows(LS_QUERY)

    def show_base(self, ref: str, *, tensors: bool = False) -> dict[str, Any]:
        from tvreg.repo.bases import show

        self._require()
        return show(self, ref, tensors=tensors)

    def name_base(self, ref: str, name: str) -> tuple["BaseName", str | None]:
        """Point base name ``name`` at the stored base ``ref``; returns the name and the hash it
        pointed at before (None if new or unchanged)."""
        from tvreg.repo.bases import set_name

        validate_name(name)
        self._require()
        return set_name(self, name, self.base(ref).base_hash)

    def export_base(self, ref: str, path: str | os.PathLike) -> int:
        """Write a stored base to a safetensors file (its tensors bit for bit as stored)."""
        from tvreg.repo.bases import export

        self._require()
        return export(self, ref, path)

    # --- remotes ---------------------------------------------------------------------------------

    def remotes(self) -> dict[str, "Remote"]:
        """The named remotes of ``config.json`` (docs/format.md §9)."""
        from tvreg.remote.config import load

        self._require()
        return load(self)

    def add_remote(self, name: str, url: str, options: dict[str, Any] | None = None) -> "Remote":
        """Add a remote: a URL (a path, ``file://``, ``s3://``, ``memory://``, ``http(s)://``…)
        and fsspec storage options without credentials."""
        from tvreg.remote.config import add

        return add(self, name, url, options)

    def remove_remote(self, name: str) -> "Remote":
        from tvreg.remote.config import remove

        self._require()
        return remove(self, name)

    def push(self, remote: str = "origin", refs: list[str] | None = None, *,
             progress: "Transfer | None" = None, with_base: bool = False) -> "PushReport":
        """Copy versions (default: all) with their objects and tags to a remote; see
        :mod:`tvreg.remote.push` for the order and the numbering rules. ``with_base`` also copies
        the stored bases of those versions (and their names)."""
        from tvreg.remote.push import push

        self._require()
        return push(self, remote, refs, progress=progress, with_base=with_base)

    def pull(self, remote: str = "origin", refs: list[str] | None = None, *,
             progress: "Transfer | None" = None, similarities: bool = True,
             with_base: bool = False) -> "PullReport":
        """Copy versions (default: all) of a remote here, every object checked against its
        hash first; see :mod:`tvreg.remote.pull`. ``with_base`` also copies the stored bases of
        those versions (and their names)."""
        from tvreg.remote.pull import pull

        self._require()
        return pull(self, remote, refs, progress=progress, similarities=similarities,
                    with_base=with_base)

    def remote_ls(self, remote: str = "origin", *, all_versions: bool = False
                  ) -> list[dict[str, Any]]:
        """What a remote holds, like :meth:`ls`, from its index (no tensors are read)."""
        return self.remote_sql(remote, _ls_query(all_versions))

    def remote_sql(self, remote: str, query: str) -> list[dict[str, Any]]:
        """A read-only query on a remote's index (tables ``versions``, ``tags``, view
        ``latest``), without pulling."""
        cols, rows = self.remote_sql_table(remote, query)
        return [dict(zip(cols, row)) for row in rows]

    def remote_sql_table(self, remote: str, query: str) -> tuple[list[str], list[tuple]]:
        from tvreg.remote.index import remote_sql

        return remote_sql(self.remote(remote), query)

    def remote(self, name: str) -> "Remote":
        from tvreg.remote.config import get

        return get(self, name)

    # --- similarities ----------------------------------------------------------------------------

    def similar(self, ref: str, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` versions of ``ref``'s base most similar to it, best first: dicts with ref,
        name, version, vector_id, cosine, sign_conflict_rate and exact (False: a sketch
        estimate). Versions holding ``ref``'s own vector are left out."""
        from tvreg.similarity.compute import similar

        self._require()
        return similar(self, ref, k)

    def similarity_matrix(self, refs: list[str] | None = None) -> "SimilarityMatrix":
        """Cosines between ``refs`` (default: the newest version of every name), with labels;
        refs of another base than the first are skipped and listed in ``skipped``."""
        from tvreg.similarity.compute import similarity_matrix

        self._require()
        return similarity_matrix(self, refs)

    def update_similarities(self, refs: list[str] | None = None, *,
                            on_vector: Callable[[str], None] | None = None) -> dict[str, int]:
        """Compute the statistics and pairs that are missing, for the bases of ``refs`` (refs
        or vector ids; default every base). Idempotent."""
        from tvreg.similarity.compute import update

        self._require()
        ids = None if refs is None else [r if _is_vector_id(r) else self.resolve_ref(r)[1]
                                         for r in refs]
        return update(self, ids, on_vector=on_vector)

    def rebuild_similarities(self, *, on_vector: Callable[[str], None] | None = None
                             ) -> dict[str, int]:
        """Recompute every statistic and pair from the stored vectors."""
        from tvreg.similarity.compute import clear, update

        self._require()
        clear(self)
        return update(self, None, on_vector=on_vector)

    # --- tags ------------------------------------------------------------------------------------

    def tag(self, ref: str, tag: str) -> tuple[TagRecord, int | None]:
        """Point ``NAME@tag`` at the version ``ref`` names; returns the tag and the version it
        pointed at before (None if new)."""
        validate_tag(tag)
        record, vector_id = self.resolve_ref(ref)
        if record is None:
            raise InvalidInput(f"{ref!r} names a vector with no version; tag a NAME@N ref")
        try:
            previous = self.tag_record(record.name, tag).version
        except NotFound:
            previous = None
        rec = TagRecord(record.name, tag, record.version, vector_id, utc_now())
        self.store.write(rec.key, rec.to_bytes())
        try:
            self._index_tag(rec.name, rec.tag)
        except TvregError as e:
            raise type(e)(f"{rec.name}@{rec.tag} is set, but the catalog was not updated ({e}); "
                          "run `tvreg reindex`") from None
        return rec, previous

    def _index_tag(self, name: str, tag: str) -> None:
        """Index the tag as its file holds it now, read under the catalog's write lock: of two
        concurrent `tag` commands, the one that writes the catalog last may not have written
        the file last, and must index the file's target, not its own."""
        def current() -> TagRecord | None:
            try:
                return self.tag_record(name, tag)
            except (NotFound, FormatError, CorruptObject):
                return None
        self.catalog.set_tag(name, tag, current)

    # --- queries ---------------------------------------------------------------------------------

    def ls(self, *, all_versions: bool = False) -> list[dict[str, Any]]:
        """One row per name (its latest version), or per version with ``all_versions``."""
        self._require()
        return self.catalog.rows(_ls_query(all_versions))

    def log(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name``, newest first, with its tags."""
        validate_name(name)
        self._require()
        rows = self.catalog.rows("""
            SELECT v.name, v.version, v.vector_id, v.task, v.dataset, v.lr, v.steps, v.meta,
                   v.n_params, v.stored_bytes, v.codec_spec, v.rel_l2, v.cosine_to_exact,
                   v.created_at, v.parents,
                   coalesce((SELECT list(t.tag ORDER BY t.tag) FROM tags t
                             WHERE t.name = v.name AND t.version = v.version), []) AS tags
            FROM versions v WHERE v.name = ? ORDER BY v.version DESC""", [name])
        if not rows:
            raise NotFound(f"no vector named {name!r}")
        for r in rows:
            r["meta"] = json.loads(r["meta"])
            r["parents"] = json.loads(r["parents"])
        return rows

    def show(self, ref: str, *, tensors: bool = False) -> dict[str, Any]:
        from tvreg.compose.composition import dtype_label

        vec = self.get(ref)
        m = vec.manifest
        out: dict[str, Any] = {
            "ref": vec.ref, "name": vec.name, "version": vec.version, "vector_id": vec.vector_id,
            "base_hash": m.base_hash, "arch_fingerprint": m.arch_fingerprint,
            **({k: v for k, v in vec.metadata.items()} if vec.record else {}),
            "tags": self.tags_of(vec.record) if vec.record else [],
            "n_tensors": len(m.tensors), "n_params": m.n_params, "raw_bytes": m.raw_bytes,
            "stored_bytes": m.stored_bytes, "codec": m.codec_label,
            **_codec_fields(vec.record), "skipped": [s.name for s in m.skipped],
            "dtypes": dtype_label(m),
        }
        if tensors:
            out["tensors"] = [{"name": t.name, "dtype": t.dtype, "source_dtype": t.source_dtype,
                               "finetuned_dtype": t.ft_dtype, "shape": list(t.shape), "stored_bytes": t.stored_nbytes,
                               "chunks": len(t.chunks), "codec": t.codecs.label}
                              for t in m.tensors]
        return out

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Run a read-only SQL query on the catalog; rows as dicts."""
        cols, rows = self.sql_table(query)
        return [dict(zip(cols, row)) for row in rows]

    def sql_table(self, query: str) -> tuple[list[str], list[tuple]]:
        self._require()
        return self.catalog.sql(query)

    # --- export ----------------------------------------------------------------------------------

    def export(self, ref: str, path: str | os.PathLike) -> int:
        """Write the task vector to a safetensors file, one tensor in memory at a time."""
        from tvreg.compose.apply import check_output_path
        from tvreg.tensors.safetensors_io import write_safetensors

        path = check_output_path(os.fspath(path), registry=self.root)
        vec = self.get(ref)
        specs = [(t.name, t.dtype, t.shape) for t in vec.manifest.tensors]
        metadata = {"tvreg.vector_id": vec.vector_id, "tvreg.base_hash": vec.base_hash,
                    "tvreg.arch_fingerprint": vec.arch_fingerprint, "tvreg.ref": vec.ref}
        with progress.bar(vec.manifest.raw_bytes, f"export {vec.ref}") as bar:
            def stream():
                for name, t in vec.iter_tensors(prefetch=1):
                    yield name, t
                    bar.update(t.numel() * t.element_size())
            return write_safetensors(os.fspath(path), specs, stream(), metadata)

    # --- maintenance -----------------------------------------------------------------------------

    def _readable(self, prefix: str, read: Callable[[str], Any], problems: list[str]) -> list:
        """The documents under ``prefix`` that ``read`` accepts; the others go to ``problems``."""
        from tvreg.storage.documents import readable

        return readable([k for k in self.store.list(prefix) if k.endswith(".json")], read,
                        problems)

    def reindex(self) -> dict[str, Any]:
        """Rebuild the catalog from the object store (every record and manifest re-verified).

        Versions whose record or manifest cannot be read are left out and listed under
        ``problems`` (``verify`` says more); the rest is indexed.
        """
        if not self.exists:
            raise NotFound(f"no tvreg registry at {self.root}")
        from tvreg.storage.documents import read_many

        problems: list[str] = []
        counts: dict[str, int] = {}

        def load():
            problems.clear()
            records: list[VersionRecord] = []
            manifests: dict[str, Manifest] = {}
            broken: dict[str, str] = {}
            found = self._readable("refs", self._read_record, problems)

            def manifest(vid: str) -> Manifest | TvregError:
                try:
                    return self.manifest(vid)
                except TvregError as e:
                    return e

            vids = sorted({rec.vector_id for rec in found})
            for vid, got in zip(vids, read_many(manifest, vids)):
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
            for tag in self._readable("tags", self._read_tag, problems):
                if (tag.name, tag.version, tag.vector_id) in versions:
                    tags.append(tag)
                else:
                    problems.append(f"{tag.key}: points at a version that is missing or unreadable")
            counts.update(versions=len(records), vectors=len(manifests), tags=len(tags))
            return records, manifests, tags

        def bases(con) -> None:
            from tvreg.repo.bases import reindex_into

            counts.update(reindex_into(self, con, problems))

        self.catalog.rebuild(load, also=bases)  # load runs under the catalog's write lock
        return {**counts, "problems": problems}

    def verify(self, *, deep: bool = False, on_progress: Callable[[int], None] | None = None,
               repair: str | None = None):
        """Check the whole registry (see docs/format.md §12); ``deep`` also decodes every
        stored tensor and checks its sha256.

        ``repair`` (a remote's name) then puts back every damaged or missing object, each
        checked against its sha256, and the records, tags and base documents the catalog
        vouches for, from that remote, and verifies again (docs/format.md §12.1): the report
        is the last verification's, with ``repaired`` and ``unrepaired`` filled in."""
        self._require()
        if repair is not None:
            return self._repair(repair, deep=deep, on_progress=on_progress)
        from tvreg.maintenance.verify import verify

        return verify(self, on_progress=on_progress, deep=deep)

    def _repair(self, remote: str, **kwargs: Any):
        from tvreg.maintenance.repair import repair
        from tvreg.remote.config import get

        return repair(self, get(self, remote), **kwargs)

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False,
           remote: str | None = None):
        """Delete unreferenced objects older than ``grace_seconds`` here, or with ``remote``
        on that remote (under its gc lock: :mod:`tvreg.remote.gc`; raises
        :class:`~tvreg.remote.gc.RemoteBusy` while a push to it is in progress)."""
        self._require()
        if remote is not None:
            from tvreg.remote.config import get
            from tvreg.remote.gc import gc_remote, notes

            r = get(self, remote)
            pending = notes(self, r.name)
            rep = gc_remote(r, grace_seconds=grace_seconds, dry_run=dry_run)
            if not dry_run:  # notes of failed pushes: done with, unless an orphan they list
                kept = set(rep.kept)  # was younger than the grace (the next push deletes it)
                for key, oids in pending.items():
                    if not oids & kept:
                        self.store.delete(key)
            return rep
        from tvreg.maintenance.gc import gc

        return gc(self, grace_seconds=grace_seconds, dry_run=dry_run)

    def close(self) -> None:
        with self._pool_lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
