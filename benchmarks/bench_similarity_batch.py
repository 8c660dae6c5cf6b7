#!/usr/bin/env python3
"""The batch similarity pass (issue 20): every pair of N vectors in one pass that reads each
vector once, against the pair passes N inserts run, with its bytes read and its decode floor.

N real fine-tunes of a deep MLP (``--depth`` residual ``--params-width``-wide blocks, as in
bench_similarity.py, each trained with real Adam steps on its own task) are stored once with
``similarities=False``. For each N of ``--n`` (default 20 and 40), on the first N vectors, in
one process:

- ``decode floor``: every tensor of the N vectors decoded once on the operand pool (what any
  pass must read);
- ``N inserts``: what storing them one by one computes: vector i's pair pass against the i − 1
  before it (:func:`tvreg.similarity.compute.pair_pass`, as an insert's update runs it, its
  partners' spectra read from their files), i = 2 … N;
- ``batch, rebuild``: ``reg.rebuild_similarities()``: the N vectors' statistics, spectra and all
  N(N−1)/2 pairs from nothing (no spectra files);
- ``batch, pending``: the pass ``tvreg similarities`` runs for a base past its exact limit: the
  statistics, sketches and spectra files were made at insert, the pairs are computed here;
- the same two on Dask: ``engine="dask"`` on a running ``LocalCluster`` of ``--workers``
  processes (started beforehand), each tile a task; checked bit for bit against the local run;
- ``without alignment``: the local pending pass with matrices treated as having no spectrum
  (what the cosines and sign conflicts alone cost; values differ, timing only).

Bytes read count what ``ObjectDB.get`` returned in this process (the local runs), against the
N vectors' stored size (their manifests' ``stored_bytes``).

    python benchmarks/bench_similarity_batch.py [--n 20 40] [--params-width 512] [--depth 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import run_header  # noqa: E402
from bench_similarity import _build, _floor  # noqa: E402

import tvreg  # noqa: E402

TABLES = {"vector_stats": "vector_id, norm, n_material, sketch",
          "similarities": "* EXCLUDE (computed_at)", "tensor_similarities": "*"}


def _tables(reg) -> dict:
    with reg.catalog.reader() as con:
        return {t: sorted(con.execute(f"SELECT {c} FROM {t}").fetchall())
                for t, c in TABLES.items()}


class _Bytes:
    """Bytes ObjectDB.get returns while active."""

    def __init__(self, reg) -> None:
        self.objects, self.n = reg.repo.objects, 0

    def __enter__(self) -> _Bytes:
        real = type(self.objects).get

        def get(objects, oid):
            data = real(objects, oid)
            self.n += len(data)
            return data

        self.objects.get = get.__get__(self.objects)
        return self

    def __exit__(self, *exc) -> None:
        del self.objects.get


def _subset(src: str, dst: str, keep: list[str]) -> tvreg.Registry:
    """A copy of the registry holding only the versions ``keep`` (objects shared by hard links,
    the catalog rebuilt from the records), without similarities."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns(
        "catalog.duckdb*", "spectra", "sketches"))
    refs = os.path.join(dst, "refs")
    for name in os.listdir(refs):
        if name not in keep:
            shutil.rmtree(os.path.join(refs, name))
    reg = tvreg.open(dst)
    reg.repo.reindex()
    return reg


def _clear(reg) -> None:
    from tvreg.similarity import upkeep

    upkeep.clear(reg.repo)


def _inserts(reg, vids: list[str]) -> None:
    """The pair passes of N inserts in order (statistics of the first, then vector i against the
    i − 1 before it), stored as an insert stores them; spectra files as inserts leave them."""
    from tvreg.similarity import compute, upkeep

    stats: dict = {}
    with compute.one_blas_thread():
        stats[vids[0]] = compute.vector_stats(reg.repo, vids[0])
        for i in range(1, len(vids)):
            totals = compute.pair_pass(reg.repo, vids[i], vids[:i], stats)
            with reg.catalog.writer() as con:
                for v in (vids[0], vids[i]) if i == 1 else (vids[i],):
                    upkeep._store_stats(con, stats[v], reg.manifest(v))
                upkeep._store_pairs(con, {compute._ordered(vids[i], p): t
                                          for p, t in totals.items()}, stats)


def _prepare_pending(reg) -> None:
    """Statistics, sketches and spectra files as inserts past the exact limit leave them, no
    pair."""
    from tvreg.similarity import compute, upkeep

    _clear(reg)
    upkeep.update(reg.repo, None, exact_limit=0)  # statistics and sketches only
    with compute.one_blas_thread():  # the spectra files an insert past the limit keeps
        for row in reg.sql("SELECT vector_id FROM vectors"):
            compute.vector_stats(reg.repo, row["vector_id"], spectra=True)


def _timed(reg, prepare, run, count: bool) -> tuple[float, int | None]:
    """``prepare()``, then ``run()`` timed, with the bytes it read (``count``)."""
    prepare()
    if not count:
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0, None
    with _Bytes(reg) as b:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    return wall, b.n


