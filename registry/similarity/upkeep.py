"""Similarity upkeep: what is missing, and which pass computes it (docs/similarity.md).

After an insert, :func:`update` computes the new vectors' statistics and, for a base of at most
the registry's exact limit (:func:`exact_limit`), their exact pairs with the stored vectors, a
pair pass per new vector (:func:`tvreg.similarity.compute.pair_pass`: the new vector read once,
each stored one once). Past the limit an insert computes the vector's statistics, sketch and
spectra only; its pairs are *pending* (:func:`status` counts them per base) until ``tvreg
similarities`` computes every pending pair in one batch pass (:mod:`tvreg.similarity.batch`:
each vector read once, Gram matrices per tensor name), on this machine or on a Dask cluster,
with the same bits either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tvreg.catalog import sketches as sketch_index
from tvreg.errors import FormatError, InvalidInput
from tvreg.repo.ingest import ENGINES as INGEST_ENGINES
from tvreg.repo.ingest import check_options
from tvreg.similarity import batch as batch_pass
from tvreg.similarity import spectra as spectra_files
from tvreg.similarity.compute import (
    EXACT_LIMIT,
    SKETCH_DIM,
    TensorStats,
    VectorStats,
    _cosine,
    _now,
    _ordered,
    _PairTotals,
    _rate,
    _Spectra,
    alignment,
    one_blas_thread,
    pair_pass,
    vector_stats,
)

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest, TensorEntry
    from tvreg.repo.repo import Repo

#: engines of :func:`update`: those of bulk ingest
ENGINES = INGEST_ENGINES
#: the key of config.json that holds the registry's similarity settings
CONFIG_KEY = "similarity"


# --- the exact limit -----------------------------------------------------------------------------


def exact_limit(reg: Repo) -> int:
    """The registry's exact limit: config.json's ``similarity.exact_limit``, else
    :data:`EXACT_LIMIT`."""
    config = reg.check_config().get(CONFIG_KEY, {})
    limit = config.get("exact_limit", EXACT_LIMIT) if isinstance(config, dict) else None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise FormatError(f"{reg.root}/config.json: similarity.exact_limit must be an integer "
                          f">= 0, not {limit!r}")
    return limit


def set_exact_limit(reg: Repo, limit: Any) -> int:
    """Set the registry's exact limit (vectors per base up to which an insert computes its
    exact pairs; 0: never, every pair pending) in config.json."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput(f"invalid exact limit {limit!r}: an integer >= 0")
    reg.require_writable()
    config = reg.check_config()
    section = config.get(CONFIG_KEY)
    config[CONFIG_KEY] = {**(section if isinstance(section, dict) else {}),
                          "exact_limit": limit}
    reg.store.write("config.json", json.dumps(config, indent=2).encode() + b"\n")
    return limit


def status(reg: Repo) -> list[dict[str, Any]]:
    """Per base and architecture: vectors, those without statistics, pairs, exact pairs and
    pending pairs (the catalog's ``similarity_status`` view), the base's names and the exact
    limit."""
    limit = exact_limit(reg)
    rows = reg.catalog.rows(
        "SELECT s.*, coalesce((SELECT list(n.name ORDER BY n.name) FROM base_names n "
        "WHERE n.base_hash = s.base_hash), []) AS base_names FROM similarity_status s "
        "ORDER BY n_vectors DESC, base_hash, arch_fingerprint")
    return [{**r, "exact_limit": limit} for r in rows]


# --- catalog rows ------------------------------------------------------------------------------

def _store_stats(con, s: VectorStats, m: Manifest) -> None:
    con.execute("DELETE FROM vector_stats WHERE vector_id = ?", [s.vector_id])
    con.execute("DELETE FROM tensor_stats WHERE vector_id = ?", [s.vector_id])
    con.execute("INSERT INTO vector_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [s.vector_id, m.base_hash, m.arch_fingerprint, s.norm, s.n_params, s.n_material,
                 s.sketch.astype(np.float32).tolist(), _now()])
    from tvreg.catalog.db import insert_rows

    insert_rows(con, "tensor_stats", [(s.vector_id, t.name, t.norm, t.threshold, t.n_material)
                                       for t in s.tensors.values()])


