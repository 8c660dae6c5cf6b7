"""The catalog rows of stored bases and base names, and their part of a catalog rebuild."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvreg import dtypes
from tvreg.catalog.db import insert_rows, timestamp
from tvreg.errors import TvregError
from tvreg.format.bases import BaseName, BaseRecord
from tvreg.storage.documents import (
    base_keys,
    base_name_keys,
    read_base,
    read_base_name,
    read_many,
    readable,
)

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.stores import Store


def base_row(record: BaseRecord, manifest: Manifest) -> tuple:
    """The ``bases`` row of a stored base."""
    return (record.base_hash, record.arch_fingerprint, record.manifest, record.n_tensors,
            sum(1 for t in manifest.tensors if dtypes.is_floating(t.source_dtype)),
            record.n_params, record.raw_bytes, record.stored_bytes, manifest.codec_label,
            timestamp(record.created_at))


def base_name_row(doc: BaseName) -> tuple:
    """The ``base_names`` row of a base name."""
    return (doc.name, doc.base_hash, timestamp(doc.updated_at))


def reindex_bases(store: Store, manifest_of: Callable[[BaseRecord], Manifest], con: Any,
                  problems: list[str]) -> dict[str, int]:
    """Replace the catalog's ``bases`` and ``base_names`` rows (inside the caller's rebuild
    transaction ``con``) with what ``store`` holds; what does not read goes to ``problems``."""
    records = readable(base_keys(store), lambda k: read_base(store, k), problems)

    def manifest(r: BaseRecord) -> Any:
        try:
            return manifest_of(r)
        except TvregError as e:
            return e

    rows, stored = [], set()
    for r, m in zip(records, read_many(manifest, records), strict=True):
        if isinstance(m, TvregError):
            problems.append(f"{r.key}: manifest {r.manifest[:12]}: {m}")
            continue
        rows.append(base_row(r, m))
        stored.add(r.base_hash)
    names = []
    for doc in readable(base_name_keys(store), lambda k: read_base_name(store, k), problems):
        if doc.base_hash in stored:
            names.append(base_name_row(doc))
        else:
            problems.append(f"{doc.key}: points at a base that is missing or unreadable")
    for table in ("base_names", "bases"):
        con.execute(f"DELETE FROM {table}")
    insert_rows(con, "bases", rows)
    insert_rows(con, "base_names", names)
    return {"bases": len(rows), "base_names": len(names)}
