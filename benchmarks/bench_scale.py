#!/usr/bin/env python3
"""Scale: a registry of 1,000 / 10,000 / 100,000 versions of one base (issue 20).

The catalogs are SYNTHETIC beyond their first rows: each registry holds 3 real toy task vectors
(``tvreg.testing.make_toy_zoo``; the query is ``sentiment``) and ``size - 3`` synthetic rows in
``vectors``, ``versions`` and ``vector_stats`` (no objects, no manifests, no records), inserted
in bulk from Arrow, with their sketches appended to the base's sketch file by
``tvreg.catalog.sketches.append``. They share the query's base hash and architecture, so
``reg.similar`` ranks all of them. Their sketches are correlated like real task vectors: each is
a mix of the query's sketch direction (weight a = 0.9·u³, u uniform: most near 0, a tail up to
0.9), one of 200 shared "task family" directions, and its own Gaussian part, scaled by a
log-normal norm; so the estimated cosines with the query spread over 0..0.9.

Parts (``--parts``):

* ``similar``: ``reg.similar(ref, k=10)`` in-process (one warm-up, then the median of
  ``--queries`` calls, page cache warm), with floors measured in the same process: one
  float32 matmul over the whole memory-mapped sketch file, and over its 512-wide coarse side
  file. With ``--recall``, the coarse stage's recall of the full-sketch top 10 over
  ``--recall-queries`` query vectors (the real one and synthetic ones).
* ``sizes``: catalog.duckdb and sketch file sizes, per version; ``reg.ls()`` (latest of each
  name), ``reg.ls(all_versions=True)`` and resolving ``NAME@N`` (median times).
* ``index``: the remote index (``index/versions.parquet``) of every version record, written by
  ``tvreg.remote.index.write`` to a directory remote, its size, and ``ls --remote`` (read it,
  ``ls_query`` on it) time.
* ``concurrency``: K = 1, 2, 4 processes each doing real ``create``s (toy vectors, similarities
  on) into one registry at once (``tvreg.testing.concurrency.run_local`` with only creates):
  creates/s and the time to open a catalog connection (the catalog lock wait).

    python benchmarks/bench_scale.py                                  # 1k, 10k, 100k; ~10 min
    python benchmarks/bench_scale.py --sizes 1000,10000 --parts similar,sizes
    python benchmarks/bench_scale.py --sizes 100000 --parts similar --recall

Raw results go to ``~/.cache/tvreg-bench/scale-<UTC time>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _load_line, _loadavg, run_header  # noqa: E402

MB = 1_000_000
QUERY = "sentiment"
PER_NAME = 4  # synthetic versions per name: syn000000@1..4
CHUNK = 10_000  # synthetic rows generated, inserted and appended at a time
FAMILIES = 200


def _log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _timed(fn, runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


# --- the synthetic catalog ------------------------------------------------------------------------


def synthetic_ids(start: int, stop: int) -> list[str]:
    return [hashlib.sha256(f"tvreg-scale-synthetic-{i}".encode()).hexdigest()
            for i in range(start, stop)]


def synthetic_sketches(rng, query, families, n: int):
    """``n`` sketches (float32, n × D) and norms: a·q̂ + b·f + c·e, scaled by a log-normal norm."""
    import numpy as np

    d = query.shape[0]
    q = query / np.linalg.norm(query)
    a = 0.9 * rng.random(n) ** 3
    b = rng.uniform(0.3, 0.8, n) * np.sqrt(1 - a * a)
    c = np.sqrt(np.maximum(0.0, 1 - a * a - b * b))
    fam = rng.integers(0, len(families), n)
    e = rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))
    e *= c[:, None].astype(np.float32)
    e += a[:, None].astype(np.float32) * q[None, :].astype(np.float32)
    e += b[:, None].astype(np.float32) * families[fam]
    norms = np.exp(rng.normal(0.0, 0.5, n)) * 10.0
    e *= norms[:, None].astype(np.float32)
    return e, norms


def build_registry(root: str, zoo, size: int, seed: int = 0) -> dict:
    """A real registry of 3 toy vectors plus ``size - 3`` synthetic rows of the query's base."""
    import numpy as np
    import pyarrow as pa

    import tvreg
    from tvreg.catalog import sketches as sketch_index

    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    reg = tvreg.open(root)
    for task, path in sorted(zoo.finetuned.items()):
        reg.create(task, zoo.base, path, **zoo.meta[task])
    vid = reg.resolve_ref(QUERY)[1]
    m = reg.manifest(vid)
    base, arch = m.base_hash, m.arch_fingerprint
    with reg.catalog.reader() as con:
        got = con.execute("SELECT sketch FROM vector_stats WHERE vector_id = ?",
                          [vid]).fetchnumpy()
    query = np.asarray(got["sketch"][0], dtype=np.float64)
    rng = np.random.default_rng(seed)
    d = query.shape[0]
    families = (rng.standard_normal((FAMILIES, d)) / np.sqrt(d)).astype(np.float32)
    n_syn = size - len(zoo.finetuned)
    real = time.perf_counter() - t0
    t_gen = t_sql = t_file = 0.0
    for start in range(0, n_syn, CHUNK):
        stop = min(n_syn, start + CHUNK)
        t1 = time.perf_counter()
        ids = synthetic_ids(start, stop)
        sk, norms = synthetic_sketches(rng, query, families, stop - start)
        idx = np.arange(start, stop)
        table = pa.table({
            "vid": pa.array(ids),
            "name": pa.array([f"syn{i // PER_NAME:06d}" for i in idx]),
            "version": pa.array(idx % PER_NAME + 1, type=pa.int32()),
            "norm": pa.array(norms),
            "sketch": pa.FixedSizeListArray.from_arrays(pa.array(sk.reshape(-1)), d),
        })
        t2 = time.perf_counter()
        with reg.catalog.writer() as con:
            con.register("syn", table)
            keys = [base, arch]
            con.execute("INSERT INTO vectors SELECT vid, ?, ?, 1, 0, 1000000, 4000000, 2000000, "
                        "'bytegroup4+zstd3', '[]' FROM syn", keys)
            con.execute("INSERT INTO versions (name, version, vector_id, base_hash, "
                        "arch_fingerprint, task, dataset, lr, steps, meta, n_params, raw_bytes, "
                        "stored_bytes, codec, created_at, parents, recipe) "
                        "SELECT name, version, vid, ?, ?, 'synthetic', 'synthetic', 1e-4, 1000, "
                        "'{}', 1000000, 4000000, 2000000, 'bytegroup4+zstd3', "
                        "now()::TIMESTAMP, '[]', NULL FROM syn", keys)
            con.execute("INSERT INTO vector_stats SELECT vid, ?, ?, norm, 1000000, 200000, "
                        "sketch::FLOAT[4096], now()::TIMESTAMP FROM syn", keys)
            con.unregister("syn")
        t3 = time.perf_counter()
        sketch_index.append(root, base, arch, list(zip(ids, norms.tolist(), sk, strict=True)))
        t4 = time.perf_counter()
        t_gen, t_sql, t_file = t_gen + t2 - t1, t_sql + t3 - t2, t_file + t4 - t3
        _log(f"  {stop:,} / {n_syn:,} synthetic rows")
    reg.close()
    return {"root": root, "vid": vid, "base": base, "arch": arch, "real_s": real,
            "generate_s": t_gen, "insert_s": t_sql, "append_s": t_file}


