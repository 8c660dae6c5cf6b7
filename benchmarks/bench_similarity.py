#!/usr/bin/env python3
"""Similarities: the cost of keeping pairwise cosines up to date, and of querying them.

Two measurements (see benchmarks/README.md and docs/similarity.md):

1. **Insert.** N task vectors (default 20) of a real ~21M-parameter model (20 residual 1024-wide
   blocks, as in bench_compose.py, each fine-tuned with real Adam steps on its own task) are
   stored with ``similarities=False``; ``reg.rebuild_similarities()`` computes every pair once
   (timed). Then, ``--repeats`` times, vector N's rows are deleted and
   ``reg.update_similarities([vid_N])`` recomputes them: what storing vector N into a registry
   holding N-1 vectors adds. It is compared with the *decode floor*, decoding the N vectors once
   on the registry's operand pool (the update must read each of them once). One more, instrumented
   update says where the time goes, and a fresh child process measures the update's peak RSS.
   The subspace alignment (docs/similarity.md) is computed in the same pass as the cosines; with
   ``--alignment both`` (the default) each repeat times the update three ways: without it
   (tvreg's ``similarity._Spectra.get`` patched to return None, which skips every matrix: the
   pass as it was before the alignment), with it but no spectra files (every vector's spectra
   computed: what the cache saves), and with it as an insert runs (the N-1 stored vectors'
   spectra read from their files, vector N's computed); the rebuild is timed with and without.
2. **Query.** A catalog of 10,000 versions of one base: one real vector (made with
   ``tvreg.testing.make_toy_zoo``, the query) and 9,999 synthetic rows (``vectors``, ``versions``,
   ``vector_stats`` with random sketches; no objects) sharing its base and architecture. Times
   ``reg.similar(ref, 10)`` and ``tvreg similar REF --top 10`` end to end, first when all 9,999
   candidates are ranked from sketches, then with the 9,999 pairs of the query stored exactly in
   ``similarities``.

    python benchmarks/bench_similarity.py [--n 20] [--params-width 1024] [--repeats 3]
    python benchmarks/bench_similarity.py --n 5 --params-width 256 --catalog-size 1000   # quick
    python benchmarks/bench_similarity.py --part insert --n 8 --repeats 3   # alignment's cost
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")  # no progress bars inside timed regions

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_compose import _deep_mlp, _train  # noqa: E402  (the same model and fine-tunes)
from bench_core import _load_line, _loadavg, _maxrss_bytes, _proc_status, _RssSampler, run_header  # noqa: E402

MB = 1_000_000
QUERY = "query"


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt_runs(xs: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return " ".join(f"{x * scale:.{digits}f}" for x in xs)


# --- timers: where the time of one call goes -----------------------------------------------------


class _Tracer:
    """Wraps callables and sums their wall time per label, over all threads. Parts may nest (a
    catalog query includes opening its connection): each is counted in full, and ``top`` sums
    only the outermost traced calls of each thread."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # label -> [seconds, calls, nested calls]
        self.top = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._undo: list[tuple[object, str, object, bool]] = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        if not hasattr(owner, attr):
            return  # not used by this version of tvreg
        inner = getattr(owner, attr)
        had_own = attr in vars(owner)  # False: a method of the instance's class

        def traced(*args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self._local.depth = depth
                with self._lock:
                    t = self.totals.setdefault(label, [0.0, 0, 0])
                    t[0] += dt
                    t[1] += 1
                    t[2] += depth > 0
                    if depth == 0:
                        self.top += dt

        self._undo.append((owner, attr, inner, had_own))
        setattr(owner, attr, traced)

    def restore(self) -> None:
        for owner, attr, inner, had_own in reversed(self._undo):
            if had_own:
                setattr(owner, attr, inner)
            else:
                delattr(owner, attr)  # the instance attribute added over its class's method
        self._undo = []


# --- part 1: the insert of vector N -----------------------------------------------------------------


def _build(work: str, n: int, width: int, depth: int) -> tuple[str, list[str], int, float]:
    """Base + n fine-tunes (real Adam steps, task i+1 each), stored without similarities. The
    registry is kept between runs of the same --workdir (creates then deduplicate)."""
    import torch
    from safetensors.torch import save_file

    import tvreg

    root = os.path.join(work, "registry")
    reg = tvreg.open(root)
    names = [f"t{i:02d}" for i in range(n)]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    base = _deep_mlp(width, depth)
    _train(base, 0, 2, 1e-3)
    base_path = os.path.join(work, "base.safetensors")
    save_file({k: t.contiguous() for k, t in base.state_dict().items()}, base_path)
    for i, name in enumerate(names):
        ft = copy.deepcopy(base)
        _train(ft, i + 1, 2, 1e-4)
        ft_path = os.path.join(work, f"ft{i}.safetensors")
        save_file({k: t.contiguous() for k, t in ft.state_dict().items()}, ft_path)
        reg.create(name, base_path, ft_path, similarities=False)
        os.unlink(ft_path)  # 20 checkpoints would be 1.7 GB; the registry holds the vectors
        del ft
        print(f"# built {name} ({i + 1}/{n})", file=sys.stderr, flush=True)
    params = sum(p.numel() for p in base.parameters())
    reg.close()
    return root, names, params, time.perf_counter() - t0


def _floor(reg, vids: list[str]) -> float:
    """Decode every tensor of every vector once, on the operand pool (what an update must read)."""
    pool = reg.executor("operands")
    t0 = time.perf_counter()
    for vid in vids:
        list(pool.map(reg.load_tensor, reg.manifest(vid).tensors))
    return time.perf_counter() - t0


def _forget(reg, vid: str) -> None:
    from tvreg.catalog.db import forget_similarity_rows

    with reg.catalog.writer() as con:
        forget_similarity_rows(con, [vid])


def _count_pairs(reg) -> tuple[int, int, int]:
    with reg.catalog.reader() as con:
        return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("similarities", "tensor_similarities", "vector_stats"))


