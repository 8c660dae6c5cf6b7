"""Stored bases: a base model's weights kept in the registry's object store, under its base hash.

``add`` stores every tensor of a checkpoint (floating and not, so the model can be rebuilt)
through the same staging as a vector: blobs, then a manifest (``tvreg.manifest/1``, with the
checkpoint's dtypes and nothing skipped), then the base record ``bases/BASE_HASH.json``, then
the catalog. Names (``bases/names/NAME.json``) are movable pointers. A stored base is read like
a checkpoint file (:class:`tvreg.tensors.stored_base.StoredBase`), so ``apply`` without ``--base``
uses the base of the vectors' hash. See docs/format.md §8.4.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvreg import dtypes
from tvreg.errors import (
    AmbiguousRef,
    BaseNotStored,
    FormatError,
    IncompatibleCheckpoints,
    InvalidInput,
    InvalidName,
    NotFound,
)
from tvreg.format.bases import MIN_HASH_PREFIX, BaseName, BaseRecord, base_name_key
from tvreg.format.records import utc_now
from tvreg.names import validate_name
from tvreg.repo.index import base_name_row, base_row
from tvreg.repo.write import write_vector
from tvreg.storage.documents import base_keys, base_name_keys, read_base, read_base_name
from tvreg.stores import MissingKey
from tvreg.util import progress
from tvreg.util.listings import listing

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

    import torch

    from tvreg.codecs import CodecPipeline
    from tvreg.format.manifest import Manifest
    from tvreg.repo.repo import Repo
    from tvreg.tensors.checkpoints import Checkpoint, TensorInfo
    from tvreg.tensors.stored_base import StoredBase

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class AddBaseResult:
    """What ``add`` did: the base's ``record``, whether it stored it now (``created``), the
    objects it wrote, and the base name it set (with the hash that name pointed at before)."""

    record: BaseRecord
    created: bool               # False: this base was already stored
    new_objects: int            # objects written (0 when the base was already stored)
    name: str | None = None
    previous: str | None = None  # the base hash the name pointed at before (None: a new name)

    @property
    def base_hash(self) -> str:
        """The stored base's hash."""
        return self.record.base_hash


def pipeline_for(tensor: torch.Tensor, level: int | None = None) -> CodecPipeline:
    """The codec pipeline of a base tensor: the lossless choice every writer makes."""
    from tvreg.codecs import choose_pipeline

    return choose_pipeline(tensor, tensor.element_size(), level=level)


# --- reading ----------------------------------------------------------------------------------


def _is_prefix(text: str) -> bool:
    return MIN_HASH_PREFIX <= len(text) <= 64 and _HEX.fullmatch(text) is not None