# --- part: similar ------------------------------------------------------------------------------


def similar_before(reg, ref: str, k: int = 10) -> list[dict]:
    """``similarity.similar`` as of commit 6bcd326 (before issue 20's scale work), by cosine
    only: every other vector of the base listed from the catalog, every record of the sketch
    file scored, ranked in Python. The baseline, run in the same process on the same registry."""
    import numpy as np

    from tvreg.catalog import sketches as sketch_index
    from tvreg.similarity.compute import _estimates_from_catalog, _finite, estimate_bound

    record, vid = reg.repo.resolve_ref(ref)
    m = reg.repo.manifest(vid)
    base, arch = m.base_hash, m.arch_fingerprint
    with reg.repo.catalog.reader() as con:
        qnorm = con.execute("SELECT norm FROM vector_stats WHERE vector_id = ?",
                            [vid]).fetchone()[0]
        values = {other: (cos, rate, True, align) for other, cos, rate, align in con.execute(
            "SELECT CASE WHEN vector_a = $v THEN vector_b ELSE vector_a END, cosine, "
            "sign_conflict_rate, alignment FROM similarities "
            "WHERE vector_a = $v OR vector_b = $v", {"v": vid}).fetchall()}
        others = [r[0] for r in con.execute(
            "SELECT vector_id FROM vectors WHERE base_hash = ? AND arch_fingerprint = ? "
            "AND vector_id <> ?", [base, arch, vid]).fetchall()]
        want = [o for o in others if o not in values]
        estimates: dict = {}
        missing = want
        table = sketch_index.load(reg.repo.root, base, arch) if want else None
        if table is not None:
            ids = np.array(table["vector_id"])
            norms = np.array(table["norm"])
            where = np.flatnonzero(ids == vid.encode("ascii"))
            if where.size:
                query = np.asarray(table["sketch"][where[0]], dtype=np.float32)
                dots = table["sketch"] @ query
                picked = np.flatnonzero(np.isin(ids, np.array(want, dtype="S64")))
                with np.errstate(divide="ignore", invalid="ignore"):
                    cos = np.clip(dots[picked].astype(np.float64) / (norms[picked] * qnorm),
                                  -1.0, 1.0)
                defined = (norms[picked] > 0) & (qnorm > 0)
                estimates = {i.decode("ascii"): (float(c) if ok else None) for i, c, ok in
                             zip(ids[picked].tolist(), cos.tolist(), defined.tolist(),
                                 strict=True)}
                missing = [w for w in want if w not in estimates]
        if missing:
            estimates.update(_estimates_from_catalog(con, vid, missing))
        for other in want:
            values[other] = (estimates.get(other), None, False, None)
        ranked = sorted(others, key=lambda o: (_finite(values[o][0]) is None,
                                               -(_finite(values[o][0]) or 0.0), o))
        top = ranked[:k]
        versions = con.execute("SELECT name, version, vector_id FROM versions "
                               "WHERE vector_id IN (SELECT unnest(?))", [top]).fetchall()
    rows = [{"ref": f"{name}@{version}", "name": name, "version": version, "vector_id": other,
             "cosine": _finite(values[other][0]), "exact": values[other][2],
             "bound": None if values[other][2] else estimate_bound(_finite(values[other][0]))}
            for name, version, other in versions]
    rows.sort(key=lambda r: (r["cosine"] is None, -(r["cosine"] or 0.0), r["name"],
                             r["version"]))
    return rows[:k]