class _NoAlignment:
    """Inside: tvreg's similarity pass gets no spectra, so no alignment (the pass as it was
    before the alignment: cosines, sign conflicts, statistics)."""

    def __enter__(self):
        from tvreg.similarity import compute as similarity

        self._saved = similarity._Spectra.get
        similarity._Spectra.get = lambda self, name, values, shape: None
        return self

    def __exit__(self, *exc) -> None:
        from tvreg.similarity import compute as similarity

        similarity._Spectra.get = self._saved


def _drop_spectra(reg, vid: str | None) -> None:
    """Delete vector ``vid``'s spectra file (as for a vector just stored), or all of them."""
    from tvreg.similarity import spectra

    if vid is None:
        spectra.clear(reg.repo.root)
    elif os.path.exists(spectra.path(reg.repo.root, vid)):
        os.unlink(spectra.path(reg.repo.root, vid))


def _breakdown_update(reg, vid: str) -> tuple:
    """One update with timers around its parts (summed over the threads that run them)."""
    from tvreg.catalog import db as catalog
    from tvreg.similarity import compute as similarity
    from tvreg.similarity import spectra, upkeep

    _forget(reg, vid)
    _drop_spectra(reg, vid)
    tr = _Tracer()
    tr.wrap(reg.repo, "load_tensor", "decode a tensor (reg.load_tensor)")
    tr.wrap(similarity, "_dot", "dot products (_dot, float64)")
    tr.wrap(similarity, "_material", "material masks (_material)")
    tr.wrap(similarity, "material_threshold", "thresholds of the new vector")
    tr.wrap(similarity, "sketch_add", "sketch of the new vector (sketch_add)")
    tr.wrap(similarity, "spectrum", "alignment: spectra (Gram + eigh), every vector")
    tr.wrap(similarity, "projected_energy", "alignment: projections (both directions)")
    tr.wrap(spectra.Reader, "get", "alignment: read a spectra file's matrix")
    tr.wrap(spectra.Writer, "add", "alignment: write a spectra file's matrix")
    tr.wrap(upkeep, "_store_stats", "catalog: store statistics")
    tr.wrap(upkeep, "_store_pairs", "catalog: store pairs")
    tr.wrap(upkeep, "_load_stats", "catalog: load statistics")
    tr.wrap(catalog.Catalog, "_open", "catalog: open a DuckDB connection")
    tr.wrap(reg, "manifest", "read manifests")
    try:
        t0 = time.perf_counter()
        reg.update_similarities([vid])
        wall = time.perf_counter() - t0
    finally:
        tr.restore()
    return wall, tr.totals, None