def _load_stats(con, ids: list[str]) -> dict[str, VectorStats]:
    if not ids:
        return {}
    out: dict[str, VectorStats] = {}
    for vid, norm, n_params, n_material in con.execute(
            "SELECT vector_id, norm, n_params, n_material FROM vector_stats "
            "WHERE vector_id IN (SELECT unnest(?))", [ids]).fetchall():
        out[vid] = VectorStats(vid, norm, n_params, n_material, np.zeros(0))
    for vid, tensor, norm, threshold, n_material in con.execute(
            "SELECT vector_id, tensor, norm, threshold, n_material FROM tensor_stats "
            "WHERE vector_id IN (SELECT unnest(?))", [ids]).fetchall():
        out[vid].tensors[tensor] = TensorStats(tensor, norm, threshold, n_material)
    return out


def _store_pairs(con, totals: dict[tuple[str, str], _PairTotals],
                 stats: dict[str, VectorStats]) -> None:
    """Rows of pairs keyed ``(a, b)`` with ``a < b``."""
    from tvreg.catalog.db import (
        SIMILARITY_COLUMNS,
        TENSOR_SIMILARITY_COLUMNS,
        insert_columns,
        insert_rows,
    )

    if not totals:
        return
    # the pairs' old rows go in one statement per table (one each per pair was most of the
    # time of storing a batch pass's 780 pairs)
    keys = {"a": np.array([a for a, _ in totals], dtype=object),
            "b": np.array([b for _, b in totals], dtype=object)}
    view = "tvreg_pair_keys"
    con.register(view, keys)
    try:
        for table in ("similarities", "tensor_similarities"):
            con.execute(f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM {view} k "
                        f"WHERE k.a = {table}.vector_a AND k.b = {table}.vector_b)")
    finally:
        con.unregister(view)
    now = _now()
    rows, tensor_rows = [], []
    for (a, b), t in totals.items():
        na, nb = stats[a].norm, stats[b].norm
        energies = [e for *_, e in t.tensors]
        rows.append((a, b, t.dot, na, nb, _cosine(t.dot, na, nb), t.both, t.conflicts,
                     _rate(t.conflicts, t.both), now, alignment(energies),
                     sum(e is not None for e in energies)))
        for name, dot, both, conflicts, e in t.tensors:
            cos = _cosine(dot, stats[a].tensors[name].norm, stats[b].tensors[name].norm)
            tensor_rows.append((a, b, name, dot, cos, both, conflicts, _rate(conflicts, both),
                                alignment([e])))
    insert_rows(con, "similarities", rows, SIMILARITY_COLUMNS)
    insert_columns(con, "tensor_similarities", TENSOR_SIMILARITY_COLUMNS, tensor_rows)


def _groups(con, vector_ids: Iterable[str] | None) -> dict[tuple[str, str], list[str]]:
    """Vector ids of the catalog by (base hash, architecture), limited to the groups of
    ``vector_ids`` if given."""
    groups: dict[tuple[str, str], list[str]] = {}
    for vid, base, arch in con.execute("SELECT vector_id, base_hash, arch_fingerprint FROM vectors "
                                       "ORDER BY vector_id").fetchall():
        groups.setdefault((base, arch), []).append(vid)
    if vector_ids is not None:
        wanted = set(vector_ids)
        groups = {k: v for k, v in groups.items() if wanted & set(v)}
    return groups




# --- upkeep ------------------------------------------------------------------------------------