def resolve(repo: Repo, ref: str) -> BaseRecord:
    """The stored base a NAME or a hash prefix (>= 8 hex digits) names; names win."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput("invalid base: empty")
    try:
        validate_name(ref)
        is_name = True
    except InvalidName:
        is_name = False
    if is_name:
        try:
            named = read_base_name(repo.store, base_name_key(ref))
        except MissingKey:
            pass
        else:
            record = repo.base_record(named.base_hash)
            if record is None:  # a name of a base whose weights are not here (see name_hash)
                raise BaseNotStored(f"base {ref!r} ({named.base_hash[:12]}) is named, but its "
                               "weights are not stored: pass the base checkpoint with --base P, "
                               "or store it with `tvreg base add P`")
            return record
    if _is_prefix(ref):
        if len(ref) == 64:
            record = repo.base_record(ref)
            found = [record] if record else []
        else:
            found = [read_base(repo.store, k) for k in base_keys(repo.store)
                     if k[len("bases/"):].startswith(ref)]
        if len(found) > 1:
            raise AmbiguousRef(f"base hash prefix {ref!r} matches {len(found)} stored bases; "
                               "give more digits")
        if found:
            return found[0]
    elif not is_name:
        raise InvalidInput(f"invalid base {ref!r}: a base name ([a-z0-9][a-z0-9._/-]*) or a "
                           f"hash prefix of {MIN_HASH_PREFIX}-64 lowercase hex digits")
    raise NotFound(f"no stored base named or with a hash starting with {ref!r} "
                   "(`tvreg base ls` lists them)")


def name_hash(repo: Repo, ref: str) -> str:
    """The base hash a base name may point at (``tvreg base name REF NAME``): a stored base's
    (by name or hash prefix), else the base hash of stored vectors that starts with ``ref``
    (>= 8 hex digits), else ``ref`` itself if it is a full 64-digit hash, or what an existing
    base name points at. So a base is named even when its weights are not stored, e.g. for
    the ``base_model`` of the model cards tvreg writes."""
    try:
        return resolve(repo, ref).base_hash
    except NotFound:  # also BaseNotStored: a name of an unstored base, looked up below
        pass
    try:
        validate_name(ref)
        named = read_base_name(repo.store, base_name_key(ref))
    except (InvalidName, MissingKey):
        pass
    else:
        return named.base_hash
    if _is_prefix(ref):
        rows = repo.catalog.rows("SELECT DISTINCT base_hash FROM versions "
                                 "WHERE starts_with(base_hash, ?) ORDER BY base_hash", [ref])
        if len(rows) > 1:
            raise AmbiguousRef(f"base hash prefix {ref!r} matches {len(rows)} bases of stored "
                               "vectors; give more digits")
        if rows:
            return str(rows[0]["base_hash"])
        if len(ref) == 64:
            return ref
    raise NotFound(f"no stored base, and no stored vector whose base hash starts with {ref!r}; "
                   "give a full 64-digit base hash to name a base no vector uses yet")


def names_of(repo: Repo, base_hash: str | None = None) -> dict[str, str]:
    """Base names and the hashes they point at (those of ``base_hash`` only, if given); a
    damaged name file is left out (``verify`` reports it)."""
    from tvreg.storage.documents import or_none, read_many

    read = or_none(lambda k: read_base_name(repo.store, k))
    out = {}
    for doc in read_many(read, base_name_keys(repo.store)):
        if doc is not None and (base_hash is None or doc.base_hash == base_hash):
            out[doc.name] = doc.base_hash
    return out


def label(repo: Repo, record: BaseRecord) -> str:
    """How messages name a stored base: its first name, else its hash prefix."""
    names = sorted(names_of(repo, record.base_hash))
    return f"stored base {names[0] if names else record.base_hash[:12]}"


def open_base(repo: Repo, base: str | os.PathLike | Checkpoint | None,
              base_hash: str) -> Checkpoint:
    """What ``apply``'s ``base`` means: None, the stored base of ``base_hash`` (the vectors'
    base); a state dict in memory or an existing path, that checkpoint; otherwise a stored
    base's name or hash prefix."""
    from tvreg.tensors.checkpoints import Checkpoint, is_in_memory, open_checkpoint

    if isinstance(base, Checkpoint):
        return base
    if is_in_memory(base):
        return open_checkpoint(base, label="base")
    if base is None:
        ck = repo.stored_base(base_hash)
        if ck is None:
            raise InvalidInput(f"no stored base for {base_hash[:12]}…: pass --base P or run "
                               "`tvreg base add P`")
        record = ck.record
        ck.path = label(repo, record)
        return ck
    path = os.fspath(base)
    if os.path.exists(path):
        return open_checkpoint(path)
    try:
        record = resolve(repo, path)
    except (AmbiguousRef, BaseNotStored):
        raise
    except InvalidInput:  # not found, or neither a name nor a hash prefix
        raise InvalidInput(f"{path}: no such file or directory, nor a stored base name or "
                           "hash prefix") from None
    ck = _open_stored(repo, record)
    ck.path = label(repo, record)
    return ck


def _open_stored(repo: Repo, record: BaseRecord) -> StoredBase:
    """The stored base ``record`` describes (just resolved), as a checkpoint."""
    ck = repo.stored_base(record.base_hash)
    if ck is None:  # its record was deleted since it was resolved
        raise NotFound(f"stored base {record.base_hash[:12]} is no longer stored")
    return ck


# --- adding -----------------------------------------------------------------------------------