def part_similar(info: dict, args) -> dict:
    import numpy as np

    import tvreg
    from tvreg.catalog import sketches as sketch_index

    out: dict = {}
    with tvreg.open(info["root"]) as reg:
        t0 = time.perf_counter()
        rows = reg.similar(QUERY, k=10)
        out["first"] = time.perf_counter() - t0  # builds the coarse side file (once)
        assert len(rows) == 10, rows
        out["top"] = [(r["ref"], r["cosine"], r["exact"]) for r in rows]
        before = similar_before(reg, QUERY, 10)
        # the same refs in the same order; estimates equal up to float32 summation order
        out["max_cosine_diff"] = max(abs(a["cosine"] - b["cosine"])
                                     for a, b in zip(rows, before, strict=True))
        out["same_as_before"] = ([r["ref"] for r in before] == [r["ref"] for r in rows]
                                 and out["max_cosine_diff"] < 1e-6)
        # interleaved, so that load from other work hits both alike
        out["similar"], out["before"], out["similar_cpu"], out["before_cpu"] = [], [], [], []
        for i in range(args.queries + 1):
            for key, fn in (("similar", lambda: reg.similar(QUERY, k=10)),
                            ("before", lambda: similar_before(reg, QUERY, 10))):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                if i:  # the first round warms up
                    out[key].append(time.perf_counter() - t0)
                    out[key + "_cpu"].append(time.process_time() - c0)

        def open_reader() -> None:
            with reg.repo.catalog.reader():
                pass

        out["open"] = _timed(open_reader, args.queries)
    table = sketch_index.load(info["root"], info["base"], info["arch"])
    assert table is not None
    sketches = table["sketch"]
    q = np.asarray(sketches[0], dtype=np.float32)
    out["floor_full"] = _timed(lambda: sketches @ q, min(args.queries, 10))
    coarse = sketch_index.load_coarse(info["root"], info["base"], info["arch"], table)
    if coarse is not None:
        csk = coarse["sketch"]
        cq = np.asarray(csk[0])
        out["floor_coarse"] = _timed(lambda: csk @ cq, args.queries)
    return out