def update(reg: Repo, vector_ids: Iterable[str] | None = None, *,
           exact_limit: int | None = EXACT_LIMIT, engine: str = "local",
           workers: int | None = None, scheduler: str | None = None,
           memory: int | None = None, rebuild: bool = False,
           on_vector: Callable[[str], None] | None = None) -> dict[str, int]:
    """Compute what is missing for the bases of ``vector_ids`` (default: every base): the
    statistics of vectors that have none, then every missing pair, for bases of at most
    ``exact_limit`` vectors (None: every base; past the limit the pairs stay pending).
    Idempotent: a second call computes nothing. Each pass is stored in its own transaction, so
    an interrupted update keeps what it finished.

    Pairs of many vectors (more than one vector's worth, e.g. a rebuild or the pending pairs of
    a base past its limit) go through the batch pass (:mod:`tvreg.similarity.batch`, tiles of
    at most ``memory`` bytes, default :data:`tvreg.similarity.batch.MEMORY`); with
    ``engine="dask"`` every pass's reads run as tasks of a Dask cluster (``scheduler``, or a
    ``LocalCluster`` of ``workers`` processes), and the values are the local engine's, bit for
    bit. With ``rebuild``, everything stored is forgotten first
    (:func:`clear`), once the engine is ready (a cluster that cannot be reached changes
    nothing)."""
    check_engine(engine, workers, scheduler)
    memory = batch_pass.check_memory(batch_pass.MEMORY if memory is None else memory)
    if engine == "local":
        with one_blas_thread():
            if rebuild:
                clear(reg)
            return _update(reg, vector_ids, exact_limit, memory, None, on_vector)
    from tvreg.repo import ingest_dask

    with ingest_dask.executor(scheduler, workers) as cluster, one_blas_thread():
        if rebuild:
            clear(reg)
        return _update(reg, vector_ids, exact_limit, memory, cluster, on_vector)


def check_engine(engine: Any, workers: Any, scheduler: Any) -> None:
    """:class:`InvalidInput` unless the engine options go together: ingest's checks, and
    ``workers`` only for the Dask engine (the local one runs on the registry's pools)."""
    check_options(engine, workers, scheduler)
    if workers is not None and engine != "dask":
        raise InvalidInput("--workers sizes the Dask engine's local cluster")


def _update(reg: Repo, vector_ids: Iterable[str] | None, limit: int | None, memory: int,
            cluster: Any, on_vector: Callable[[str], None] | None) -> dict[str, int]:
    done = {"vectors": 0, "pairs": 0}
    with reg.catalog.reader() as con:
        # spectra files of vectors gc deleted (or reindex dropped) go; a cache miss at worst
        spectra_files.prune(reg.root, {r[0] for r in con.execute(
            "SELECT vector_id FROM vectors").fetchall()})
        groups = _groups(con, vector_ids)
        everything = [v for ids in groups.values() for v in ids]
        have = {r[0] for r in con.execute(
            "SELECT vector_id FROM vector_stats WHERE vector_id IN (SELECT unnest(?))",
            [everything]).fetchall()}
        # a pair from before migration 5 (n_matrices NULL) lacks its alignment: missing
        stored = {(a, b) for a, b in con.execute(
            "SELECT vector_a, vector_b FROM similarities WHERE vector_a IN (SELECT unnest(?)) "
            "AND n_matrices IS NOT NULL", [everything]).fetchall()}
        stats = _load_stats(con, everything)

    def tick(vids: Iterable[str]) -> None:
        for vid in vids:
            done["vectors"] += 1
            if on_vector:
                on_vector(vid)

    for ids in groups.values():
        fresh = [vid for vid in ids if vid not in have]
        missing: set[tuple[str, str]] = set()
        if limit is None or len(ids) <= limit:
            missing = {(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]} - stored
        paired = {v for p in missing for v in p}
        if missing and (cluster is not None or len(missing) > len(ids) - 1):
            # many vectors' pairs (a rebuild, pending pairs): every vector read once
            new = _batch(reg, sorted(paired), [v for v in fresh if v in paired], missing,
                         stats, memory, cluster)
            tick(new)
            done["pairs"] += len(missing)
            fresh = [v for v in fresh if v not in stats]
            missing = set()
        first = _most_missing(missing) if missing else None
        # past the limit, the spectra are kept for the batch pass that computes the pending pairs
        keep_spectra = limit is not None and len(ids) > limit
        alone = [vid for vid in fresh if vid != first]  # the first pass computes x's itself
        pending = list(_stats_of(reg, alone, keep_spectra, cluster))
        for st, _ in pending:
            stats[st.vector_id] = st
        tick(alone)
        if first is not None and first in fresh:
            tick([first])
        if not missing and pending:
            with reg.catalog.writer() as con:
                for s, m in pending:
                    _store_stats(con, s, m)
            _index_sketches(reg, pending)
        while missing:
            # the vector in most missing pairs goes first: a new vector is read once, each
            # stored vector once
            x = _most_missing(missing)
            partners = sorted(b if a == x else a for a, b in missing if x in (a, b))
            computed_x = x not in stats
            with_x = pair_pass(reg, x, partners, stats)
            if computed_x:
                pending.append((stats[x], reg.manifest(x)))
            with reg.catalog.writer() as con:
                for s, m in pending:  # the new vectors' statistics go in with their first pairs
                    _store_stats(con, s, m)
                _store_pairs(con, {_ordered(x, p): t for p, t in with_x.items()}, stats)
            _index_sketches(reg, pending)
            pending = []
            missing -= {_ordered(x, p) for p in partners}
            done["pairs"] += len(partners)
    return done


