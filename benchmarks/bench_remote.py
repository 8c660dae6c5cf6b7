#!/usr/bin/env python3
"""Remotes: ``Registry.push`` and ``Registry.pull`` against copying the same stored bytes.

Three measurements (see docs/benchmarks.md, "Remotes (push / pull)"):

1. **Directory remote.** Three real task vectors of a ~20.6M-parameter model (``tvreg.testing.toy``
   width 1600: one base pre-trained with a few Adam steps, fine-tuned with a few more on three
   tasks, stored with ``similarities=False``) are pushed to a fresh directory remote, and pulled
   from it into a fresh, empty registry. Baselines, in the same process on the same bytes:
   ``cp -r REGISTRY/objects DEST`` and ``cp -r REMOTE/objects DEST`` (subprocesses); for
   reference only, ``cp -r`` followed by ``sync`` and a verified, durable copy in Python (each
   file read, sha256-hashed, written and fsynced on 8 threads).
2. **S3** (moto's ``ThreadedMotoServer`` in this process, on 127.0.0.1): the same push to a fresh
   bucket and pull into a fresh registry, against one ``s3fs.S3FileSystem.put(objects_dir,
   "bucket/raw", recursive=True)`` and one ``fs.get("bucket/raw", dir, recursive=True)``.
3. **Re-push of an unchanged registry** of 1,000 small vectors (3 tensors, 104 parameters) to
   S3: pushed once (not timed), then pushed again (timed), which must send no object, no version
   and no tag (asserted). Two layouts: 1,000 names of one version, and one name of 1,000
   versions. Target: under 5 s. The same re-push is also timed as ``tvreg push`` in a fresh
   process (imports included), unless ``--no-cli``. The remote store calls of the last re-push
   are counted (``FsspecStore`` methods wrapped with counters).

Each case is repeated ``--repeats`` times (a fresh remote and a fresh target each time, tvreg and
baseline interleaved) and the medians are quoted; the ratio is tvreg's median over the
baseline's. ``os.sync()`` runs (untimed) before each timed operation so no one pays for another's
dirty pages; every S3 client starts cold (``S3FileSystem.clear_instance_cache()``), as a new
process would. Sizes are in MB = 10**6 bytes.

    python benchmarks/bench_remote.py                 # about 4 min on 2 cores
    python benchmarks/bench_remote.py --quick         # small model, 100 small vectors, < 1 min
    python benchmarks/bench_remote.py --parts dir,s3 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")  # no progress bars inside timed regions

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import DEFAULT_WIDTH, _dir_bytes, _g, _load_line, _loadavg, run_header  # noqa: E402

MB = 1_000_000
TASKS = ("sentiment", "topic", "toxicity")
RATIO_TARGET = 1.3
REPUSH_TARGET_S = 5.0
PARTS = ("dir", "s3", "repush")


# --- helpers ---------------------------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _runs(xs: list[float]) -> str:
    return " ".join(_g(x) for x in xs)


def _count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def _timed(fn, *args, **kwargs):
    os.sync()  # flush earlier writes outside the timed region
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _cp_r(src: str, dest: str) -> None:
    subprocess.run(["cp", "-r", src, dest], check=True)


def _cp_r_sync(src: str, dest: str) -> None:
    subprocess.run(["cp", "-r", src, dest], check=True)
    os.sync()


def _durable_copy(src: str, dest: str, workers: int = 8) -> None:
    """What a verified, durable copy costs at least: each file read, hashed (sha256), written
    and fsynced, on ``workers`` threads (as push does), then renamed into place."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    def one(path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        out = os.path.join(dest, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(out + ".tmp", out)

    files = [os.path.join(d, n) for d, _, names in os.walk(src) for n in names]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def _log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


class _Moto:
    """moto's S3 server on 127.0.0.1 (a free port), in this process, with test credentials."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def fs(self):
        """A new S3 client (no cached instance, no cached listings)."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def drop(self, bucket: str) -> None:
        fs = self.fs()
        try:
            fs.rm(bucket, recursive=True)  # frees moto's memory
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        self.server.stop()