def _measure(reg, vids: list[str], scheduler: str, repeats: int
             ) -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """Every pass on ``reg``'s vectors ``vids``: wall times and bytes read, by pass."""
    runs: dict[str, list[float]] = {}
    reads: dict[str, int | None] = {}
    dask = {"engine": "dask", "scheduler": scheduler}
    cases = [
        ("N inserts (pair passes)", lambda: _clear(reg), lambda: _inserts(reg, vids), True),
        ("batch, rebuild", lambda: None, reg.rebuild_similarities, True),
        ("batch, rebuild, dask", lambda: None,
         lambda: reg.rebuild_similarities(**dask), False),
        ("batch, pending", lambda: _prepare_pending(reg), reg.update_similarities, True),
        ("batch, pending, dask", lambda: _prepare_pending(reg),
         lambda: reg.update_similarities(**dask), False),
    ]
    want: dict[str, dict] = {}
    for label, prepare, run, count in cases:
        # the N inserts are the slow baseline: timed once
        for _ in range(1 if label.startswith("N inserts") else repeats):
            wall, nbytes = _timed(reg, prepare, run, count)
            runs.setdefault(label, []).append(wall)
            reads[label] = nbytes
        got = _tables(reg)
        kind = label.removesuffix(", dask")
        if label.endswith(", dask"):
            assert got == want[kind], f"{label}: not the local run's values"
        elif label.startswith("batch"):
            want[kind] = got
        print(f"# N={len(vids)}: {label} {statistics.median(runs[label]):.2f} s",
              file=sys.stderr, flush=True)
    with _no_alignment():
        label = "batch, pending, without alignment"
        for _ in range(repeats):
            wall, nbytes = _timed(reg, lambda: _prepare_pending(reg), reg.update_similarities,
                                  True)
            runs.setdefault(label, []).append(wall)
            reads[label] = nbytes
    return runs, reads


@contextlib.contextmanager
def _no_alignment():
    from tvreg.similarity import batch, compute

    saved = compute.aligned, batch.aligned
    compute.aligned = batch.aligned = lambda shape: False
    try:
        yield
    finally:
        compute.aligned, batch.aligned = saved


def _warm() -> None:
    import tvreg.similarity.batch  # noqa: F401  (and torch, numpy, the codecs)
    import tvreg.tensors.encoding  # noqa: F401


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[20, 40])
    p.add_argument("--params-width", type=int, default=512)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="Dask LocalCluster processes")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs of each batch pass (the N inserts run once)")
    p.add_argument("--workdir", help="kept afterwards; reused (the fine-tunes) when it exists")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-batch-")
    os.makedirs(work, exist_ok=True)
    import distributed
    import torch

    for key, value in run_header(f"torch {torch.__version__}, dask {distributed.__version__}"):
        print(f"{key}: {value}")
    n_max = max(args.n)
    root = os.path.join(work, "registry")
    if os.path.exists(os.path.join(root, "config.json")) and \
            len(tvreg.open(root).ls()) >= n_max:
        names = [f"t{i:02d}" for i in range(n_max)]
        print(f"# reusing {root}", file=sys.stderr)
    else:
        root, names, _params, built = _build(work, n_max, args.params_width, args.depth)
        print(f"# built {n_max} fine-tunes in {built:.0f} s", file=sys.stderr)
    full = tvreg.open(root)
    m = full.manifest(full.get(names[0]).vector_id)
    print(f"model: {args.depth} residual blocks of width {args.params_width}, "
          f"{m.n_params / 1e6:.2f}M parameters, {len(m.tensors)} tensors "
          f"({sum(len(e.shape) == 2 for e in m.tensors)} matrices), "
          f"{m.raw_bytes / 1e6:.1f} MB fp32 delta per vector")
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", silence_logs=50)
    client = distributed.Client(cluster)
    client.run(_warm)  # the workers' imports are not part of a pass
    rows = []
    try:
        for n in sorted(args.n):
            reg = _subset(root, os.path.join(work, f"n{n}"), names[:n])
            vids = [reg.get(x).vector_id for x in names[:n]]
            stored = sum(reg.manifest(v).stored_bytes for v in vids)
            raw = sum(reg.manifest(v).raw_bytes for v in vids)
            floor = statistics.median(_floor(reg.repo, vids) for _ in range(3))
            print(f"# N={n}: floor {floor:.2f} s", file=sys.stderr, flush=True)
            runs, reads = _measure(reg, vids, cluster.scheduler_address, args.repeats)
            for label, walls in runs.items():
                med = statistics.median(walls)
                rows.append((n, label, med, reads.get(label), stored, floor, raw))
            reg.close()
    finally:
        client.close()
        cluster.close()
    print()
    print(f"{'N':>3}  {'pass':<36} {'wall s':>7} {'/ floor':>8} {'read MB':>8} "
          f"{'/ stored':>8} {'GB/s raw':>8}")
    for n, label, med, nread, stored, floor, raw in rows:
        print(f"{n:>3}  {label:<36} {med:>7.2f} {med / floor:>8.2f} "
              f"{(nread or 0) / 1e6 if nread is not None else float('nan'):>8.1f} "
              f"{nread / stored if nread is not None else float('nan'):>8.3f} "
              f"{raw / med / 1e9:>8.2f}")
    print()
    for n in sorted(args.n):
        floor = next(r[5] for r in rows if r[0] == n)
        stored = next(r[4] for r in rows if r[0] == n)
        print(f"N={n}: decode floor {floor:.2f} s, stored {stored / 1e6:.1f} MB; dask/local: "
              + ", ".join(f"{kind} {_ratio(rows, n, kind):.2f}x" for kind in
                          ("batch, rebuild", "batch, pending")))
    print("dask runs gave the local runs' values bit for bit")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _ratio(rows, n: int, kind: str) -> float:
    local = next(r[2] for r in rows if r[0] == n and r[1] == kind)
    dask = next(r[2] for r in rows if r[0] == n and r[1] == kind + ", dask")
    return dask / local


if __name__ == "__main__":
    main()