def _stats_of(reg: Repo, ids: list[str], keep_spectra: bool, cluster: Any
              ) -> Iterator[tuple[VectorStats, Manifest]]:
    """Each vector's statistics (and spectra file, with ``keep_spectra``), in order: here, or
    as tasks of the Dask ``cluster``."""
    if cluster is None:
        for vid in ids:
            yield vector_stats(reg, vid, spectra=keep_spectra), reg.manifest(vid)
        return
    futures = [cluster.submit(_vector_stats_task, reg, vid, keep_spectra) for vid in ids]
    for vid, future in zip(ids, futures, strict=True):
        yield future.result(), reg.manifest(vid)


def _vector_stats_task(repo: Repo, vector_id: str, keep_spectra: bool) -> VectorStats:
    with one_blas_thread():
        return vector_stats(repo, vector_id, spectra=keep_spectra)


def _batch(reg: Repo, ids: list[str], fresh: list[str], missing: set[tuple[str, str]],
           stats: dict[str, VectorStats], memory: int, cluster: Any) -> list[str]:
    """The ``missing`` pairs among ``ids`` by the batch pass, with the statistics of the
    ``fresh`` ones (added to ``stats``), stored in one transaction; returns ``fresh``."""
    manifests = {v: reg.manifest(v) for v in ids}
    first = manifests[ids[0]]
    blocks = batch_pass.blocks(ids, first, memory)
    block_of = batch_pass.pair_index(blocks)
    tiles = batch_pass.tiles(blocks)
    own = {v: VectorStats(v, 0.0, manifests[v].n_params, 0, np.zeros(SKETCH_DIM))
           for v in fresh}
    order = sorted(missing)
    totals = {p: _PairTotals() for p in order}
    # one block: this process keeps the spectra it computes in the vectors' spectra files
    sources = ({v: _Spectra(reg, v, manifests[v]) for v in ids}
               if cluster is None and len(blocks) == 1 else {})
    names = [e.name for e in first.tensors]
    spectrum_of = ((lambda vid, index, values, shape: sources[vid].get(names[index], values,
                                                                      shape))
                   if sources else None)
    try:
        for entry, results in zip(first.tensors, _tile_results(
                reg, manifests, blocks, tiles, stats, own, spectrum_of, cluster), strict=True):
            name = entry.name
            positions = {t: {v: k for k, v in enumerate(r.ids)} for t, r in results.items()}
            for v, st in own.items():
                ts, share = results[(block_of[v], block_of[v])].stats[v]
                st.tensors[name] = ts
                st.sketch += share
            for a, b in order:
                t = (min(block_of[a], block_of[b]), max(block_of[a], block_of[b]))
                r, pos = results[t], positions[t]
                i, j = pos[a], pos[b]
                totals[(a, b)].add(name, float(r.dot[i, j]), int(r.both[i, j]),
                                   r.conflicts(i, j), r.energies(i, j))
    finally:
        for source in sources.values():
            source.close()
    for st in own.values():
        st.norm = math.sqrt(math.fsum(t.norm ** 2 for t in st.tensors.values()))
        st.n_material = sum(t.n_material for t in st.tensors.values())
        stats[st.vector_id] = st
    pending = [(own[v], manifests[v]) for v in fresh]
    with reg.catalog.writer() as con:
        for st, m in pending:
            _store_stats(con, st, m)
        _store_pairs(con, totals, stats)
    _index_sketches(reg, pending)
    return fresh