def _cold_s3() -> None:
    """Forget cached S3 clients (and their listing caches): the next push or pull starts cold,
    as it would in a new process."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


# --- setup -------------------------------------------------------------------------------------------


def _build_big(work: str, width: int, steps: int) -> tuple[str, int, int, int, float]:
    """A base and three fine-tunes (real Adam steps), stored without similarities. Returns the
    registry, parameters, stored bytes (objects/ on disk), objects, seconds."""
    import tvreg
    from tvreg.testing import toy

    t0 = time.perf_counter()
    base_model = toy.pretrain(width=width, steps=steps, num_threads=None)
    base = str(toy.save_safetensors(base_model, os.path.join(work, "base.safetensors")))
    root = os.path.join(work, "source")
    with tvreg.open(root) as reg:
        for task in TASKS:
            ft = toy.finetune(base_model, task, steps=steps, num_threads=None)
            path = str(toy.save_safetensors(ft, os.path.join(work, f"ft_{task}.safetensors")))
            del ft
            reg.create(task, base, path, similarities=False)
            os.unlink(path)
            _log(f"created {task}")
    os.unlink(base)
    objects = os.path.join(root, "objects")
    return (root, toy.param_count(width), _dir_bytes(objects), _count_files(objects),
            time.perf_counter() - t0)


def _build_small(work: str, n: int, names: int, label: str) -> tuple[str, int, float]:
    """``n`` tiny vectors (3 tensors: 8x8, 8, 4x8) of one base, each a different random
    perturbation, over ``names`` names (round robin). Returns the registry, objects, seconds."""
    import torch
    from safetensors.torch import save_file

    import tvreg

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(8, 8, generator=g), "a.bias": torch.randn(8, generator=g),
            "b.weight": torch.randn(4, 8, generator=g)}
    base_path = os.path.join(work, f"small-base-{label}.safetensors")
    ft_path = os.path.join(work, f"small-ft-{label}.safetensors")
    save_file(base, base_path)
    root = os.path.join(work, f"small-{label}")
    with tvreg.open(root) as reg:
        for i in range(n):
            save_file({k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()},
                      ft_path)
            name = f"v{i:04d}" if names >= n else f"v{i % names:04d}"
            reg.create(name, base_path, ft_path, similarities=False)
            if (i + 1) % 250 == 0:
                _log(f"{label}: {i + 1}/{n} small vectors")
    for p in (base_path, ft_path):
        os.unlink(p)
    return root, _count_files(os.path.join(root, "objects")), time.perf_counter() - t0


# --- measurements ----------------------------------------------------------------------------------


def part_dir(args, work: str, src: str, n_objects: int) -> dict:
    import tvreg

    out = {k: [] for k in ("push", "cp_push", "cp_push_sync", "durable", "pull", "cp_pull")}
    with tvreg.open(src) as reg:
        for i in range(args.repeats):
            remote = os.path.join(work, f"dir-remote-{i}")
            reg.add_remote(f"dir{i}", remote)
            s, rep = _timed(reg.push, f"dir{i}")
            assert (rep.objects_sent, rep.versions_sent) == (n_objects, len(TASKS)), rep
            out["push"].append(s)
            out["bytes"] = rep.bytes_sent

            dest = os.path.join(work, f"dir-cp-{i}")
            s, _ = _timed(_cp_r, os.path.join(src, "objects"), dest)
            assert _count_files(dest) == n_objects
            out["cp_push"].append(s)
            shutil.rmtree(dest)
            s, _ = _timed(_cp_r_sync, os.path.join(src, "objects"), dest)
            out["cp_push_sync"].append(s)
            shutil.rmtree(dest)
            s, _ = _timed(_durable_copy, os.path.join(src, "objects"), dest)
            assert _count_files(dest) == n_objects
            out["durable"].append(s)
            shutil.rmtree(dest)

            target = os.path.join(work, f"dir-pull-{i}")
            with tvreg.open(target) as dst:
                dst.add_remote("origin", remote)  # creates the (empty) registry
                s, rep = _timed(dst.pull, "origin", similarities=False)
            assert (rep.objects_fetched, rep.versions_fetched) == (n_objects, len(TASKS)), rep
            out["pull"].append(s)

            dest = os.path.join(work, f"dir-cp-back-{i}")
            s, _ = _timed(_cp_r, os.path.join(remote, "objects"), dest)
            assert _count_files(dest) == n_objects
            out["cp_pull"].append(s)
            for p in (remote, target, dest):
                shutil.rmtree(p)
            reg.remove_remote(f"dir{i}")
            _log(f"dir repeat {i + 1}/{args.repeats}: push {out['push'][-1]:.2f} s "
                 f"(cp -r {out['cp_push'][-1]:.2f}), pull {out['pull'][-1]:.2f} s "
                 f"(cp -r {out['cp_pull'][-1]:.2f})")
    return out


def part_s3(args, work: str, moto: _Moto, src: str, n_objects: int) -> dict:
    import s3fs

    import tvreg

    out = {k: [] for k in ("push", "put", "pull", "get")}
    options = {"endpoint_url": moto.endpoint}
    local_objects = os.path.join(src, "objects")
    with tvreg.open(src) as reg:
        for i in range(args.repeats):
            bucket = moto.bucket(f"tvreg-bench-{i}")
            reg.add_remote(f"s3{i}", f"s3://{bucket}/team", options)
            _cold_s3()
            s, rep = _timed(reg.push, f"s3{i}")
            assert (rep.objects_sent, rep.versions_sent) == (n_objects, len(TASKS)), rep
            out["push"].append(s)
            out["bytes"] = rep.bytes_sent

            def put() -> None:
                fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint, skip_instance_cache=True)
                fs.put(local_objects, f"{bucket}/raw", recursive=True)

            s, _ = _timed(put)
            assert len(moto.fs().find(f"{bucket}/raw")) == n_objects
            out["put"].append(s)

            target = os.path.join(work, f"s3-pull-{i}")
            with tvreg.open(target) as dst:
                dst.add_remote("origin", f"s3://{bucket}/team", options)
                _cold_s3()
                s, rep = _timed(dst.pull, "origin", similarities=False)
            assert (rep.objects_fetched, rep.versions_fetched) == (n_objects, len(TASKS)), rep
            out["pull"].append(s)

            dest = os.path.join(work, f"s3-get-{i}")

            def get() -> None:
                fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint, skip_instance_cache=True)
                fs.get(f"{bucket}/raw", dest, recursive=True)

            s, _ = _timed(get)
            assert _count_files(dest) == n_objects, (_count_files(dest), n_objects)
            out["get"].append(s)
            for p in (target, dest):
                shutil.rmtree(p)
            reg.remove_remote(f"s3{i}")
            moto.drop(bucket)
            _log(f"s3 repeat {i + 1}/{args.repeats}: push {out['push'][-1]:.2f} s "
                 f"(s3fs put {out['put'][-1]:.2f}), pull {out['pull'][-1]:.2f} s "
                 f"(s3fs get {out['get'][-1]:.2f})")
    return out


class _StoreCounter:
    """Counts and times the remote store calls of a push (FsspecStore methods, all threads)."""

    METHODS = ("list", "read", "exists", "write", "write_new")

    def __init__(self) -> None:
        from tvreg.stores import FsspecStore

        self.cls = FsspecStore
        self.calls: dict[str, list] = {}  # "list refs", "write index"... -> [calls, seconds]
        self.saved = {}

    def __enter__(self) -> "_StoreCounter":
        import threading

        lock = threading.Lock()
        for m in self.METHODS:
            inner = self.saved[m] = self.cls.__dict__.get(m, getattr(self.cls, m))

            def wrapped(store, key="", *a, _inner=inner, _m=m, **kw):
                t0 = time.perf_counter()
                try:
                    out = _inner(store, key, *a, **kw)
                    if _m == "list":
                        out = list(out)  # list() may be lazy: time the listing itself
                    return out
                finally:
                    label = f"{_m} {key.split('/', 1)[0] or '(all)'}/"
                    with lock:
                        c = self.calls.setdefault(label, [0, 0.0])
                        c[0] += 1
                        c[1] += time.perf_counter() - t0
            setattr(self.cls, m, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for m, inner in self.saved.items():
            setattr(self.cls, m, inner)

    def summary(self) -> str:
        return ", ".join(f"{label} x{n} {s:.2f} s" for label, (n, s) in sorted(self.calls.items()))


def part_repush(args, work: str, moto: _Moto) -> list[dict]:
    import tvreg

    results = []
    layouts = [("names", args.small, args.small, f"{args.small:,} names x 1 version"),
               ("versions", args.small, 1, f"1 name x {args.small:,} versions")]
    for label, n, names, title in layouts:
        if label not in args.layouts:
            continue
        _log(f"re-push ({title}): creating {n} small vectors ...")
        root, n_objects, setup = _build_small(work, n, names, label)
        bucket = moto.bucket(f"tvreg-small-{label}")
        with tvreg.open(root) as reg:
            reg.add_remote("origin", f"s3://{bucket}/team", {"endpoint_url": moto.endpoint})
            _cold_s3()
            t0 = time.perf_counter()
            first = reg.push("origin")
            first_s = time.perf_counter() - t0
            assert (first.objects_sent, first.versions_sent) == (n_objects, n), first
            _log(f"re-push ({title}): first push {first_s:.1f} s, {n_objects} objects")
            times, counts = [], ""
            for i in range(args.repeats):
                _cold_s3()
                with _StoreCounter() as counter:
                    s, rep = _timed(reg.push, "origin")
                assert (rep.objects_sent, rep.versions_sent, rep.tags_sent) == (0, 0, 0), rep
                assert (rep.objects_skipped, rep.versions_skipped) == (n_objects, n), rep
                times.append(s)
                counts = counter.summary()
                _log(f"re-push ({title}) {i + 1}/{args.repeats}: {s:.2f} s; {counts}")
            cli = []
            if args.cli:
                for i in range(args.repeats):
                    cmd = [sys.executable, "-m", "tvreg.cli", "--registry", root, "push", "origin"]
                    s, p = _timed(subprocess.run, cmd, capture_output=True, text=True)
                    if p.returncode != 0:
                        raise SystemExit(f"{shlex.join(cmd)} failed:\n{p.stderr}")
                    assert "0 object(s)" in p.stderr and "0 version(s)" in p.stderr, p.stderr
                    cli.append(s)
        moto.drop(bucket)
        shutil.rmtree(root)
        results.append({"label": label, "title": title, "n": n, "objects": n_objects,
                        "setup": setup, "first": first_s, "times": times, "cli": cli,
                        "counts": counts})
    return results


# --- report ------------------------------------------------------------------------------------------


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])]
        return "  ".join(cells + [r[-1]]).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]


def report(args, info: list[tuple[str, str]], big: dict | None, dir_res: dict | None,
           s3_res: dict | None, repush: list[dict]) -> None:
    rows, runs = [], []

    def ratio_row(case: str, tv: list[float], base_label: str, base: list[float], mb: float,
                  target: bool = True) -> None:
        r = _med(tv) / _med(base)
        met = ("yes" if r <= RATIO_TARGET else "NO") if target else "-"
        rows.append((case, _g(_med(tv)), base_label, _g(_med(base)), f"{r:.2f}x",
                     _g(mb / _med(tv)), f"<= {RATIO_TARGET}x" if target else "(info)", met))
        runs.append(f"{case}: tvreg {_runs(tv)} s; {base_label} {_runs(base)} s")

    if dir_res:
        mb = dir_res["bytes"] / MB
        ratio_row("dir push", dir_res["push"], "cp -r", dir_res["cp_push"], mb)
        ratio_row("dir push", dir_res["push"], "cp -r; sync", dir_res["cp_push_sync"], mb,
                  target=False)
        ratio_row("dir push", dir_res["push"], "sha256+fsync copy", dir_res["durable"], mb,
                  target=False)
        ratio_row("dir pull", dir_res["pull"], "cp -r", dir_res["cp_pull"], mb)
    if s3_res:
        mb = s3_res["bytes"] / MB
        ratio_row("S3 push", s3_res["push"], "s3fs put -r", s3_res["put"], mb)
        ratio_row("S3 pull", s3_res["pull"], "s3fs get -r", s3_res["get"], mb)
    for r in repush:
        med = _med(r["times"])
        rows.append((f"S3 re-push, {r['title']}", _g(med), "-", "-", "-", "-",
                     f"< {REPUSH_TARGET_S:g} s", "yes" if med < REPUSH_TARGET_S else "NO"))
        runs.append(f"S3 re-push, {r['title']}: {_runs(r['times'])} s")
        if r["cli"]:
            cmed = _med(r["cli"])
            rows.append(("  same, `tvreg push` CLI", _g(cmed), "-", "-", "-", "-",
                         f"< {REPUSH_TARGET_S:g} s", "yes" if cmed < REPUSH_TARGET_S else "NO"))
            runs.append(f"S3 re-push CLI, {r['title']}: {_runs(r['cli'])} s")

    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")
    print()
    header = ("case", "tvreg s", "baseline", "base s", "ratio", "MB/s", "target", "met?")
    for line in _table(header, rows):
        print(line)
    print()
    print("runs (s), in order:")
    for line in runs:
        print(f"  {line}")
    for r in repush:
        print(f"re-push {r['title']}: {r['objects']:,} objects; created in {r['setup']:.0f} s, "
              f"first push {r['first']:.1f} s; remote store calls of the last re-push: "
              f"{r['counts']}")
    print()
    print(
        "tvreg s / base s: medians of wall time; ratio = tvreg / baseline; MB/s = bytes sent\n"
        "(or fetched) / tvreg median. dir push and pull fsync every object, cp -r does not\n"
        "('cp -r; sync' is cp -r followed by sync(2); 'sha256+fsync copy' reads, hashes, writes\n"
        "and fsyncs each file on 8 threads: the least a verified, durable copy costs; both for\n"
        "reference). Pulls run with similarities=False. moto runs in this process: its request\n"
        "handling shares the GIL and the 2 cores with the client.")


def run(args) -> None:
    import fsspec
    import moto
    import s3fs
    import torch

    from tvreg.testing import toy

    started = time.perf_counter()
    load_start = _loadavg()
    own = args.workdir is None
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-remote-")
    os.makedirs(work, exist_ok=True)
    moto_srv = None
    big = dir_res = s3_res = None
    repush: list[dict] = []
    try:
        if {"dir", "s3"} & set(args.parts):
            _log(f"building 3 vectors: width {args.width} ({toy.param_count(args.width):,} "
                 f"parameters), {args.steps} + {args.steps} Adam steps ...")
            src, params, stored, n_objects, setup = _build_big(work, args.width, args.steps)
            big = {"params": params, "stored": stored, "objects": n_objects, "setup": setup}
        if "dir" in args.parts:
            dir_res = part_dir(args, work, src, n_objects)
        if {"s3", "repush"} & set(args.parts):
            moto_srv = _Moto()
        if "s3" in args.parts:
            s3_res = part_s3(args, work, moto_srv, src, n_objects)
        if "repush" in args.parts:
            repush = part_repush(args, work, moto_srv)
    finally:
        if moto_srv is not None:
            moto_srv.stop()
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    info = run_header(f"torch {torch.__version__}, s3fs {s3fs.__version__}, fsspec "
                      f"{fsspec.__version__}, moto {moto.__version__} (ThreadedMotoServer in "
                      "this process)")
    if big:
        info.append(("vectors", f"3 x toy width {args.width} ({big['params']:,} parameters "
                                f"each, fp32 delta {_g(4 * big['params'] / MB)} MB each); stored "
                                f"{_g(big['stored'] / MB)} MB in {big['objects']} objects "
                                f"(blobs + manifests); built in {big['setup']:.0f} s"))
    if repush:
        info.append(("small", f"{args.small:,} vectors of 3 tensors (104 parameters) per layout, "
                              "pushed once, then re-pushed unchanged"))
    info += [
        ("setup", f"repeats {args.repeats}; whole benchmark {time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    report(args, info, big, dir_res, s3_res, repush)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each case (medians)")
    p.add_argument("--quick", action="store_true",
                   help="width 256 (0.6M parameters), 100 small vectors, 2 repeats: a smoke test, "
                        "not the numbers to quote")
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                   help="toy model width (1600 gives 20.6M parameters)")
    p.add_argument("--steps", type=int, default=3, help="Adam steps of pre-training and of each "
                                                        "fine-tune")
    p.add_argument("--small", type=int, default=1000, help="small vectors in the re-push case")
    p.add_argument("--layouts", default="names,versions",
                   help="re-push layouts: names (N names x 1 version), versions (1 name x N)")
    p.add_argument("--parts", default=",".join(PARTS), help="which cases: dir, s3, repush")
    p.add_argument("--no-cli", dest="cli", action="store_false",
                   help="skip timing the re-push as `tvreg push` in a fresh process")
    p.add_argument("--workdir", default=None,
                   help="where registries and remotes go (kept); default: a temp dir, removed "
                        "at the end")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    args = p.parse_args(argv)
    if args.quick:
        args.width = 256 if args.width == DEFAULT_WIDTH else args.width
        args.small = 100 if args.small == 1000 else args.small
        args.repeats = 2 if args.repeats == 3 else args.repeats
    args.parts = [x for x in args.parts.split(",") if x]
    args.layouts = [x for x in args.layouts.split(",") if x]
    if set(args.parts) - set(PARTS) or set(args.layouts) - {"names", "versions"}:
        p.error(f"--parts takes {', '.join(PARTS)}; --layouts takes names, versions")
    if args.repeats < 1 or args.width < 1 or args.small < 1:
        p.error("--repeats, --width and --small must be positive")
    run(args)


if __name__ == "__main__":
    main()