def part_recall(info: dict, args) -> dict:
    """Recall of the full-sketch top 10 by the two-stage ranking, over several query vectors,
    for each number of candidates the first stage keeps."""
    import numpy as np

    from tvreg.catalog import sketches as sketch_index
    from tvreg.similarity import compute as similarity

    table = sketch_index.load(info["root"], info["base"], info["arch"])
    coarse = sketch_index.load_coarse(info["root"], info["base"], info["arch"], table)
    assert table is not None and coarse is not None
    n = len(table)
    rng = np.random.default_rng(1)
    ids = np.array(table["vector_id"])
    qrows = [int(np.flatnonzero(ids == info["vid"].encode())[0])]
    qrows += rng.choice(n, args.recall_queries - 1, replace=False).tolist()
    sketches = table["sketch"]
    norms = np.array(table["norm"])
    truth = {}
    for qi in qrows:
        dots = (sketches @ np.asarray(sketches[qi])).astype(np.float64) / norms
        dots[qi] = -np.inf
        truth[qi] = set(np.lexsort((ids, -dots))[:10].tolist())
    out: dict = {"queries": len(qrows), "by_candidates": {}}
    for c in args.candidates:
        if c >= n:
            continue
        recalls, times = [], []
        for qi in qrows:
            t0 = time.perf_counter()
            got, _ = similarity._rank_sketches(table, coarse, qi, 11, c)
            times.append(time.perf_counter() - t0)
            got = [g for g in got.tolist() if g != qi][:10]
            recalls.append(len(truth[qi] & set(got)) / 10)
        out["by_candidates"][str(c)] = {"recalls": recalls, "rank_s": times}
    out["default"] = max(similarity.COARSE_CANDIDATES, similarity.COARSE_PER_RESULT * 10)
    return out


# --- part: sizes and listing ----------------------------------------------------------------------