def _child_update(args: argparse.Namespace) -> None:
    """In a fresh process: one update of vector N's similarities (its rows already deleted)."""
    import duckdb  # noqa: F401  (imports are not part of the measurement)
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import zstandard  # noqa: F401

    import tvreg

    reg = tvreg.open(args.root)
    reg.catalog.rows("SELECT 1")  # catalog opened once, as any command would have done
    base_rss = _maxrss_bytes()
    hwm = _proc_status().get("VmHWM")
    inherited = hwm is not None and base_rss > hwm + 16 * MB
    t0 = time.perf_counter()
    with _RssSampler() as sampler:
        done = reg.update_similarities([args.vid])
    seconds = time.perf_counter() - t0
    reg.close()
    print(json.dumps({"seconds": seconds, "done": done, "inherited_maxrss": inherited,
                      "maxrss_delta": _maxrss_bytes() - base_rss,
                      "anon_delta": sampler.delta("RssAnon"),
                      "file_delta": sampler.delta("RssFile")}))


_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _run_child(root: str, vid: str) -> dict:
    # a small launcher in between: Linux keeps ru_maxrss across execve (see bench_core.py)
    cmd = [sys.executable, "-c", _LAUNCHER, sys.executable, os.path.abspath(__file__),
           "--_child", "update", "--_root", root, "--_vid", vid]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child update failed (rc {p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def part_insert(args: argparse.Namespace, work: str) -> dict:
    import tvreg

    print(f"# part 1: building {args.n} vectors (width {args.params_width}, depth {args.depth}) ...",
          file=sys.stderr, flush=True)
    root, names, params, setup = _build(work, args.n, args.params_width, args.depth)
    out: dict = {"params": params, "setup": setup, "n": args.n}
    with tvreg.open(root) as reg:
        vids = [reg.resolve_ref(name)[1] for name in names]
        m = reg.manifest(vids[-1])
        out.update(n_tensors=len(m.tensors), raw_bytes=m.raw_bytes, stored_bytes=m.stored_bytes,
                   largest=max(t.nbytes for t in m.tensors))
        n_pairs = args.n * (args.n - 1) // 2

        m0 = reg.manifest(vids[0])
        out["matrices"] = sum(len(t.shape) == 2 for t in m0.tensors)
        without = args.alignment in ("off", "both")
        if without:
            print("# rebuild_similarities() without alignment ...", file=sys.stderr, flush=True)
            with _NoAlignment():
                t0 = time.perf_counter()
                done = reg.rebuild_similarities()
                out["rebuild_plain"] = time.perf_counter() - t0
            assert done == {"vectors": args.n, "pairs": n_pairs}, done
        if args.alignment != "off":
            print("# rebuild_similarities() ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            done = reg.rebuild_similarities()
            out["rebuild"] = time.perf_counter() - t0
            assert done == {"vectors": args.n, "pairs": n_pairs}, done
        out["rows"] = _count_pairs(reg)

        floor_s, update_s, plain_s, cold_s = [], [], [], []
        for i in range(args.repeats):  # interleaved, so drift of a shared machine hits all alike
            floor_s.append(_floor(reg, vids))
            if without:
                _forget(reg, vids[-1])
                with _NoAlignment():
                    t0 = time.perf_counter()
                    done = reg.update_similarities([vids[-1]])
                    plain_s.append(time.perf_counter() - t0)
                assert done == {"vectors": 1, "pairs": args.n - 1}, done
            if args.alignment != "off":
                for cold, series in ((True, cold_s), (False, update_s)):
                    _forget(reg, vids[-1])
                    _drop_spectra(reg, None if cold else vids[-1])
                    t0 = time.perf_counter()
                    done = reg.update_similarities([vids[-1]])
                    series.append(time.perf_counter() - t0)
                    assert done == {"vectors": 1, "pairs": args.n - 1}, done
            assert _count_pairs(reg) == out["rows"]
            print(f"# repeat {i + 1}/{args.repeats}: floor {floor_s[-1]:.2f} s, "
                  f"update {_fmt_runs(update_s[-1:])} s, no spectra files "
                  f"{_fmt_runs(cold_s[-1:])} s, without alignment {_fmt_runs(plain_s[-1:])} s",
                  file=sys.stderr, flush=True)
        out["floor"], out["update"], out["update_plain"] = floor_s, update_s, plain_s
        out["update_cold"] = cold_s
        out["spectra_bytes"] = os.path.getsize(
            os.path.join(root, "spectra", f"{vids[-1]}.npz"))
        if args.breakdown and args.alignment != "off":
            out["breakdown"] = _breakdown_update(reg, vids[-1])
        if args.rss and args.alignment != "off":
            _forget(reg, vids[-1])
            _drop_spectra(reg, vids[-1])
    if args.rss and args.alignment != "off":
        out["rss"] = _run_child(root, vids[-1])
        assert out["rss"]["done"] == {"vectors": 1, "pairs": args.n - 1}, out["rss"]
    return out


# --- part 2: a query over a catalog of 10,000 vectors -----------------------------------------------


def _synthesize(reg, vid: str, size: int, seed: float = 0.42) -> float:
    """size-1 synthetic vectors of the query's base: rows in vectors, versions, vector_stats
    (sketch: FLOAT[4096] uniform in [-1, 1]; norm: the sketch's own norm, so the estimated
    cosines are cosines of random directions). Generated inside DuckDB: no pandas needed."""
    m = reg.manifest(vid)
    keys = [m.base_hash, m.arch_fingerprint]
    t0 = time.perf_counter()
    with reg.catalog.writer() as con:
        con.execute("SELECT setseed(?)", [seed])
        con.execute("CREATE TEMP TABLE syn AS SELECT i, sha256('tvreg-bench-' || i::VARCHAR) AS vid, "
                    "list_transform(range(4096), lambda x: (random() * 2 - 1)::FLOAT)::FLOAT[4096] "
                    "AS sketch FROM range(?) t(i)", [size - 1])
        con.execute("INSERT INTO vectors SELECT vid, ?, ?, 1, 0, 1000000, 4000000, 2000000, "
                    "'bytegroup4+zstd3', '[]' FROM syn", keys)
        con.execute("INSERT INTO versions SELECT 'syn' || lpad(i::VARCHAR, 5, '0'), 1, vid, ?, ?, "
                    "NULL, NULL, NULL, NULL, '{}', 1000000, 4000000, 2000000, 'bytegroup4+zstd3', "
                    "now()::TIMESTAMP, '[]', NULL, NULL, NULL, NULL FROM syn", keys)
        con.execute("INSERT INTO vector_stats SELECT vid, ?, ?, "
                    "sqrt(list_sum(list_transform(sketch::FLOAT[], lambda x: x::DOUBLE * x))), "
                    "1000000, 200000, sketch, now()::TIMESTAMP FROM syn", keys)
        got = con.execute("SELECT s.vid, v.norm, s.sketch FROM syn s JOIN vector_stats v "
                          "ON v.vector_id = s.vid ORDER BY s.i").fetchnumpy()
        con.execute("DROP TABLE syn")
    # the base's sketch file, as update_similarities appends to it after each commit
    import numpy as np

    from tvreg.catalog import sketches as sketch_index

    sketch_index.append(reg.root, *keys, [(v, float(n), np.asarray(sk, dtype=np.float32))
                                          for v, n, sk in zip(got["vid"], got["norm"],
                                                              got["sketch"])])
    return time.perf_counter() - t0


def _store_exact_pairs(reg, vid: str) -> float:
    """The query's pair with every other vector of its base, as if computed exactly."""
    t0 = time.perf_counter()
    with reg.catalog.writer() as con:
        con.execute("SELECT setseed(0.7)")
        con.execute("INSERT INTO similarities SELECT least(?, vector_id), greatest(?, vector_id), "
                    "c * 2.0, 1.0, 2.0, c, 1000, 400, 0.4, now()::TIMESTAMP, random(), 21 "
                    "FROM (SELECT vector_id, random() * 2 - 1 AS c FROM vectors WHERE vector_id <> ?)",
                    [vid, vid, vid])
    return time.perf_counter() - t0


def _time_calls(fn, runs: int, budget_s: float) -> list[float]:
    """Up to ``runs`` timed calls, fewer (at least 3) when they exceed ``budget_s`` in all."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _breakdown_query(reg) -> tuple:
    from tvreg.catalog import db as catalog
    from tvreg.similarity import compute as similarity

    tr = _Tracer()
    tr.wrap(reg, "resolve_ref", "resolve the ref")
    tr.wrap(reg, "manifest", "read the manifest")
    tr.wrap(reg.catalog, "rows", "catalog queries (reg.catalog.rows)")
    tr.wrap(similarity, "_sketches", "fetch sketches into Python (_sketches)")
    tr.wrap(catalog.Catalog, "_open", "open a DuckDB connection")
    try:
        t0 = time.perf_counter()
        reg.similar(QUERY, 10)
        wall = time.perf_counter() - t0
    finally:
        tr.restore()
    # single-threaded: the rest is SQL run on connections opened above, and Python
    return wall, tr.totals, wall - tr.top


def _duckdb_refs(reg, vid: str, runs: int, budget_s: float) -> dict[str, list[float]]:
    """Floors of a query in a fresh process's terms: opening the catalog read-only, and ranking
    every sketch of the base inside DuckDB on a fresh connection (reads all the sketches)."""
    import duckdb

    path = reg.catalog.path

    def open_only() -> None:
        duckdb.connect(path, read_only=True).close()

    def rank_all() -> None:
        con = duckdb.connect(path, read_only=True)
        try:
            con.execute("SELECT vector_id, array_inner_product(sketch, (SELECT sketch FROM "
                        "vector_stats WHERE vector_id = ?)) AS ip FROM vector_stats "
                        "ORDER BY ip DESC LIMIT 10", [vid]).fetchall()
        finally:
            con.close()

    return {"open": _time_calls(open_only, runs, budget_s),
            "rank": _time_calls(rank_all, runs, budget_s)}


def _cli_similar_available() -> tuple[bool, str]:
    from tvreg.cli.main import cli

    cmd = cli.commands.get("similar")
    if cmd is None:
        return False, "no `similar` command in tvreg.cli (not written yet)"
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    if "--top" not in opts:
        return False, f"`tvreg similar` has no --top option (options: {sorted(opts)})"
    return True, ""


def _time_cli(argv: list[str], runs: int, budget_s: float) -> tuple[list[float], str]:
    times: list[float] = []
    last = ""
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed (rc {p.returncode}):\n{p.stderr}")
        last = p.stdout
    return times, last


def part_query(args: argparse.Namespace, work: str) -> dict:
    import tvreg
    from tvreg.testing import make_toy_zoo

    print(f"# part 2: a catalog of {args.catalog_size:,} vectors ...", file=sys.stderr, flush=True)
    zoo = make_toy_zoo(os.path.join(work, "zoo"), tasks=("sentiment",))
    root = os.path.join(work, "catalog-registry")
    shutil.rmtree(root, ignore_errors=True)
    out: dict = {"size": args.catalog_size}
    cli_ok, cli_why = _cli_similar_available()
    out["cli_why"] = cli_why
    cli_cmd = [sys.executable, "-m", "tvreg.cli", "--registry", root, "similar", QUERY,
               "--top", "10"]
    out["cli_cmd"] = "tvreg --registry REG similar query --top 10"
    env_cmd = [sys.executable, "-c", "import tvreg.cli.main"]
    with tvreg.open(root) as reg:
        vid = reg.create(QUERY, zoo.base, zoo.finetuned["sentiment"]).record.vector_id
        out["synth"] = _synthesize(reg, vid, args.catalog_size)
        with reg.catalog.reader() as con:
            out["catalog_versions"] = con.execute("SELECT count(*) FROM versions").fetchone()[0]
        out["catalog_mb"] = os.path.getsize(reg.catalog.path) / MB
        variants = []
        for label, prepare in (("sketch estimates", None), ("exact pairs stored", _store_exact_pairs)):
            if prepare is not None:
                out.setdefault("prepare", {})[label] = prepare(reg, vid)
            print(f"# query: {label} ...", file=sys.stderr, flush=True)
            result = reg.similar(QUERY, 10)
            want_exact = prepare is not None
            assert len(result) == 10 and all(r["exact"] == want_exact for r in result), result[:2]
            v = {"label": label, "py": _time_calls(lambda: reg.similar(QUERY, 10), args.queries,
                                                   args.budget)}
            if args.breakdown:
                v["breakdown"] = _breakdown_query(reg)
            if cli_ok:
                v["cli"], _ = _time_cli(cli_cmd, args.cli_runs, args.budget)
            variants.append(v)
        out["variants"] = variants
        out["duckdb"] = _duckdb_refs(reg, vid, args.queries, args.budget)
    out["startup"], _ = _time_cli(env_cmd, args.cli_runs, args.budget)
    return out


# --- report ---------------------------------------------------------------------------------------


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        cells = [str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in
                                                zip(r[1:-1], widths[1:-1])]
        return "  ".join(cells + [str(r[-1])]).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *[line(r) for r in rows]]


def _breakdown_lines(wall: float, totals: dict[str, list[float]], rest: float | None,
                     unit: str = "s") -> list[str]:
    scale, digits = (1000.0, 1) if unit == "ms" else (1.0, 2)
    rows = []
    for label, (secs, calls, nested) in sorted(totals.items(),
                                               key=lambda kv: (kv[1][2] == kv[1][1], -kv[1][0])):
        if nested == calls:
            label = f"{label} (inside the parts above)"
        elif nested:
            label = f"{label} ({nested} of the calls inside the parts above)"
        rows.append((label, f"{calls:.0f}", f"{secs * scale:.{digits}f}"))
    if rest is not None:
        rows.append(("rest: SQL execution and Python", "", f"{rest * scale:.{digits}f}"))
    rows.append(("(wall time of the call)", "", f"{wall * scale:.{digits}f}"))
    return _table(("part", "calls", f"{'busy ' if rest is None else ''}{unit}"), rows)


def report(args: argparse.Namespace, ins: dict | None, qry: dict | None, started: float,
           load_start: float | None) -> None:
    import duckdb
    import numpy as np
    import torch
    import zstandard

    from tvreg.tensors.encoding import default_workers

    workers = default_workers()
    info = run_header(f"torch {torch.__version__}, numpy {np.__version__}, duckdb "
                      f"{duckdb.__version__}, zstandard {zstandard.__version__}, tvreg workers "
                      f"{workers}")
    if ins:
        info.append(("vectors", f"N = {ins['n']} of {ins['params']:,} params ({args.depth} residual "
                                f"{args.params_width}-wide blocks, {ins['n_tensors']} tensors, "
                                f"{ins['raw_bytes'] / MB:.1f} MB fp32, stored "
                                f"{ins['stored_bytes'] / MB:.1f} MB); built in {ins['setup']:.0f} s"))
    if qry:
        info.append(("catalog", f"{qry['catalog_versions']:,} versions of one base (1 real toy "
                                f"vector + synthetic rows, made in {qry['synth']:.1f} s), "
                                f"catalog.duckdb {qry['catalog_mb']:.0f} MB"))
    info += [("total", f"whole benchmark {time.perf_counter() - started:.0f} s"),
             ("load", _load_line(load_start, _loadavg()))]
    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")

    if ins:
        n = ins["n"]
        f_med = _med(ins["floor"])
        print(f"\n1. Insert of vector {n} into a registry holding {n - 1} vectors with their "
              f"similarities ({n - 1} pairs; {ins['matrices']} matrices per vector)\n")
        rows = [(f"decode floor: the {n} vectors once (operand pool)", f"{f_med:.2f}",
                 _fmt_runs(ins["floor"]))]
        pairs = n * (n - 1) // 2
        if ins["update_plain"]:
            rows.append((f"update_similarities([vector {n}]), without alignment",
                         f"{_med(ins['update_plain']):.2f}", _fmt_runs(ins["update_plain"])))
        if ins["update_cold"]:
            rows.append((f"update_similarities([vector {n}]), with alignment, no spectra files",
                         f"{_med(ins['update_cold']):.2f}", _fmt_runs(ins["update_cold"])))
        if ins["update"]:
            rows.append((f"update_similarities([vector {n}]), with alignment",
                         f"{_med(ins['update']):.2f}", _fmt_runs(ins["update"])))
        if "rebuild_plain" in ins:
            rows.append((f"rebuild_similarities(): all {pairs} pairs, without alignment",
                         f"{ins['rebuild_plain']:.2f}",
                         f"{ins['rebuild_plain'] / f_med:.1f} decode floors"))
        if "rebuild" in ins:
            rows.append((f"rebuild_similarities(): all {pairs} pairs, with alignment",
                         f"{ins['rebuild']:.2f}", f"{ins['rebuild'] / f_med:.1f} decode floors"))
        for line in _table(("operation", "median s", "runs (s)"), rows):
            print(line)
        if ins["update_plain"] and ins["update"]:
            cost = _med(ins["update"]) / _med(ins["update_plain"])
            cold = _med(ins["update_cold"]) / _med(ins["update_plain"])
            print(f"\nspectra file of one vector: {ins['spectra_bytes'] / MB:.1f} MB "
                  f"({ins['spectra_bytes'] / ins['raw_bytes']:.2f}x its fp32 size)")
            print(f"alignment's cost: update {cost:.2f}x (without spectra files {cold:.2f}x)"
                  + (f", rebuild {ins['rebuild'] / ins['rebuild_plain']:.2f}x"
                     if "rebuild" in ins and "rebuild_plain" in ins else ""))
        u_med = _med(ins["update"] or ins["update_plain"])
        ratio = u_med / f_med
        verdict = "met" if ratio <= 2.0 else f"missed by {ratio / 2.0:.2f}x"
        per_run = _med([u / f for u, f in zip(ins["update"], ins["floor"])])
        print(f"\nupdate / decode floor: {ratio:.2f}x of the medians, {per_run:.2f}x the median of "
              f"each repeat's ratio (target <= 2x: {verdict});"
              f"\n{ins['raw_bytes'] * n / MB / u_med:.0f} MB/s of fp32 vectors read by the update, "
              f"{ins['raw_bytes'] * n / MB / f_med:.0f} MB/s by the floor")
        sims, tsims, vstats = ins["rows"]
        print(f"catalog after the update: {vstats} vector_stats, {sims} similarities, "
              f"{tsims} tensor_similarities rows")
        if "rss" in ins:
            r = ins["rss"]

            def mb(key: str) -> str:
                v = r[f"{key}_delta"]
                return "n/a" if v is None else f"{v / MB:.0f}"

            print(f"peak RSS of the update (fresh child, {r['seconds']:.2f} s): "
                  f"+{mb('maxrss')} MB{'?' if r['inherited_maxrss'] else ''} "
                  f"(anon +{mb('anon')}, file +{mb('file')}); largest tensor "
                  f"{ins['largest'] / MB:.1f} MB, one vector {ins['raw_bytes'] / MB:.1f} MB")
        if "breakdown" in ins:
            wall, totals, rest = ins["breakdown"]
            print(f"\nwhere the update's time goes (one instrumented update; busy s = wall time "
                  f"inside each part summed over threads; {workers} workers):\n")
            for line in _breakdown_lines(wall, totals, rest):
                print(line)

    if qry:
        size = qry["size"]
        print(f"\n2. `similar REF --top 10` over {size:,} versions of one base "
              f"(target < 100 ms)\n")
        rows = []
        for v in qry["variants"]:
            rows.append((f"reg.similar(ref, 10), {v['label']}", f"{_med(v['py']) * 1e3:.0f}",
                         len(v["py"]), _fmt_runs(v["py"], 1e3, 0)))
            if "cli" in v:
                rows.append((f"CLI end to end, {v['label']}", f"{_med(v['cli']) * 1e3:.0f}",
                             len(v["cli"]), _fmt_runs(v["cli"], 1e3, 0)))
        d = qry["duckdb"]
        rows.append(("ref: open the catalog read-only (fresh connection)",
                     f"{_med(d['open']) * 1e3:.0f}", len(d["open"]), _fmt_runs(d["open"], 1e3, 0)))
        rows.append((f"ref: rank all {size:,} sketches in DuckDB (fresh connection)",
                     f"{_med(d['rank']) * 1e3:.0f}", len(d["rank"]), _fmt_runs(d["rank"], 1e3, 0)))
        rows.append(("ref: python -c 'import tvreg.cli.main' (CLI floor)",
                     f"{_med(qry['startup']) * 1e3:.0f}", len(qry["startup"]),
                     _fmt_runs(qry["startup"], 1e3, 0)))
        for line in _table(("query", "median ms", "n", "runs (ms)"), rows):
            print(line)
        if qry["cli_why"]:
            print(f"\nCLI not measured: {qry['cli_why']}; only the Python call is timed.")
        else:
            print(f"\nCLI: {qry['cli_cmd']} (python -m tvreg.cli, a fresh process per run)")
        for v in qry["variants"]:
            if "breakdown" in v:
                wall, totals, rest = v["breakdown"]
                print(f"\nwhere one reg.similar call goes, {v['label']}:\n")
                for line in _breakdown_lines(wall, totals, rest, unit="ms"):
                    print(line)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="vectors in the insert measurement")
    p.add_argument("--params-width", type=int, default=1024,
                   help="width of the residual blocks (1024 with depth 20: 21.0M params)")
    p.add_argument("--depth", type=int, default=20, help="residual blocks")
    p.add_argument("--repeats", type=int, default=3, help="timed updates and decode floors")
    p.add_argument("--catalog-size", type=int, default=10_000,
                   help="versions of one base in the query measurement")
    p.add_argument("--queries", type=int, default=20, help="timed reg.similar calls per variant")
    p.add_argument("--cli-runs", type=int, default=5, help="timed CLI runs per variant")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds per timing series: fewer calls (at least 3) when slower")
    p.add_argument("--part", choices=("all", "insert", "query"), default="all")
    p.add_argument("--alignment", choices=("both", "on", "off"), default="both",
                   help="time the insert with the subspace alignment, without it, or both")
    p.add_argument("--no-rss", dest="rss", action="store_false",
                   help="skip the peak-RSS child process")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the instrumented runs")
    p.add_argument("--workdir", help="where checkpoints and registries go; kept afterwards "
                                     "(default: a temp dir, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    p.add_argument("--_child", choices=("update",), help=argparse.SUPPRESS)
    p.add_argument("--_root", dest="root", help=argparse.SUPPRESS)
    p.add_argument("--_vid", dest="vid", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child_update(args)
        return
    if args.n < 2 or args.repeats < 1 or args.catalog_size < 11:
        p.error("--n must be >= 2, --repeats >= 1, --catalog-size >= 11")
    own = args.workdir is None
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-similarity-")
    os.makedirs(work, exist_ok=True)
    started, load_start = time.perf_counter(), _loadavg()
    try:
        ins = part_insert(args, work) if args.part in ("all", "insert") else None
        qry = part_query(args, work) if args.part in ("all", "query") else None
    finally:
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(args, ins, qry, started, load_start)


if __name__ == "__main__":
    main()