def add(repo: Repo, path: str | os.PathLike | Mapping[str, Any] | torch.nn.Module | Checkpoint,
        name: str | None = None, *,
        level: int | None = None,
        on_progress: Callable[[int], None] | None = None) -> AddBaseResult:
    """Store every tensor of the checkpoint at ``path`` as a base; see :meth:`Registry.add_base`.
    ``path`` may also be a state dict in memory, or an open :class:`Checkpoint` (left open)."""
    import contextlib

    from tvreg.digest import arch_fingerprint
    from tvreg.tensors.checkpoints import Checkpoint, open_checkpoint

    repo.require_writable()
    if name is not None:
        validate_name(name)
    with (contextlib.nullcontext(path) if isinstance(path, Checkpoint)
          else open_checkpoint(path, label="base")) as ck:
        infos = ck.infos()
        if not any(dtypes.is_floating(i.dtype) for i in infos):
            raise InvalidInput(f"{ck.path} has no floating tensors: not a model's weights")
        fingerprint = arch_fingerprint((i.name, i.dtype, i.shape) for i in infos)
        total = sum(i.numel * dtypes.itemsize(i.dtype) for i in infos)
        record = None
        if repo.exists and any(r.arch_fingerprint == fingerprint for r in _records(repo)):
            # a base of this architecture is stored: hash first (reading is cheaper than
            # encoding), and store nothing if it is this one
            base_hash, digests = _hash(ck, infos)
            record = repo.base_record(base_hash)
            if record is not None and _holds(repo, record, ck, infos, digests):
                previous = set_name(repo, name, record.base_hash)[1] if name else None
                return AddBaseResult(record, False, 0, name, previous)
        with progress.bar(total, f"base add {os.path.basename(ck.path)}") as bar:
            def tick(n: int) -> None:
                bar.update(n)
                if on_progress:
                    on_progress(n)

            had_manifest: list[bool] = []

            def produce(put: Callable[[bytes], str]) -> Manifest:
                manifest = _encode(ck, infos, fingerprint, put, level, tick)
                had_manifest.append(repo.exists and repo.objects.exists(manifest.vector_id))
                return manifest

            manifest, manifest_id, new_objects = write_vector(repo, produce)
    new_objects += 0 if had_manifest[0] else 1
    record = BaseRecord.of(manifest, manifest_id, utc_now())
    from tvreg.storage.objects import referencing

    with referencing(repo, [manifest_id, *manifest.blob_ids()],  # still there: see gclock
                     restore={manifest_id: manifest.to_bytes()}):
        created = repo.store.write_new(record.key, record.to_bytes())
    if not created:  # stored meanwhile, or an earlier add whose objects are now repaired
        record = read_base(repo.store, record.key)
        if record.manifest != manifest_id:  # the first stored wins
            manifest = repo.base_manifest(record)
    _index(repo, [record], {record.base_hash: manifest})
    previous = set_name(repo, name, record.base_hash)[1] if name else None
    return AddBaseResult(record, created, new_objects, name, previous)


def _records(repo: Repo) -> list[BaseRecord]:
    from tvreg.storage.documents import or_none, read_many

    read = or_none(lambda k: read_base(repo.store, k))
    return [r for r in read_many(read, base_keys(repo.store)) if r is not None]


def _hash(ck: Checkpoint, infos: list[TensorInfo]) -> tuple[str, dict[str, str]]:
    """The checkpoint's base hash and the sha256 of every tensor's bytes, in one pass."""
    from tvreg.digest import BaseHasher, tensor_bytes

    hasher, digests = BaseHasher(), {}
    for info in infos:
        raw = tensor_bytes(ck.tensor(info.name))
        if dtypes.is_floating(info.dtype):
            hasher.update(info.name, info.dtype, info.shape, raw)
        digests[info.name] = hashlib.sha256(raw).hexdigest()
    return hasher.hexdigest(), digests


def _holds(repo: Repo, record: BaseRecord, ck: Checkpoint, infos: list[TensorInfo],
           digests: dict[str, str]) -> bool:
    """Whether the stored base ``record`` holds exactly this checkpoint, all its objects there.
    A damaged stored base (False) is repaired by storing the checkpoint again. One base hash
    names one stored base: a checkpoint with the same floating tensors but other non-floating
    ones is refused."""
    from tvreg.errors import CorruptObject

    try:
        manifest = repo.base_manifest(record)
    except (CorruptObject, FormatError):
        return False
    have = {t.name: (t.source_dtype, tuple(t.shape), t.sha256) for t in manifest.tensors}
    want = {i.name: (i.dtype, tuple(i.shape), digests[i.name]) for i in infos}
    if have != want:
        differ = sorted(n for n in have.keys() | want.keys() if have.get(n) != want.get(n))
        raise IncompatibleCheckpoints(
            f"{ck.path} has the base hash of stored base {record.base_hash[:12]} but other "
            f"non-floating tensors ({listing(differ)}); a base hash names one "
            "stored base")
    return all(repo.objects.exists(b) for b in manifest.blob_ids())


def _encode(ck: Checkpoint, infos: list[TensorInfo], fingerprint: str,
            put: Callable[[bytes], str], level: int | None, tick: Callable[[int], None]
            ) -> Manifest:
    from tvreg.digest import BaseHasher, tensor_bytes
    from tvreg.format.manifest import Manifest
    from tvreg.tensors.encoding import TensorEncoder

    hasher = BaseHasher()
    futures = []
    with TensorEncoder(put) as encoder:
        for info in infos:
            t = ck.tensor(info.name)
            if dtypes.is_floating(info.dtype):
                hasher.update(info.name, info.dtype, info.shape, tensor_bytes(t))
            futures.append(encoder.submit(info.name, t, info.dtype, pipeline_for(t, level)))
            tick(t.numel() * t.element_size())
            del t
        tensors = tuple(f.result() for f in futures)
    return Manifest(hasher.hexdigest(), fingerprint, tensors, ())


# --- names ------------------------------------------------------------------------------------


