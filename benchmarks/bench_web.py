#!/usr/bin/env python3
"""Web view (``tvreg serve``, issue 18): page times on a registry of 10,000 versions, and many
concurrent clients, over HTTP on loopback.

What it does (see benchmarks/README.md and docs/benchmarks.md):

1. **A registry of 10,000 versions.** Real vectors first: the toy zoo of
   :func:`tvreg.testing.make_toy_zoo` (its five tasks, and two of them again with other
   settings: second versions), a stored composition of three of them, two tags, similarities
   computed as ``create`` does. Then synthetic rows up to ``--versions``, written into the
   catalog (``versions``, ``vectors``, ``tags``) with ``tvreg.catalog.db.insert_rows``: spread
   over ``--names`` names of four bases (``--real-base-names`` of them on the real vectors'
   base, the rest on three made-up ones), 1 to ~40 versions a name, tasks, datasets, learning
   rates, steps, metadata and creation times over the past year, a few compositions (parents
   and recipe) and lossy versions, tags on about a fifth of the names. The synthetic vectors of
   the real base also get what a similarity pass would store: a sketch per vector
   (``vector_stats``, and the base's sketch file) and exact pairs between the newest versions
   of its names (``similarities``), so that the heatmap and ``similar`` read a base of a few
   hundred names. Synthetic rows have no objects in the store: the pages that read tensors or
   records (a version's page, a pair) are asked for real vectors only, and ``tvreg reindex``
   on this registry would drop the synthetic rows.
2. **One request at a time.** ``tvreg serve`` in a subprocess (``tvreg.testing.web``); for each
   kind of page and API call, ``--requests`` sequential GETs on one keep-alive connection from
   this process, after ``--warmup`` untimed ones: median, p95 (nearest rank) and max of the
   time from sending the request to the last byte of the body, and the body's size.
3. **Concurrent clients.** ``--clients`` threads in this process, each with its own keep-alive
   connection, each doing ``--per-client`` requests over a mix of the pages (every kind above
   but the exports, ``/api/versions`` and ``/api/matrix?base=``, from a random start, round
   robin), all started together. Twice: each client waiting a random time between its
   requests (uniform in [0, 2·``--think``], people reading pages), then without waiting (the
   server saturated: its throughput). Requests, errors (a status other than 200, or a failed
   connection), wall time, throughput, and the latency's median, p95 and max under that load.

Also: how long a copy of the catalog takes (``CatalogSnapshot``, which ``tvreg serve`` makes
on its first request and again whenever the file changes) and the catalog's size, and the same
for a copy of it in which every vector has a sketch (the largest table of a registry whose
versions are all real vectors with similarities computed).

    python benchmarks/bench_web.py                         # 10,000 versions, 50 requests a page
    python benchmarks/bench_web.py --versions 2000 --requests 20 --clients 10   # quick
    python benchmarks/bench_web.py --workdir /tmp/web --keep  # keep the registry (and reuse it)
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

os.environ.setdefault("TVREG_NO_PROGRESS", "1")  # no progress bars in the server's output

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _load_line, _loadavg, run_header  # noqa: E402

from tvreg.testing.web import tvreg_serve  # noqa: E402  (tvreg serve in a subprocess)

DAY = 86_400.0
TEAMS = ("nlp", "search", "ads", "speech", "support", "vision")
TASKS = ("sentiment", "topic", "toxicity", "ner", "qa", "summarization", "translation",
         "paraphrase", "nli", "intent", "spam", "code-review")
SOURCES = ("v1", "v2", "web", "clean", "internal")
LRS = (1e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3)
STEPS = (500, 1000, 2000, 5000, 10_000, 20_000)
#: the made-up bases: (label, n_params, n_tensors, share of the names not on the real base)
SYNTHETIC_BASES = (("base-a", 124_439_808, 148, 0.45), ("base-b", 1_235_814_400, 146, 0.35),
                   ("base-c", 7_241_732_096, 291, 0.20))
SQL_QUERY = ("SELECT task, count(*) AS versions, count(DISTINCT name) AS names, "
             "round(avg(lr), 6) AS mean_lr FROM versions GROUP BY task ORDER BY versions DESC")


# --- the registry --------------------------------------------------------------------------------


def build_real(reg, zoo_dir: str) -> dict:
    """The real vectors: 5 toy tasks, 2 second versions, a composition, tags, similarities."""
    from tvreg.testing import make_toy_zoo
    from tvreg.testing.toy import TASKS as TOY_TASKS

    zoo = make_toy_zoo(os.path.join(zoo_dir, "a"), tasks=TOY_TASKS)
    for task in TOY_TASKS:
        reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task],
                   meta={"owner": "bench", "seed": 0})
    again = make_toy_zoo(os.path.join(zoo_dir, "b"), tasks=("sentiment", "topic"), steps=40,
                         lr=5e-3)
    for task in ("sentiment", "topic"):
        reg.create(task, again.base, again.finetuned[task], **again.meta[task],
                   meta={"owner": "bench", "seed": 0})
    comp = reg.resolve("0.5*sentiment + 0.5*topic - 0.3*toxicity")
    reg.save_composition("multi/sent-topic", comp, task="multi")
    reg.tag("sentiment@2", "prod")
    reg.tag("multi/sent-topic@1", "best")
    rows = reg.catalog.rows("SELECT name, version, vector_id, base_hash, arch_fingerprint, "
                            "n_params, raw_bytes, stored_bytes, recipe FROM versions")
    bases = {(r["base_hash"], r["arch_fingerprint"]) for r in rows}
    assert len(bases) == 1, bases  # the two zoos share their (deterministic) base
    recipe = next(json.loads(r["recipe"]) for r in rows if r["recipe"])
    n_tensors = reg.catalog.rows("SELECT n_tensors FROM vectors LIMIT 1")[0]["n_tensors"]
    return {"base": rows[0]["base_hash"], "arch": rows[0]["arch_fingerprint"],
            "n_params": rows[0]["n_params"], "raw_bytes": rows[0]["raw_bytes"],
            "stored_bytes": rows[0]["stored_bytes"], "n_tensors": n_tensors,
            "recipe": recipe, "versions": len(rows)}


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synthesize(reg, real: dict, total: int, n_names: int, real_base_names: int,
               seed: int = 0) -> dict:
    """Synthetic catalog rows up to ``total`` versions (see the module's doc)."""
    import datetime as _dt

    from tvreg.catalog.db import CODEC_COLUMNS, VERSION_COLUMNS, insert_rows

    rng = random.Random(seed)
    n_versions = total - real["versions"]
    if n_versions < n_names:
        raise SystemExit(f"--versions {total} leaves {n_versions} synthetic versions for "
                         f"{n_names} names: give fewer --names")
    # versions per name: one each, the rest drawn with heavy-tailed weights (a few long
    # histories: ~30 versions at most for 10,000 versions over 2,500 names)
    weights = [min(rng.paretovariate(1.2), 20.0) for _ in range(n_names)]
    counts = [1] * n_names
    for i in rng.choices(range(n_names), weights=weights, k=n_versions - n_names):
        counts[i] += 1
    bases = [{"hash": real["base"], "arch": real["arch"], "n_params": real["n_params"],
              "raw": real["raw_bytes"], "stored": real["stored_bytes"],
              "n_tensors": real["n_tensors"]}]
    for label, n_params, n_tensors, _ in SYNTHETIC_BASES:
        bases.append({"hash": _hex("bench-web-base-" + label), "arch": _hex("arch-" + label),
                      "n_params": n_params, "raw": 4 * n_params, "stored": None,
                      "n_tensors": n_tensors})
    shares = [b[3] for b in SYNTHETIC_BASES]
    now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    versions, vectors, tags = [], [], []
    by_base: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    real_base_vids: list[tuple[str, str]] = []  # (vector id, task) of the real base
    latest_real: list[str] = []
    recipe_template = real["recipe"]
    for i in range(n_names):
        team, task = rng.choice(TEAMS), rng.choice(TASKS)
        name = f"{team}/{task}-{i:05d}"
        b = 0 if i < real_base_names else 1 + rng.choices(range(3), weights=shares)[0]
        base = bases[b]
        start = now - _dt.timedelta(seconds=rng.uniform(5 * DAY, 365 * DAY))
        when = start
        vids = []
        for version in range(1, counts[i] + 1):
            vid = _hex(f"bench-web-vector-{name}@{version}")
            dataset = f"{task}-{rng.choice(SOURCES)}"
            lr, steps = rng.choice(LRS), rng.choice(STEPS)
            meta = {"owner": team, "seed": rng.randrange(100), "epochs": rng.choice((1, 2, 3, 5))}
            parents, recipe, codec = [], None, (None, None, None)
            roll = rng.random()
            earlier = by_base[b]
            if roll < 0.05 and len(earlier) >= 3:  # a composition of 2 or 3 earlier vectors
                ops = rng.sample(earlier, rng.choice((2, 3)))
                coefs = [round(rng.uniform(0.2, 1.0), 2) for _ in ops]
                operand = recipe_template["operands"][0]
                recipe = {**recipe_template,
                          "expression": " + ".join(f"{c}*{ref}" for c, (ref, _) in
                                                   zip(coefs, ops, strict=True)),
                          "operands": [{**operand, "ref": ref, "vector_id": v, "coef": c}
                                       for c, (ref, v) in zip(coefs, ops, strict=True)]}
                parents = [v for _, v in ops]
            elif roll < 0.08 and vids:  # a lossy copy of the previous version
                spec = rng.choice(("int8", "topk:density=0.1", "int4"))
                rel = round(rng.uniform(0.005, 0.2), 4)
                cos = round(1 - rel * rel / 2, 6)
                recipe = {"op": "recode", "codec": spec, "source": vids[-1],
                          "source_ref": f"{name}@{version - 1}",
                          "error": {"rel_l2": rel, "cosine": cos}}
                parents = [vids[-1]]
                codec = (spec, rel, cos)
            stored = base["stored"] or int(base["raw"] * rng.uniform(0.55, 0.8))
            if codec[0]:
                stored = base["raw"] // rng.choice((4, 8, 10))
            versions.append((name, version, vid, base["hash"], base["arch"], task, dataset, lr,
                             steps, json.dumps(meta, sort_keys=True), base["n_params"],
                             base["raw"], stored, "bytegroup4+zstd3", when,
                             json.dumps(parents),
                             None if recipe is None else json.dumps(recipe, sort_keys=True),
                             *codec))
            vectors.append((vid, base["hash"], base["arch"], base["n_tensors"], 0,
                            base["n_params"], base["raw"], stored, "bytegroup4+zstd3", "[]"))
            vids.append(vid)
            earlier.append((f"{name}@{version}", vid))
            if b == 0:
                real_base_vids.append((vid, task))
            when += _dt.timedelta(seconds=rng.uniform(0.1 * DAY, 3 * DAY))
        if b == 0:
            latest_real.append(vids[-1])
        for tag, p in (("prod", 0.15), ("best", 0.05), ("staging", 0.04)):
            if rng.random() < p:
                v = rng.randrange(1, counts[i] + 1)
                tags.append((name, tag, v, vids[v - 1], now))
    t0 = time.perf_counter()
    with reg.catalog.writer() as con:
        insert_rows(con, "versions", versions, (*VERSION_COLUMNS, *CODEC_COLUMNS))
        insert_rows(con, "vectors", vectors)
        insert_rows(con, "tags", tags, ("name", "tag", "version", "vector_id", "updated_at"))
    sketches_s = _similarity_rows(reg, real, real_base_vids, latest_real, seed)
    return {"versions": len(versions), "names": n_names, "tags": len(tags),
            "real_base_vectors": len(real_base_vids), "real_base_names": len(latest_real),
            "insert_s": time.perf_counter() - t0 - sketches_s, "similarity_s": sketches_s}


def _similarity_rows(reg, real: dict, vids: list[tuple[str, str]], latest: list[str],
                     seed: int) -> float:
    """Sketches of the synthetic vectors of the real base (a direction per task plus noise, so
    that names of one task look alike), the base's sketch file, and the exact pairs of the
    newest versions of its names."""
    import numpy as np

    from tvreg.catalog import sketches as sketch_index

    t0 = time.perf_counter()
    with reg.catalog.writer() as con:
        con.execute("SELECT setseed(?)", [seed / 1000 + 0.1])
        con.execute("CREATE TEMP TABLE syn (vid VARCHAR, task INTEGER, newest BOOLEAN)")
        index = {t: i for i, t in enumerate(TASKS)}
        newest = set(latest)
        con.executemany("INSERT INTO syn VALUES (?, ?, ?)",
                        [(v, index[t], v in newest) for v, t in vids])
        con.execute("""
            CREATE TEMP TABLE syn_sketch AS SELECT vid, newest, list_transform(range(4096),
                lambda x: (0.8 * ((hash(task * 4096 + x) % 20001)::DOUBLE / 10000 - 1)
                           + 0.6 * (random() * 2 - 1))::FLOAT)::FLOAT[4096] AS sketch
            FROM syn""")
        con.execute("INSERT INTO vector_stats SELECT vid, ?, ?, "
                    "sqrt(list_sum(list_transform(sketch::FLOAT[], lambda x: x::DOUBLE * x))), "
                    "?, ?, sketch, now()::TIMESTAMP FROM syn_sketch",
                    [real["base"], real["arch"], real["n_params"], real["n_params"] // 5])
        # exact pairs between the newest versions: the cosine of the sketches, and made-up
        # sign conflicts and alignments
        con.execute("""
            INSERT INTO similarities SELECT a.vid, b.vid,
                c * na * nb, na, nb, c, 200000, n_conf, n_conf / 200000, now()::TIMESTAMP,
                0.1 + 0.5 * random(), 2
            FROM (SELECT a.vid AS avid, b.vid AS bvid,
                         array_cosine_similarity(a.sketch, b.sketch)::DOUBLE AS c,
                         sqrt(array_inner_product(a.sketch, a.sketch))::DOUBLE AS na,
                         sqrt(array_inner_product(b.sketch, b.sketch))::DOUBLE AS nb,
                         (60000 + 40000 * random())::BIGINT AS n_conf
                  FROM syn_sketch a JOIN syn_sketch b ON a.vid < b.vid
                  WHERE a.newest AND b.newest) p
            JOIN syn_sketch a ON a.vid = p.avid JOIN syn_sketch b ON b.vid = p.bvid""")
        got = con.execute("SELECT s.vid, v.norm, s.sketch FROM syn_sketch s JOIN vector_stats v "
                          "ON v.vector_id = s.vid").fetchnumpy()
        con.execute("DROP TABLE syn_sketch")
        con.execute("DROP TABLE syn")
    sketch_index.append(reg.root, real["base"], real["arch"],
                        [(v, float(n), np.asarray(sk, dtype=np.float32))
                         for v, n, sk in zip(got["vid"], got["norm"], got["sketch"], strict=True)])
    return time.perf_counter() - t0


def build(root: str, args) -> dict:
    import tvreg

    t0 = time.perf_counter()
    reg = tvreg.open(root)
    real = build_real(reg, os.path.join(os.path.dirname(root), "zoo"))
    t_real = time.perf_counter() - t0
    syn = synthesize(reg, real, args.versions, args.names, args.real_base_names)
    reg.close()
    info = {"real": {k: v for k, v in real.items() if k != "recipe"}, "synthetic": syn,
            "real_s": t_real, "total_s": time.perf_counter() - t0}
    with open(os.path.join(root, "bench-web.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def describe(root: str) -> dict:
    """What the pages are asked for: names, refs and the base, read from the catalog."""
    import tvreg

    reg = tvreg.open(root)
    q = reg.catalog.rows
    counts = q("SELECT count(*) AS versions, count(DISTINCT name) AS names, "
               "count(DISTINCT base_hash) AS bases FROM versions")[0]
    base = q("SELECT base_hash FROM versions WHERE name = 'sentiment'")[0]["base_hash"]
    longest = q("SELECT name, count(*) AS n FROM versions GROUP BY name "
                "ORDER BY n DESC, name LIMIT 1")[0]
    base_names = q("SELECT count(DISTINCT name) AS n FROM versions WHERE base_hash = ?",
                   [base])[0]["n"]
    path = reg.catalog.path
    reg.close()
    return {**counts, "base": base, "longest": longest["name"], "longest_n": longest["n"],
            "base_names": base_names, "catalog": path,
            "catalog_bytes": os.path.getsize(path)}


def copy_times(path: str, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` copies of the catalog into memory (as tvreg serve does)."""
    from tvreg.catalog.snapshot import CatalogSnapshot

    out = []
    for _ in range(repeats):
        snap = CatalogSnapshot(path)
        t0 = time.perf_counter()
        con, _ = snap._make_copy()
        out.append(time.perf_counter() - t0)
        con.close()
    return out


def copy_times_all_sketched(path: str, repeats: int) -> tuple[int, list[float]]:
    """The same for a copy of the catalog in which every vector has a sketch (as if every
    version were a real vector of a base with similarities computed): its size, and times."""
    import duckdb

    scratch = path + ".all-sketched"
    shutil.copyfile(path, scratch)
    try:
        con = duckdb.connect(scratch)
        try:
            con.execute("SELECT setseed(0.3)")
            con.execute("""
                INSERT INTO vector_stats SELECT v.vector_id, v.base_hash, v.arch_fingerprint,
                    1.0, v.n_params, v.n_params // 5,
                    list_transform(range(4096), lambda x: (random() * 2 - 1)::FLOAT)::FLOAT[4096],
                    now()::TIMESTAMP
                FROM vectors v WHERE v.vector_id NOT IN (SELECT vector_id FROM vector_stats)""")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        return os.path.getsize(scratch), copy_times(scratch, repeats)
    finally:
        for leftover in (scratch, scratch + ".wal", scratch + ".lock"):
            if os.path.exists(leftover):
                os.remove(leftover)


# --- the requests --------------------------------------------------------------------------------


def pages(d: dict) -> list[tuple[str, str]]:
    """(label, path) of every kind of request measured."""
    quote = urllib.parse.quote
    filters = urllib.parse.urlencode({"q": "sent", "task": "sentiment", "lr_min": "1e-5",
                                      "lr_max": "1e-3", "all": "1", "sort": "lr",
                                      "order": "desc"})
    base = d["base"][:12]
    return [
        ("overview (default)", "/"),
        ("overview, search + filters + sort", "/?" + filters),
        ("overview, page 50 of all versions", "/?all=1&page=50"),
        ("name page (longest history)", "/names/" + quote(d["longest"])),
        ("version page (real vector)", "/versions/sentiment/2"),
        ("version page (composition)", "/versions/multi/sent-topic/1"),
        ("bases", "/bases"),
        ("base heatmap (40 names)", f"/bases/{base}"),
        ("pair page", "/pair?a=sentiment&b=topic"),
        ("SQL console, a GROUP BY", "/sql?q=" + quote(SQL_QUERY)),
        ("API /api/versions/NAME/N", "/api/versions/sentiment/2?tensors=1"),
        ("API /api/names/NAME", "/api/names/" + quote(d["longest"])),
        ("API /api/similar/REF", "/api/similar/sentiment"),
        ("API /api/sql", "/api/sql?q=" + quote(SQL_QUERY)),
        ("API /api/matrix?base= (150 names)", f"/api/matrix?base={base}"),
        ("API /api/versions (export)", "/api/versions"),
        ("API /api/versions?all=1 (export)", "/api/versions?all=1"),
    ]


EXPORTS = ("/api/versions", "/api/matrix")


class Client:
    """One keep-alive connection; a request that finds it closed by the server (after its
    keep-alive timeout) reconnects once, as a browser does."""

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def get(self, path: str) -> tuple[int, int, float]:
        """(status, body bytes, seconds); status 0: the connection failed."""
        t0 = time.perf_counter()
        for attempt in (0, 1):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, len(body), time.perf_counter() - t0
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if fresh or attempt:
                    return 0, 0, time.perf_counter() - t0
                self.reconnects += 1
                t0 = time.perf_counter()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _body(host: str, port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: status {r.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def p95(xs: list[float]) -> float:
    """The 95th percentile, nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def sequential(host: str, port: int, kinds: list[tuple[str, str]], n: int, warmup: int
               ) -> list[dict]:
    out = []
    client = Client(host, port)
    for label, path in kinds:
        statuses = collections.Counter()
        times, size = [], 0
        for i in range(warmup + n):
            status, size, dt = client.get(path)
            statuses[status] += 1
            if i >= warmup:
                times.append(dt)
        out.append({"label": label, "path": path, "n": n, "median": statistics.median(times),
                    "p95": p95(times), "max": max(times), "bytes": size,
                    "failed": {k: v for k, v in statuses.items() if k != 200}})
    client.close()
    return out


def concurrent(host: str, port: int, kinds: list[tuple[str, str]], clients: int,
               per_client: int, think: float = 0.0, seed: int = 1) -> dict:
    """``clients`` threads, ``per_client`` requests each; ``think``: mean seconds a client waits
    between two requests (uniform in [0, 2·think]; 0: none, the server saturated)."""
    mix = [path for _, path in kinds if not path.startswith(EXPORTS)]
    barrier = threading.Barrier(clients + 1)
    results: list[list[tuple[str, int, float]]] = [[] for _ in range(clients)]
    reconnects = [0] * clients
    starts = random.Random(seed).choices(range(len(mix)), k=clients)

    def run(k: int) -> None:
        client = Client(host, port)
        rng = random.Random(seed * 1000 + k)
        barrier.wait()
        if think:
            time.sleep(rng.uniform(0, 2 * think))  # the users do not all arrive at once
        for i in range(per_client):
            path = mix[(starts[k] + i) % len(mix)]
            status, _, dt = client.get(path)
            results[k].append((path, status, dt))
            if think and i + 1 < per_client:
                time.sleep(rng.uniform(0, 2 * think))
        reconnects[k] = client.reconnects
        client.close()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    times = [dt for _, _, dt in flat]
    errors = collections.Counter(status for _, status, _ in flat if status != 200)
    per_kind = {}
    for path in mix:
        xs = [dt for p, s, dt in flat if p == path]
        per_kind[path] = {"n": len(xs), "median": statistics.median(xs), "p95": p95(xs)}
    return {"clients": clients, "requests": len(flat), "errors": sum(errors.values()),
            "error_statuses": dict(errors), "reconnects": sum(reconnects), "wall": wall,
            "throughput": len(flat) / wall, "median": statistics.median(times),
            "p95": p95(times), "max": max(times), "per_kind": per_kind}


# --- the report ----------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _kb(n: int) -> str:
    return f"{n / 1000:.1f}" if n < 10**6 else f"{n / 1000:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", type=int, default=10_000, help="versions in all (default 10000)")
    ap.add_argument("--names", type=int, default=2_500, help="synthetic names (default 2500)")
    ap.add_argument("--real-base-names", type=int, default=300,
                    help="synthetic names on the real vectors' base (default 300)")
    ap.add_argument("--requests", type=int, default=50, help="timed requests per page (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per page first")
    ap.add_argument("--clients", type=int, default=40, help="concurrent clients (default 40)")
    ap.add_argument("--per-client", type=int, default=25,
                    help="requests per concurrent client (default 25)")
    ap.add_argument("--think", type=float, default=1.0,
                    help="mean seconds between a concurrent client's requests (default 1; "
                         "a second run without any is made too; 0: that run only)")
    ap.add_argument("--copies", type=int, default=5, help="timed copies of the catalog")
    ap.add_argument("--part", choices=("all", "sequential", "concurrent"), default="all")
    ap.add_argument("--workdir", help="where the registry goes (kept; reused if built there)")
    ap.add_argument("--keep", action="store_true", help="keep a temporary workdir")
    args = ap.parse_args(argv)

    load_start = _loadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-web-")
    os.makedirs(workdir, exist_ok=True)
    root = os.path.join(workdir, "registry")
    try:
        import duckdb
        import starlette
        import uvicorn

        import tvreg

        lines = run_header(f"tvreg {tvreg.__version__}, duckdb {duckdb.__version__}, "
                           f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}")
        marker = os.path.join(root, "bench-web.json")
        if os.path.exists(marker):
            with open(marker) as f:
                built = json.load(f)
            lines.append(("registry", f"reused {root} (built earlier)"))
        else:
            built = build(root, args)
            lines.append(("registry", f"built in {built['total_s']:.1f} s ({built['real_s']:.1f}"
                                      " s of it the real vectors)"))
        d = describe(root)
        syn = built["synthetic"]
        lines.append(("contents", f"{d['versions']:,} versions of {d['names']:,} names, "
                                  f"{d['bases']} bases; {built['real']['versions']} real versions "
                                  f"({built['real']['n_tensors']} tensors each); the real base "
                                  f"has {d['base_names']} names and "
                                  f"{syn['real_base_vectors']:,} synthetic vectors with sketches; "
                                  f"{syn['tags']} synthetic tags; longest history "
                                  f"{d['longest_n']} versions ({d['longest']})"))
        copies = copy_times(d["catalog"], args.copies)
        lines.append(("catalog", f"{d['catalog_bytes'] / 1e6:.1f} MB on disk; a copy into memory "
                                 f"(CatalogSnapshot) takes {_ms(statistics.median(copies))} ms "
                                 f"(median of {len(copies)}: "
                                 f"{' '.join(_ms(c) for c in copies)})"))
        size, copies = copy_times_all_sketched(d["catalog"], args.copies)
        lines.append(("catalog, every vector sketched", f"{size / 1e6:.1f} MB on disk; a copy "
                      f"takes {_ms(statistics.median(copies))} ms (median of {len(copies)}: "
                      f"{' '.join(_ms(c) for c in copies)})"))
        for k, v in lines:
            print(f"{k}: {v}")
        print()
        kinds = pages(d)
        with tvreg_serve(root) as server:
            parsed = urllib.parse.urlsplit(server.base)
            host, port = parsed.hostname, parsed.port
            assert host is not None and port is not None
            first = Client(host, port)
            status, _, dt = first.get("/")
            count = json.loads(_body(host, port, "/api/sql?q=" + urllib.parse.quote(
                "SELECT count(*) AS n FROM versions")))[0]["n"]
            first.close()
            if count != d["versions"]:
                raise SystemExit(f"the server lists {count} versions, the catalog {d['versions']}")
            print(f"first request (the catalog copied): {_ms(dt)} ms, status {status}; the "
                  f"server lists {count:,} versions\n")
            if args.part in ("all", "sequential"):
                seq = sequential(host, port, kinds, args.requests, args.warmup)
                print(f"One request at a time ({args.requests} per page after {args.warmup} "
                      "untimed; ms from request to the body's last byte; p95 nearest rank)\n")
                print("| page | path | median ms | p95 ms | max ms | body KB |")
                print("|---|---|---|---|---|---|")
                for r in seq:
                    path = r["path"] if len(r["path"]) <= 60 else r["path"][:57] + "..."
                    failed = (" (statuses " + ", ".join(f"{k}: {v}" for k, v in
                                                        sorted(r["failed"].items())) + ")"
                              if r["failed"] else "")
                    print(f"| {r['label']}{failed} | `{path}` | {_ms(r['median'])} | "
                          f"{_ms(r['p95'])} | {_ms(r['max'])} | {_kb(r['bytes'])} |")
                over = [r["label"] for r in seq if r["p95"] >= 0.1
                        and not r["path"].startswith(EXPORTS)]
                print(f"\npages with p95 >= 100 ms (exports aside): {over or 'none'}")
                failed = [r["label"] for r in seq if r["failed"]]
                print(f"pages answered with another status than 200: {failed or 'none'}\n")
            if args.part in ("all", "concurrent"):
                runs = [(f"{args.think:g} s", concurrent(host, port, kinds, args.clients,
                                                          args.per_client, args.think))]
                if args.think:
                    runs.append(("none", concurrent(host, port, kinds, args.clients,
                                                     args.per_client)))
                print(f"{args.clients} concurrent clients, {args.per_client} requests each over "
                      f"{len(runs[0][1]['per_kind'])} kinds of page (exports aside), each client "
                      "waiting a random time between its requests (uniform, mean: think), or not "
                      "at all (the server saturated)\n")
                print("| clients | think | requests | errors | wall s | requests/s | median ms "
                      "| p95 ms | max ms |")
                print("|---|---|---|---|---|---|---|---|---|")
                for think, con in runs:
                    print(f"| {con['clients']} | {think} | {con['requests']} | {con['errors']} | "
                          f"{con['wall']:.2f} | {con['throughput']:.1f} | {_ms(con['median'])} | "
                          f"{_ms(con['p95'])} | {_ms(con['max'])} |")
                for think, con in runs:
                    if con["errors"]:
                        print(f"\nerror statuses (think {think}): {con['error_statuses']}")
                print("\n(keep-alive connections closed by the server and opened again: "
                      f"{', '.join(str(con['reconnects']) for _, con in runs)})")
                for think, con in runs:
                    print(f"\nper kind, think {think}:\n")
                    print("| path | n | median ms | p95 ms |")
                    print("|---|---|---|---|")
                    for path, r in con["per_kind"].items():
                        short = path if len(path) <= 60 else path[:57] + "..."
                        print(f"| `{short}` | {r['n']} | {_ms(r['median'])} | {_ms(r['p95'])} |")
            output = server.output()
            if "Traceback" in output:
                print("\nthe server printed a traceback:\n" + output)
        print(f"\nload: {_load_line(load_start, _loadavg())}")
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.workdir:
            print(f"kept {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
