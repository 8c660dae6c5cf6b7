#!/usr/bin/env python3
"""Bulk ingest (``tvreg ingest``, issue 20): the local engine against the Dask engine, and both
against ``create`` item by item, on the same list of real fine-tunes, in one process.

The list: the 11 all-MiniLM-L6-v2 fine-tunes of the codec benchmark set (``codec_cases.py``,
built and cached under its work folder; 22.6M parameters, 90 MB of fp32 delta each; two are
bf16 checkpoints) and the toy model's 5 tasks (``tvreg.testing.make_toy_zoo``, width 1024,
40 Adam steps each, built here): 16 real fine-tunes, three bases. Each run ingests the whole
list into a fresh registry on local disk with ``similarities=False`` (timed apart below):

- ``create, item by item``: ``reg.create`` for each line, one after the other (the baseline);
- ``ingest --engine local``: ``--workers`` threads (default 2);
- ``ingest --engine dask, own cluster``: a ``LocalCluster`` of ``--workers`` processes started
  and closed by the command (its start-up counted);
- ``ingest --engine dask, running cluster``: the same cluster kind started beforehand,
  reached by its scheduler address (the steady state of a team's cluster);
- ``ingest --to s3remote`` with the local engine and with the running Dask cluster: the
  vectors staged straight into an S3 remote (moto's server on loopback, in a process of its
  own, a fresh bucket each run), versions claimed and the remote index written there, nothing
  local (needs moto and s3fs; ``--skip-s3`` leaves these runs out).

Every run must give the same vector ids. Then the new versions' similarities, computed once for
all (``reg.update_similarities``), are timed on the last registry.

    python benchmarks/bench_ingest.py [--repeats 3] [--workers 2] [--workdir DIR] [--skip-s3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import codec_cases  # noqa: E402

import tvreg  # noqa: E402
from tvreg.testing import make_toy_zoo  # noqa: E402
from tvreg.testing.toy import TASKS  # noqa: E402

MINILM = [n for n in codec_cases.CASES if n.startswith("minilm")]


def build_list(workdir: Path, out: Path) -> tuple[Path, int]:
    """The ingest list of the 16 fine-tunes, and their raw fp32 delta bytes."""
    rows, raw = [], 0
    for case in codec_cases.build_cases(MINILM, workdir):
        params = case.info["spec"].get("params", {})
        rows.append({"name": case.name, "base": str(case.base), "finetuned": str(case.finetuned),
                     "task": params.get("task"), "lr": params.get("lr"),
                     "steps": params.get("steps"), "meta": {"case": case.name}})
        raw += case.info["raw_fp32_bytes"]
    zoo = make_toy_zoo(workdir / "_ingest-toy", tasks=TASKS, steps=40, width=1024)
    for task in TASKS:
        rows.append({"name": f"toy-{task}", "base": str(zoo.base),
                     "finetuned": str(zoo.finetuned[task]), "task": task, "lr": 0.01,
                     "steps": 40, "meta": {}})
    with tvreg.open(out.parent / "_probe") as probe:  # the toy vectors' raw size
        for task in TASKS:
            raw += probe.create(task, zoo.base, zoo.finetuned[task],
                                similarities=False).manifest.raw_bytes
    shutil.rmtree(out.parent / "_probe")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, raw


class MotoServer:
    """moto's S3 server on a free loopback port, in a process of its own (so it does not share
    this process's GIL with the encoding threads), with test credentials in the environment
    (set before the Dask cluster starts: its workers inherit them)."""

    def __init__(self) -> None:
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        self.fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)
        self.buckets = 0

    def bucket(self) -> str:
        """A fresh bucket's remote URL."""
        self.buckets += 1
        name = f"bench-ingest-{self.buckets}"
        self.fs.mkdir(name)
        return f"s3://{name}/team"

    def drop(self, url: str) -> None:
        self.fs.rm(url.removeprefix("s3://").split("/")[0], recursive=True)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=codec_cases.DEFAULT_WORKDIR)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-s3", action="store_true",
                    help="leave out the runs into an S3 remote (moto's server)")
    args = ap.parse_args(argv)
    import distributed

    scratch = Path(tempfile.mkdtemp(prefix="tvreg-bench-ingest-"))
    moto = None if args.skip_s3 else MotoServer()
    try:
        path, raw = build_list(args.workdir, scratch / "list.jsonl")
        items = [json.loads(line) for line in path.read_text().splitlines()]
        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None,
                                           silence_logs=50)

        def create_each(reg):
            for it in items:
                reg.create(it["name"], it["base"], it["finetuned"], task=it.get("task"),
                           lr=it.get("lr"), steps=it.get("steps"), meta=it.get("meta"),
                           similarities=False)

        def to_s3(engine: str):
            def run(reg):
                url = moto.bucket()
                reg.add_remote("s3remote", url, {"endpoint_url": moto.endpoint})
                options = {"scheduler": cluster.scheduler_address} if engine == "dask" else {
                    "workers": args.workers}
                reg.ingest(path, engine=engine, to="s3remote", **options)
            return run

        runs = {
            "create, item by item": create_each,
            "ingest --engine local": lambda reg: reg.ingest(
                path, workers=args.workers, similarities=False),
            "ingest --engine dask, own cluster": lambda reg: reg.ingest(
                path, engine="dask", workers=args.workers, similarities=False),
            "ingest --engine dask, running cluster": lambda reg: reg.ingest(
                path, engine="dask", scheduler=cluster.scheduler_address, similarities=False),
        }
        if moto is not None:
            runs["ingest --to s3remote --engine local"] = to_s3("local")
            runs["ingest --to s3remote --engine dask, running cluster"] = to_s3("dask")
        times: dict[str, list[float]] = {k: [] for k in runs}
        ids: dict[str, list[str]] = {}
        sim_s: list[float] = []
        for r in range(args.repeats):
            for label, run in runs.items():
                root = scratch / f"reg-{r}-{len(times[label])}-{label.split()[0]}"
                with tvreg.open(root) as reg:
                    seconds, _ = timed(lambda: run(reg))  # noqa: B023
                    times[label].append(seconds)
                    if "s3remote" in label:  # what the remote holds, from its index
                        held = {r["name"]: r["vector_id"] for r in reg.remote_ls("s3remote")}
                        got = [held[it["name"]] for it in items]
                        moto.drop(reg.remote("s3remote").url)
                    else:
                        got = [reg.show(it["name"])["vector_id"] for it in items]
                    assert ids.setdefault("first", got) == got, f"{label}: other vector ids"
                    if label == "ingest --engine dask, running cluster":
                        sim_s.append(timed(reg.update_similarities)[0])
                shutil.rmtree(root)
                print(f"  repeat {r + 1} {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
        cluster.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if moto is not None:
            moto.close()

    import torch

    print(f"date      {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine   {os.cpu_count()} CPUs; python {sys.version.split()[0]}, torch "
          f"{torch.__version__}, dask {distributed.__version__}")
    print(f"command   python benchmarks/bench_ingest.py --repeats {args.repeats} "
          f"--workers {args.workers}{' --skip-s3' if args.skip_s3 else ''}")
    print(f"list      {len(items)} real fine-tunes (11 MiniLM-L6 of the codec set, 5 toy "
          f"width-1024 tasks), 3 bases, {raw / 1e9:.2f} GB of fp32 delta; local disk "
          f"(s3remote: moto's S3 server on loopback); similarities off in the runs; median "
          f"of {args.repeats}")
    print()
    base = statistics.median(times["create, item by item"])
    local = statistics.median(times["ingest --engine local"])
    print(f"{'run':52s} {'wall s':>8s} {'MB/s':>7s} {'vs create':>10s} {'vs local':>9s}")
    for label, ts in times.items():
        m = statistics.median(ts)
        print(f"{label:52s} {m:8.2f} {raw / m / 1e6:7.0f} {base / m:9.2f}x {m / local:8.2f}x")
    print(f"\nsimilarities of the {len(items)} new versions, computed once after the ingest "
          f"(reg.update_similarities): {statistics.median(sim_s):.2f} s (median)")
    print("every run gave the same vector ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