def part_sizes(info: dict, args) -> dict:
    import tvreg
    from tvreg.catalog import sketches as sketch_index

    root = info["root"]
    out = {"catalog_bytes": os.path.getsize(os.path.join(root, "catalog.duckdb")),
           "sketch_bytes": os.path.getsize(sketch_index.path(root, info["base"], info["arch"])),
           "registry_bytes": _dir_bytes(root)}
    coarse = getattr(sketch_index, "coarse_path", None)
    if coarse is not None and os.path.exists(coarse(root, info["base"], info["arch"])):
        out["coarse_bytes"] = os.path.getsize(coarse(root, info["base"], info["arch"]))
    with tvreg.open(root) as reg:
        n = reg.sql("SELECT count(*) AS n FROM versions")[0]["n"]
        out["versions"] = n
        out["ls_rows"] = len(reg.ls())
        out["ls"] = _timed(lambda: reg.ls(), args.queries)
        out["ls_all"] = _timed(lambda: reg.ls(all_versions=True), max(3, args.queries // 4))
        # synthetic versions have no record file, so refs resolve to the real vectors: by
        # NAME@N (a record read), NAME (a listing of its records) and an id prefix (a scan of
        # the catalog's vectors)
        out["resolve"] = _timed(lambda: reg.resolve_ref(f"{QUERY}@1"), args.queries)
        out["resolve_name"] = _timed(lambda: reg.resolve_ref(QUERY), args.queries)
        out["resolve_prefix"] = _timed(lambda: reg.resolve_ref(info["vid"][:12]), args.queries)
    return out


# --- part: remote index ---------------------------------------------------------------------------


def part_index(info: dict, args, work: str) -> dict:
    import tvreg
    from tvreg.catalog.db import VERSION_COLUMNS
    from tvreg.remote import index as remote_index

    folder = os.path.join(work, f"remote-{info['size']}")
    shutil.rmtree(folder, ignore_errors=True)
    out: dict = {}
    with tvreg.open(info["root"]) as reg:
        with reg.catalog.reader() as con:
            rows = con.execute(f"SELECT {', '.join(VERSION_COLUMNS)} FROM versions "
                               "ORDER BY name, version").fetchall()
        tags = [tuple(r.values()) for r in reg.sql("SELECT * FROM tags ORDER BY name, tag")]
        reg.add_remote("scale", folder)
        store = _dir_store(folder)
        t0 = time.perf_counter()
        remote_index.write(store, remote_index.Index(rows, tags))
        out["write_s"] = time.perf_counter() - t0
        out["bytes"] = os.path.getsize(os.path.join(folder, remote_index.VERSIONS_KEY))
        out["rows"] = len(rows)
        out["read"] = _timed(lambda: remote_index.read(store), max(3, args.queries // 4))
        out["ls_remote"] = _timed(lambda: reg.remote_ls("scale"), max(3, args.queries // 4))
    return out


def _dir_store(folder: str):
    from tvreg.stores.local import LocalStore

    return LocalStore(folder)


# --- part: concurrency ----------------------------------------------------------------------------


def part_concurrency(args, work: str, zoo) -> list[dict]:
    import tvreg
    from tvreg.testing import concurrency as cc

    variants = cc.make_variants(zoo.base, zoo.finetuned, 4, os.path.join(work, "variants"))
    out = []
    for k in args.ks:
        for rep in range(args.conc_repeats):
            root = os.path.join(work, f"conc-{k}-{rep}", "registry")
            shutil.rmtree(os.path.dirname(root), ignore_errors=True)
            tvreg.open(root).init()
            run = cc.run_local(root, k, args.creates, base=str(zoo.base), finetuned=variants,
                               workdir=os.path.dirname(root), mix={"create": 1},
                               meta_values=1000, similarities=True, seed=rep)
            fails = run.failures()
            lines = [x for x in run.lines if x["op"] == "create"]
            out.append({"k": k, "rep": rep, "wall": run.wall, "creates": len(lines),
                        "created": sum(1 for x in lines if x.get("created")),
                        "failures": len(fails),
                        "errors": sorted({f"{x['error']}: {x['message'][:120]}" for x in fails}),
                        "op_s": [x["seconds"] for x in lines],
                        "waits": [w for x in lines for w in x["catalog_waits"]]})
            _log(f"  K={k} run {rep}: {len(lines)} creates in {run.wall:.1f} s")
    return out


# --- report ---------------------------------------------------------------------------------------


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        return "  ".join([str(r[0]).ljust(widths[0])] +
                         [str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
                         ).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]


def _ms(xs: list[float]) -> str:
    return f"{_med(xs) * 1e3:.1f}"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(info: list[tuple[str, str]], res: dict) -> None:
    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")
    sizes = res["sizes"]
    if any("similar" in s for s in sizes.values()):
        print("\n1. reg.similar(ref, k=10) in-process, page cache warm (target < 100 ms at "
              "100,000)\n")
        rows = []
        for size, s in sizes.items():
            if "similar" not in s:
                continue
            sim = s["similar"]
            after, before = _med(sim["similar"]), _med(sim["before"])
            rows.append((f"{int(size):,}", f"{before * 1e3:.1f}", f"{after * 1e3:.1f}",
                         len(sim["similar"]), _ms(sim.get("similar_cpu") or [float("nan")]),
                         f"{min(sim['similar']) * 1e3:.1f}",
                         f"{max(sim['similar']) * 1e3:.1f}", f"{before / after:.2f}",
                         "yes" if sim["same_as_before"] else "NO",
                         _ms(sim["open"]), _ms(sim["floor_full"]),
                         _ms(sim["floor_coarse"]) if "floor_coarse" in sim else "-",
                         f"{sim['first']:.2f}"))
        for line in _table(("versions", "before ms", "now ms", "n", "now CPU ms", "now min",
                            "now max",
                            "before/now", "same top 10", "open catalog ms", "full scan ms",
                            "coarse scan ms", "first call s"), rows):
            print(line)
        print("\nbefore: similarity.similar as of 6bcd326 (bench_scale.similar_before), now: "
              "reg.similar; medians of\ninterleaved calls after one warm-up round. open "
              "catalog: a read-only catalog connection opened\nand closed (each similar call "
              "opens one). full scan: one float32 product of a query with the\nwhole "
              "memory-mapped sketch file (4,096 floats a version); coarse scan: the same over "
              "the\n512-bucket coarse side file. first call: the first reg.similar, which "
              "writes the coarse side file.\nsame top 10: the same refs in the same order as "
              "before, cosines within 1e-6 (float32 sums in\nanother order differ in the 7th "
              "digit).")
        for size, s in sizes.items():
            r = s.get("recall")
            if not r or not r.get("by_candidates"):
                continue
            print(f"\nrecall of the full-sketch top 10 at {int(size):,} versions, "
                  f"{r['queries']} query vectors (the real one and random synthetic ones); "
                  f"tvreg keeps {r['default']:,} for k = 10\n")
            rrows = []
            for c, x in r["by_candidates"].items():
                xs = x["recalls"]
                rrows.append((f"{int(c):,}", f"{statistics.mean(xs):.3f}", f"{min(xs):.1f}",
                              f"{sum(v == 1.0 for v in xs)} of {len(xs)}",
                              _ms(x["rank_s"])))
            for line in _table(("candidates", "mean recall", "min recall", "queries exact",
                                "rank ms"), rrows):
                print(line)
    if any("sizes" in s for s in sizes.values()):
        print("\n2. sizes and listing (median times)\n")
        rows = []
        for s in sizes.values():
            if "sizes" not in s:
                continue
            z = s["sizes"]
            n = z["versions"]
            rows.append((f"{n:,}", f"{z['catalog_bytes'] / MB:.1f}",
                         f"{z['catalog_bytes'] / n / 1e3:.1f}", f"{z['sketch_bytes'] / MB:.1f}",
                         f"{z.get('coarse_bytes', 0) / MB:.1f}",
                         f"{z['ls_rows']:,}", _ms(z["ls"]), _ms(z["ls_all"]), _ms(z["resolve"]),
                         _ms(z["resolve_name"]), _ms(z["resolve_prefix"])))
        for line in _table(("versions", "catalog MB", "catalog kB/version", "sketch file MB",
                            "coarse file MB", "ls rows", "ls ms", "ls --all ms",
                            "NAME@N ms", "NAME ms", "id prefix ms"), rows):
            print(line)
        print("\nls: reg.ls() (the latest version of each name; 4 synthetic versions a name); "
              "ls --all: reg.ls(all_versions=True);\nNAME@N, NAME, id prefix: reg.resolve_ref of "
              "the real query vector (synthetic versions have no record\nfile to resolve); "
              "the id prefix (12 hex digits) is looked up in the catalog's vectors.")
    if any("index" in s for s in sizes.values()):
        print("\n3. the remote index (index/versions.parquet of every version record)\n")
        rows = []
        for s in sizes.values():
            if "index" not in s:
                continue
            x = s["index"]
            rows.append((f"{x['rows']:,}", f"{x['bytes'] / MB:.2f}",
                         f"{x['bytes'] / x['rows']:.0f}", f"{x['write_s']:.2f}",
                         _ms(x["read"]), _ms(x["ls_remote"])))
        for line in _table(("versions", "versions.parquet MB", "bytes/version", "write s",
                            "read ms", "ls --remote ms"), rows):
            print(line)
    conc = res.get("concurrency")
    if conc:
        print("\n4. K processes creating into one registry at once (real toy creates, "
              "similarities on)\n")
        rows = []
        base = None
        for k in sorted({r["k"] for r in conc}):
            runs = [r for r in conc if r["k"] == k]
            creates = sum(r["creates"] for r in runs)
            rate = _med([r["creates"] / r["wall"] for r in runs])
            base = base or rate
            ops = [x for r in runs for x in r["op_s"]]
            waits = [w for r in runs for w in r["waits"]]
            rows.append((k, len(runs), creates, sum(r["failures"] for r in runs),
                         f"{rate:.1f}", f"{rate / base:.2f}", f"{_med(ops) * 1e3:.0f}",
                         f"{_pct(waits, 0.5) * 1e3:.1f}", f"{_pct(waits, 0.99) * 1e3:.1f}",
                         f"{max(waits) * 1e3:.1f}",
                         f"{sum(waits) / sum(ops):.2f}"))
        for line in _table(("K", "runs", "creates", "failures", "creates/s", "vs K=1",
                            "create ms p50", "wait p50 ms", "wait p99 ms", "wait max ms",
                            "wait share"), rows):
            print(line)
        print("\nwait: time to open a catalog connection, lock wait included, per connection; "
              "wait share: all\nwaits / all create time. creates/s: creates of a run / its wall "
              "time (median over runs).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="catalog sizes (versions of one base), comma-separated")
    p.add_argument("--parts", default="similar,sizes,index,concurrency",
                   help="similar, sizes, index, concurrency (comma-separated)")
    p.add_argument("--queries", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--recall", action="store_true", help="measure the coarse stage's recall")
    p.add_argument("--recall-queries", type=int, default=20)
    p.add_argument("--candidates", default="500,1000,2000,5000,10000",
                   help="first-stage candidates in the recall measurement (comma-separated)")
    p.add_argument("--ks", default="1,2,4", help="concurrent creating processes")
    p.add_argument("--creates", type=int, default=12, help="creates per process")
    p.add_argument("--conc-repeats", type=int, default=2)
    p.add_argument("--workdir", help="kept afterwards (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the registries")
    p.add_argument("--reuse", action="store_true",
                   help="reuse registries a run with --workdir and --keep left there")
    p.add_argument("--out", default=None, help="raw JSON results "
                   "(default ~/.cache/tvreg-bench/scale-<time>.json)")
    args = p.parse_args(argv)
    args.ks = [int(x) for x in args.ks.split(",") if x]
    args.candidates = [int(x) for x in args.candidates.split(",") if x]
    sizes = [int(x) for x in args.sizes.split(",") if x]
    parts = set(args.parts.split(","))
    own = args.workdir is None
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-scale-")
    os.makedirs(work, exist_ok=True)
    load_start = _loadavg()
    started = time.perf_counter()
    import duckdb
    import numpy as np

    from tvreg.testing import make_toy_zoo

    res: dict = {"sizes": {}, "argv": sys.argv}
    try:
        zoo = make_toy_zoo(os.path.join(work, "zoo"))
        for size in sizes:
            root = os.path.join(work, f"reg-{size}")
            marker = os.path.join(root, "bench-scale.json")
            if args.reuse and os.path.exists(marker):
                with open(marker) as f:
                    info = json.load(f)
                _log(f"reusing the registry of {size:,} versions in {root}")
            else:
                _log(f"building a registry of {size:,} versions ...")
                info = build_registry(root, zoo, size)
                with open(marker, "w") as f:
                    json.dump(info, f)
            info["size"] = size
            got: dict = {"build": {k: v for k, v in info.items() if k.endswith("_s")}}
            res["sizes"][str(size)] = got
            if "similar" in parts:
                _log("  similar ...")
                got["similar"] = part_similar(info, args)
                if args.recall:
                    _log("  recall ...")
                    got["recall"] = part_recall(info, args)
            if "sizes" in parts:  # after similar: the coarse side file exists then
                _log("  sizes, ls, resolve ...")
                got["sizes"] = part_sizes(info, args)
            if "index" in parts:
                _log("  remote index ...")
                got["index"] = part_index(info, args, work)
            if not args.keep:
                shutil.rmtree(info["root"], ignore_errors=True)
                shutil.rmtree(os.path.join(work, f"remote-{size}"), ignore_errors=True)
        if "concurrency" in parts:
            _log("concurrency ...")
            res["concurrency"] = part_concurrency(args, work, zoo)
    finally:
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info = run_header(f"numpy {np.__version__}, duckdb {duckdb.__version__}")
    info.append(("catalog", "SYNTHETIC: 3 real toy vectors + synthetic rows in vectors, versions, "
                            "vector_stats and the sketch file (no objects or records)"))
    info.append(("wall", f"{time.perf_counter() - started:.0f} s; "
                         f"{_load_line(load_start, _loadavg())}"))
    res["info"] = info
    out = args.out or os.path.join(os.path.expanduser("~/.cache/tvreg-bench"),
                                   f"scale-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=str)
    report(info, res)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