def _tile_results(reg: Repo, manifests: dict[str, Manifest], blocks: list[list[str]],
                  tiles: list[tuple[int, int]], stats: dict[str, VectorStats],
                  own: dict[str, VectorStats], spectrum_of: Any, cluster: Any
                  ) -> Iterator[dict[tuple[int, int], batch_pass.TileResult]]:
    """Per tensor, in the manifests' order (one order: one base and architecture): each
    tile's result. On a cluster every tile is submitted at once (results are small: three
    n × n matrices, and n × n energies); here they run one after the other, each on the
    registry's thread pools."""
    first = manifests[blocks[0][0]]

    def args(index: int, i: int, j: int
             ) -> tuple[int, list[TensorEntry], list[str], dict[str, float], list[str]]:
        name = first.tensors[index].name
        ids = batch_pass.tile_ids(blocks, i, j)
        entries = [manifests[v].tensors[index] for v in ids]
        assert all(e.name == name for e in entries), "one tensor order per architecture"
        thresholds = {v: stats[v].tensors[name].threshold for v in ids if v not in own}
        return index, entries, ids, thresholds, [v for v in ids if v in own]

    indices = range(len(first.tensors))
    if cluster is None:
        for index in indices:
            yield {(i, j): batch_pass.run_tile(reg, *args(index, i, j),
                                               spectrum_of=spectrum_of) for i, j in tiles}
        return
    futures = [{(i, j): cluster.submit(batch_pass.run_tile, reg, *args(index, i, j))
                for i, j in tiles} for index in indices]
    try:
        for per_name in futures:
            yield {t: f.result() for t, f in per_name.items()}
    finally:
        for per_name in futures:
            for f in per_name.values():
                f.cancel()


def _index_sketches(reg: Repo, stored: list[tuple[VectorStats, Manifest]]) -> None:
    """Append committed sketches to their base's sketch file (a cache: failures are ignored,
    queries then read the catalog)."""
    by_base: dict[tuple[str, str], list] = {}
    for s, m in stored:
        by_base.setdefault((m.base_hash, m.arch_fingerprint), []).append(
            (s.vector_id, s.norm, s.sketch))
    for (base, arch), rows in by_base.items():
        try:
            sketch_index.append(reg.root, base, arch, rows)
        except OSError:
            pass


def _most_missing(missing: set[tuple[str, str]]) -> str:
    count: dict[str, int] = {}
    for a, b in missing:
        count[a] = count.get(a, 0) + 1
        count[b] = count.get(b, 0) + 1
    return min(count, key=lambda v: (-count[v], v))


def clear(reg: Repo) -> None:
    """Forget every stored statistic and similarity: the sketch index, the spectra files and the
    catalog rows."""
    sketch_index.clear(reg.root)
    spectra_files.clear(reg.root)
    with reg.catalog.writer() as con:
        for table in ("vector_stats", "tensor_stats", "similarities", "tensor_similarities"):
            con.execute(f"DELETE FROM {table}")


