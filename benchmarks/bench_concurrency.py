#!/usr/bin/env python3
"""Concurrency: N real processes on one registry, and N pushers to one remote, at once.

Scenarios (see docs/reliability.md §2; the workers and checks are :mod:`tvreg.testing.concurrency`,
the same as tests/test_concurrency.py runs with fewer operations):

* ``local``: N worker processes on one local registry, each a seeded random mix of ``create``
  (into two names all workers share, metadata drawn from a small set, so workers often store
  the same content at the same moment), ``tag``, reads (``ls``, ``show``, ``sql``, every tensor
  of a version) and ``gc`` (grace 3600 s, the default). The registry starts with old orphans:
  the objects of some vectors the workers will create (so creates reuse them while gc runs:
  the edge of gc's grace rule) and garbage nothing references.
* ``local-gc0``: the same with ``gc --grace 0``: no grace period at all, so only the gc lock
  protects writes in flight.
* ``push-dir`` / ``push-s3``: N registries push at once to one directory / one S3 bucket
  (moto's server in this process): each holds two versions identical in all (to land once),
  one version of its own under a name they all push (to be renumbered), a name of its own, tags.
* ``duckdb-raw``: N processes opening a DuckDB file, committing one row and closing it, with
  DuckDB's own lock and a retry after a random 0-10 ms when the open is refused, half of them
  after a read-only query: the commits DuckDB reported and the rows the file holds after. And
  ``catalog``: the same work through tvreg's catalog (its lock file serializes connections).

After each run: ``verify --deep``, the catalog against a rebuild, every reported version present
with the content and metadata reported, duplicates (the same content twice under one name),
lost commits; failures are operations that raised (the only ones expected are the clean
"deleted by a concurrent gc ... run the command again" of ``local-gc0``; an untyped error is
a bug). Lock waits: the time to open a catalog connection, and to be granted the gc lock.

    python benchmarks/bench_concurrency.py                  # N = 2, 4, 8; about 6 min on 2 cores
    python benchmarks/bench_concurrency.py --quick          # N = 2, 4, fewer operations
    python benchmarks/bench_concurrency.py --scenarios local,local-gc0 --ns 8 --repeats 5
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _load_line, _loadavg, run_header  # noqa: E402

SCENARIOS = ("local", "local-gc0", "push-dir", "push-s3", "duckdb-raw", "catalog")


def _log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- the raw DuckDB / catalog workers (this script, run as a child process) ---------------------


def _sql_worker(kind: str, path: str, me: int, ops: int, seed: int) -> None:
    """``ops`` commits of one row each (after a read-only query half of the time); prints, as
    JSON, how many commits were reported done and how many operations raised (the first
    error's message too)."""
    import datetime as _dt

    rng = random.Random(seed)
    done, errors, first = 0, 0, None
    if kind == "catalog":
        from tvreg.catalog.db import Catalog

        cat = Catalog(path)

        def read() -> None:
            cat.rows("SELECT count(*) FROM tags")

        def commit(i: int) -> None:
            with cat.writer() as con:
                con.execute("INSERT INTO tags VALUES (?, ?, 1, ?, ?)",
                            [f"w{me}", f"t{i}", "0" * 64, _dt.datetime(2026, 1, 1)])
    else:
        import duckdb

        def connect(read_only: bool):
            while True:  # DuckDB's own lock; retry a refused open after 0-10 ms
                try:
                    return duckdb.connect(path, read_only=read_only)
                except duckdb.IOException as e:
                    if "lock" not in str(e).lower():
                        raise
                    time.sleep(0.01 * rng.random())

        def read() -> None:
            con = connect(True)
            try:
                con.execute("SELECT count(*) FROM tags").fetchall()
            finally:
                con.close()

        def commit(i: int) -> None:
            con = connect(False)
            try:
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO tags VALUES (?, ?, 1, ?, ?)",
                            [f"w{me}", f"t{i}", "0" * 64, _dt.datetime(2026, 1, 1)])
                con.execute("COMMIT")
            finally:
                con.close()

    for i in range(ops):
        try:
            if rng.random() < 0.5:
                read()
            commit(i)
            done += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors += 1
            first = first or " ".join(str(e).split())[:200]
    print(json.dumps({"done": done, "errors": errors, "first": first}))