def set_name(repo: Repo, name: str, base_hash: str) -> tuple[BaseName, str | None]:
    """Point base name ``name`` at ``base_hash`` (a stored base, or a base whose weights are not
    stored: :func:`name_hash`); returns the name and the
    hash it pointed at before (None if the name is new; ``base_hash`` if unchanged). A
    damaged name file is replaced."""
    from tvreg.errors import CorruptObject

    repo.require_writable()
    validate_name(name)
    try:
        current = read_base_name(repo.store, base_name_key(name))
    except (MissingKey, FormatError, CorruptObject):
        current = None
    if current is not None and current.base_hash == base_hash:
        return current, base_hash
    doc = BaseName(name, base_hash, utc_now())
    repo.store.write(doc.key, doc.to_bytes())
    _index_name(repo, doc)
    return doc, current.base_hash if current else None


# --- the catalog ------------------------------------------------------------------------------


def _index(repo: Repo, records: list[BaseRecord], manifests: dict[str, Manifest]) -> None:
    from tvreg.catalog.db import insert_rows
    from tvreg.errors import TvregError

    try:
        if not os.path.exists(repo.catalog.path):
            repo.reindex()
            return
        with repo.catalog.writer() as con:
            for r in records:
                con.execute("DELETE FROM bases WHERE base_hash = ?", [r.base_hash])
            insert_rows(con, "bases", [base_row(r, manifests[r.base_hash]) for r in records])
    except TvregError as e:
        raise type(e)(f"base {', '.join(r.base_hash[:12] for r in records)} is stored, but the "
                      f"catalog was not updated ({e}); run `tvreg reindex`") from None


def _index_name(repo: Repo, doc: BaseName) -> None:
    """Index base name ``doc.name`` as its file holds it now, read under the catalog's write
    lock (names move like tags: the last to index must index the last file)."""
    from tvreg.catalog.db import insert_rows
    from tvreg.errors import CorruptObject

    if not os.path.exists(repo.catalog.path):
        repo.reindex()
        return
    with repo.catalog.writer() as con:
        try:
            current = read_base_name(repo.store, doc.key)
        except (MissingKey, FormatError, CorruptObject):
            current = None
        con.execute("DELETE FROM base_names WHERE name = ?", [doc.name])
        if current is not None:
            insert_rows(con, "base_names", [base_name_row(current)])


# --- listing, showing, exporting --------------------------------------------------------------


LS_QUERY = """
    SELECT b.base_hash,
           coalesce((SELECT list(n.name ORDER BY n.name) FROM base_names n
                     WHERE n.base_hash = b.base_hash), []) AS names,
           b.arch_fingerprint, b.n_tensors, b.n_floating, b.n_params, b.raw_bytes,
           b.stored_bytes, b.codec, b.created_at,
           (SELECT count(*) FROM versions v WHERE v.base_hash = b.base_hash) AS n_versions
    FROM bases b ORDER BY b.created_at, b.base_hash"""


def show_base(repo: Repo, ref: str, *, tensors: bool = False) -> dict[str, Any]:
    """A stored base described (``tvreg base show``); its tensors too with ``tensors``."""
    record = resolve(repo, ref)
    manifest = repo.base_manifest(record)
    out: dict[str, Any] = {
        "base_hash": record.base_hash, "names": sorted(names_of(repo, record.base_hash)),
        "arch_fingerprint": record.arch_fingerprint, "manifest": record.manifest,
        "n_tensors": record.n_tensors,
        "n_floating": sum(1 for t in manifest.tensors if dtypes.is_floating(t.source_dtype)),
        "n_params": record.n_params, "raw_bytes": record.raw_bytes,
        "stored_bytes": record.stored_bytes, "codec": manifest.codec_label,
        "created_at": record.created_at,
    }
    if tensors:
        out["tensors"] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                           "stored_bytes": t.stored_nbytes, "chunks": len(t.chunks)}
                          for t in manifest.tensors]
    return out


def export_base(repo: Repo, ref: str, path: str | os.PathLike) -> int:
    """Write the stored base to a safetensors file, one tensor in memory at a time; its
    tensors are bit for bit those of the checkpoint it was stored from."""
    from tvreg.tensors.outputs import check_output_path
    from tvreg.tensors.safetensors_io import write_safetensors

    record = resolve(repo, ref)
    output = check_output_path(os.fspath(path), registry=repo.root)
    ck = _open_stored(repo, record)
    entries = ck.manifest.tensors
    specs = [(t.name, t.dtype, t.shape) for t in entries]
    metadata = {"tvreg.base_hash": record.base_hash,
                "tvreg.arch_fingerprint": record.arch_fingerprint}
    with progress.bar(record.raw_bytes, f"base export {record.base_hash[:12]}") as bar:
        def stream():
            for t in entries:
                tensor = ck.tensor(t.name)
                yield t.name, tensor
                bar.update(t.nbytes)
        return write_safetensors(output, specs, stream(), metadata)
