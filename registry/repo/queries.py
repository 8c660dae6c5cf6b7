"""What ``ls``, ``log`` and ``show`` print: catalog queries and a version's description."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tvreg.catalog.db import CODEC_COLUMNS, codec_columns
from tvreg.errors import NotFound
from tvreg.format.records import VersionRecord
from tvreg.names import validate_name
from tvreg.repo.bases import names_of

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo


def ls_query(all_versions: bool, *, base_names: bool = False) -> str:
    """``ls``'s query; it runs on the catalog and on a remote's index alike (so the lossy
    codec and its error come from the recipe, which both have, not the catalog's columns).
    ``base_names`` (the catalog only) adds the names of each version's base."""
    names = """,
               coalesce((SELECT list(n.name ORDER BY n.name) FROM base_names n
                         WHERE n.base_hash = v.base_hash), []) AS base_names""" \
        if base_names else ""
    return f"""
        SELECT v.name, v.version, v.vector_id, v.task, v.dataset, v.lr, v.steps, v.n_params,
               v.raw_bytes, v.stored_bytes, v.codec,
               v.recipe->>'$.codec' AS codec_spec,
               TRY_CAST(v.recipe->'$.error'->>'$.rel_l2' AS DOUBLE) AS rel_l2,
               TRY_CAST(v.recipe->'$.error'->>'$.cosine' AS DOUBLE) AS cosine_to_exact,
               v.created_at,
               coalesce((SELECT list(t.tag ORDER BY t.tag) FROM tags t
                         WHERE t.name = v.name AND t.version = v.version), []) AS tags,
               v.base_hash{names}
        FROM {"versions" if all_versions else "latest"} v ORDER BY v.name, v.version"""


def codec_fields(record: VersionRecord | None) -> dict[str, Any]:
    """``codec_spec``, ``rel_l2`` and ``cosine_to_exact`` of a version (None if lossless)."""
    values = codec_columns(record) if record is not None else (None,) * len(CODEC_COLUMNS)
    return dict(zip(CODEC_COLUMNS, values, strict=True))


def log(repo: Repo, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with its tags."""
    validate_name(name)
    repo.require()
    rows = repo.catalog.rows("""
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


def show(repo: Repo, ref: str, *, tensors: bool = False) -> dict[str, Any]:
    """One version described: ids, base, metadata, tags, sizes, codec and dtypes (with each
    tensor's if ``tensors``)."""
    vec = repo.get(ref)
    m = vec.manifest
    out: dict[str, Any] = {
        "ref": vec.ref, "name": vec.name, "version": vec.version, "vector_id": vec.vector_id,
        "base_hash": m.base_hash, "base_names": sorted(names_of(repo, m.base_hash)),
        "arch_fingerprint": m.arch_fingerprint,
        **(dict(vec.metadata.items()) if vec.record else {}),
        "tags": repo.tags_of(vec.record) if vec.record else [],
        "n_tensors": len(m.tensors), "n_params": m.n_params, "raw_bytes": m.raw_bytes,
        "stored_bytes": m.stored_bytes, "codec": m.codec_label,
        **codec_fields(vec.record), "skipped": [s.name for s in m.skipped],
        "dtypes": m.dtype_label,
    }
    if tensors:
        out["tensors"] = [{"name": t.name, "dtype": t.dtype, "source_dtype": t.source_dtype,
                           "finetuned_dtype": t.ft_dtype, "shape": list(t.shape),
                           "stored_bytes": t.stored_nbytes, "chunks": len(t.chunks),
                           "codec": t.codecs.label}
                          for t in m.tensors]
    return out