def run_sql(kind: str, n: int, ops: int, work: pathlib.Path, seed: int) -> dict:
    from tvreg.catalog.db import Catalog

    folder = work / f"{kind}-{n}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    path = str(folder / "catalog.duckdb")
    Catalog(path).index([], {})  # the schema
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "_sql", kind, path, str(i), str(ops),
                               str(seed * 1000 + i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    crashed = [e[-300:] for (_, e), p in zip(outs, procs) if p.returncode]
    got = [json.loads(o) for (o, _), p in zip(outs, procs) if p.returncode == 0]
    held = Catalog(path).rows("SELECT count(*) AS n FROM tags")[0]["n"]
    return {"ops": n * ops, "failures": sum(g["errors"] for g in got) + len(crashed),
            "verify": "-", "dups": "-", "lost": sum(g["done"] for g in got) - held,
            "wall": wall, "waits": [], "gc_waits": [],
            "errors": crashed + sorted({f"{kind}: {g['first']}" for g in got if g["first"]})}


# --- tvreg scenarios ------------------------------------------------------------------------------


def run_local(n: int, ops: int, grace: float, zoo, variants, expected, work: pathlib.Path,
              seed: int) -> dict:
    import tvreg
    from tvreg.testing import concurrency as cc

    folder = work / f"local-{grace:g}-{n}-{uuid.uuid4().hex[:6]}"
    root = folder / "registry"
    tvreg.open(root).init()
    reuse = [v for t, v in sorted(expected.items()) if t.endswith("-0")]
    reused, garbage = cc.seed_orphans(root, work / "reference-registry", reuse, garbage=10)
    run = cc.run_local(root, n, ops, base=str(zoo.base), finetuned=variants, workdir=folder,
                       grace=grace, seed=seed)
    check = cc.check_local(root, run, expected, garbage)
    failures = run.failures()
    clean = [x for x in failures if x["error"] == "RegistryError" and "concurrent gc"
             in x["message"]]
    return {"ops": len(run.lines), "failures": len(failures), "clean": len(clean),
            "verify": "ok" if check.verify_ok and not check.problems else "FAILED",
            "dups": check.duplicates, "lost": _lost(check), "wall": run.wall,
            "versions": check.versions,
            "created": sum(1 for x in run.lines if x["op"] == "create" and x["ok"]
                           and x["created"]),
            "deleted": sum(x.get("deleted", 0) for x in run.lines if x["op"] == "gc"),
            "waits": [w for x in run.lines for w in x["catalog_waits"]],
            "gc_waits": [w for x in run.lines for w in x["gc_lock_waits"]],
            "mix": collections.Counter(x["op"] for x in run.lines),
            "problems": check.problems,
            "errors": sorted({f"{x['op']}: {x['error']}: {x['message'][:160]}" for x in failures})}


def _lost(check) -> int:
    return sum(1 for p in check.problems if "not stored" in p or "catalog differed" in p)


def run_push(kind: str, n: int, zoo, variants, work: pathlib.Path, moto, seed: int) -> dict:
    from tvreg.testing import concurrency as cc

    folder = work / f"push-{kind}-{n}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    if kind == "dir":
        url, options = str(folder / "remote"), None
    else:
        bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
        moto.bucket(bucket)
        url, options = f"s3://{bucket}/team", {"endpoint_url": moto.endpoint,
                                                "skip_instance_cache": True,
                                                "use_listings_cache": False}
    sources = cc.make_sources(folder, n, str(zoo.base), variants, url, options)
    run = cc.run_pushers(sources, folder, seed=seed)
    check = cc.check_remote(url, options, sources, run, folder)
    return {"ops": len(run.lines), "failures": len(run.failures()),
            "verify": "ok" if check.verify_ok and not check.problems else "FAILED",
            "dups": check.duplicates, "lost": sum("not on the remote" in p or "overwritten" in p
                                                  for p in check.problems),
            "wall": run.wall, "versions": check.versions, "waits": [], "gc_waits": [],
            "sent": sum(x["report"]["versions_sent"] for x in run.lines if x["ok"]),
            "renumbered": sum(len(x["report"]["renumbered"]) for x in run.lines if x["ok"]),
            "problems": check.problems,
            "errors": sorted({f"push: {x['error']}: {x['message'][:160]}"
                              for x in run.failures()})}


# --- report ---------------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _ms(x: float) -> str:
    return "-" if x != x else f"{1000 * x:.1f}"


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        return "  ".join([str(r[0]).ljust(widths[0])] +
                         [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]


def report(info: list[tuple[str, str]], results: list[tuple[str, int, list[dict]]]) -> int:
    rows, notes, bad = [], [], 0
    for scenario, n, runs in results:
        ops = sum(r["ops"] for r in runs)
        fails = sum(r["failures"] for r in runs)
        clean = sum(r.get("clean", 0) for r in runs)
        waits = [w for r in runs for w in r["waits"]]
        gcw = [w for r in runs for w in r["gc_waits"]]
        verify = "-" if runs[0]["verify"] == "-" else \
            ("ok" if all(r["verify"] == "ok" for r in runs) else "FAILED")
        dups = "-" if runs[0]["dups"] == "-" else sum(r["dups"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        rows.append((scenario, n, len(runs), ops,
                     f"{fails}" + (f" ({clean} clean)" if clean else ""), verify, dups, lost,
                     f"{wall:.1f}", f"{ops / len(runs) / wall:.0f}",
                     _ms(_pct(waits, 0.5)), _ms(_pct(waits, 0.99)), _ms(max(waits, default=nan)),
                     _ms(_pct(gcw, 0.99)), _ms(max(gcw, default=nan))))
        for r in runs:
            for p in r.get("problems", []):
                notes.append(f"{scenario} N={n}: PROBLEM {p}")
            for e in r.get("errors", []):
                notes.append(f"{scenario} N={n}: {e}")
        extra = []
        if "created" in runs[0]:
            extra.append(f"{sum(r['created'] for r in runs)} versions created, "
                         f"{sum(r['deleted'] for r in runs)} objects deleted by gc, mix "
                         f"{dict(sum((r['mix'] for r in runs), collections.Counter()))}")
        if "sent" in runs[0]:
            extra.append(f"{sum(r['versions'] for r in runs)} versions on the remotes, "
                         f"{sum(r['sent'] for r in runs)} records written, "
                         f"{sum(r['renumbered'] for r in runs)} renumbered")
        if extra:
            notes.append(f"{scenario} N={n}: " + "; ".join(extra))
        if scenario not in ("duckdb-raw",) and (verify == "FAILED" or lost or
                                                 (dups not in ("-", 0)) or fails - clean):
            bad += 1
    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")
    print()
    header = ("scenario", "N", "runs", "operations", "failures", "verify", "duplicates", "lost",
              "wall s", "ops/s", "cat p50 ms", "cat p99 ms", "cat max ms", "gc-lock p99 ms",
              "gc-lock max ms")
    for line in _table(header, rows):
        print(line)
    print()
    for line in notes:
        print(line)
    print()
    print(
        "operations: over all runs (duckdb-raw, catalog: commits); failures: operations that\n"
        "raised ('clean': the announced 'deleted by a concurrent gc ... run the command again');\n"
        "verify: `verify --deep` and every check of tvreg.testing.concurrency passed in every\n"
        "run; duplicates: the same content stored twice under one name; lost: versions reported\n"
        "created but missing (or missing from the catalog), records overwritten, and for\n"
        "duckdb-raw / catalog commits reported done that the file does not hold; wall s: median\n"
        "wall time of a run (from the start signal; process start-up and imports excluded);\n"
        "ops/s: operations per run / wall. cat: time to open a catalog connection (the lock wait\n"
        "included), per connection; gc-lock: time to be granted the gc lock (writes: shared;\n"
        "gc: exclusive).")
    return bad


nan = float("nan")


def run(args) -> int:
    import duckdb
    import torch

    import tvreg
    from tvreg.testing import concurrency as cc
    from tvreg.testing import make_toy_zoo

    started = time.perf_counter()
    load_start = _loadavg()
    own = args.workdir is None
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-concurrency-"))
    work.mkdir(parents=True, exist_ok=True)
    moto = None
    results: list[tuple[str, int, list[dict]]] = []
    try:
        zoo = make_toy_zoo(work / "zoo")
        variants = cc.make_variants(zoo.base, zoo.finetuned, args.variants, work / "zoo")
        expected = cc.expected_vector_ids(str(zoo.base), variants, work)
        if "push-s3" in args.scenarios:
            from bench_remote import _Moto

            moto = _Moto()
        for scenario in args.scenarios:
            for n in args.ns:
                runs = []
                for r in range(args.repeats):
                    seed = 1000 * n + r
                    _log(f"{scenario} N={n} run {r + 1}/{args.repeats}")
                    if scenario in ("local", "local-gc0"):
                        res = run_local(n, args.ops, 3600.0 if scenario == "local" else 0.0,
                                        zoo, variants, expected, work, seed)
                    elif scenario.startswith("push-"):
                        res = run_push(scenario[5:], n, zoo, variants, work, moto, seed)
                    else:
                        res = run_sql(scenario, n, args.commits, work, seed)
                    runs.append(res)
                results.append((scenario, n, runs))
    finally:
        if moto is not None:
            moto.stop()
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    import moto as _moto_pkg

    info = run_header(f"torch {torch.__version__}, duckdb {duckdb.__version__}, moto "
                      f"{_moto_pkg.__version__}, tvreg {tvreg.__version__}")
    info += [
        ("workload", f"toy width 32 (11,188 parameters), {args.variants} fine-tuned variants "
                     f"per task ({3 * args.variants} task vectors); local: {args.ops} operations "
                     f"per worker; duckdb-raw / catalog: {args.commits} commits per process"),
        ("setup", f"N = {', '.join(map(str, args.ns))}; {args.repeats} run(s) each; whole "
                  f"benchmark {time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    return report(info, results)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_sql":
        _, _, kind, path, me, ops, seed = sys.argv
        _sql_worker(kind, path, int(me), int(ops), int(seed))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"which scenarios: {', '.join(SCENARIOS)}")
    p.add_argument("--ns", default="2,4,8", help="process counts")
    p.add_argument("--repeats", type=int, default=2, help="runs of each scenario and N")
    p.add_argument("--ops", type=int, default=50, help="operations per worker (local)")
    p.add_argument("--commits", type=int, default=100,
                   help="commits per process (duckdb-raw, catalog)")
    p.add_argument("--variants", type=int, default=3, help="fine-tuned variants per task")
    p.add_argument("--quick", action="store_true", help="N = 2, 4; 20 operations; 1 run")
    p.add_argument("--workdir", default=None, help="where everything goes (kept); default: a "
                                                   "temp dir, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    args = p.parse_args(argv)
    if args.quick:
        args.ns, args.ops, args.repeats, args.commits = "2,4", 20, 1, 40
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.ns = [int(x) for x in str(args.ns).split(",") if x]
    if set(args.scenarios) - set(SCENARIOS):
        p.error(f"--scenarios takes {', '.join(SCENARIOS)}")
    if min(args.ns) < 1 or args.repeats < 1 or args.ops < 1 or args.commits < 1:
        p.error("--ns, --repeats, --ops and --commits must be positive")
    return 1 if run(args) else 0


if __name__ == "__main__":
    sys.exit(main())
