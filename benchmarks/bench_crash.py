#!/usr/bin/env python3
"""Crash safety: kill real ``tvreg`` processes with SIGKILL, many times, and check what is left.

For each command (``create``, ``create`` into a registry that does not exist yet, ``push`` to a
directory and to S3, ``pull``, ``gc``, ``reindex``) it builds the scenario of
:mod:`tvreg.testing.crash` once, runs the command once to the end with the fault trace on (its
durable steps and timing), then kills it ``--kills`` times (default 50), each time in a fresh
copy of the starting state:

- **deterministic** kills, just before step K of the command (``TVREG_FAULT_KILL_AT=K``, see
  ``tvreg/faults.py``): every step when there are few, else the first step of every kind
  (stage, tmp, link, unlink, rename, touch, delete, put, commit, close, sketch…) and the rest
  spread evenly over the run;
- **random** kills, ``os.killpg(pid, SIGKILL)`` at a random time of the part of the run that
  writes: a delay after its first durable step (the harness watches for it), uniform from 0 to
  1.1 times the time the trace run took from its first durable step to its last, plus 10 ms
  (past its final output). Before the first step the interpreter imports torch and tvreg, which takes
  most of a run's time and varies too much with the load to aim at from the start. At least a
  third of the kills are random. A run that ends before its delay counts as a run, not a kill;
  delays are drawn until that many runs were really killed (at most three times as many
  tries).

After each kill it checks that ``tvreg verify`` passes (or shows only the catalog missing the
killed command's new versions, the state docs/format.md §11 documents; for a push, the remote
as every reader sees it), that every version present, and every one the process reported, is
bit-exact, and that running the same command again completes the work (then ``gc --grace 0``
leaves nothing behind). See :mod:`tvreg.testing.crash` for the exact checks.

    python benchmarks/bench_crash.py                      # 7 commands x 50 kills, ~30 min on 2 cores
    python benchmarks/bench_crash.py --kills 10           # a quicker pass
    python benchmarks/bench_crash.py --commands create,gc --kills 100 --seed 3
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _load_line, _loadavg, run_header  # noqa: E402
from bench_remote import _Moto  # noqa: E402  (moto's S3 server on loopback)

COMMANDS = ("create", "create-new", "push-dir", "push-s3", "pull", "gc", "reindex")


def _log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def scenario(command: str, work: pathlib.Path, zoo, env, expected, moto):
    from tvreg.testing import crash

    where = work / command
    if command == "create":
        return crash.CreateScenario(where, zoo, env, expected)
    if command == "create-new":
        return crash.CreateScenario(where, zoo, env, expected, new_registry=True)
    if command == "push-dir":
        return crash.PushScenario(where, zoo, env, expected, kind="dir")
    if command == "push-s3":
        return crash.PushScenario(where, zoo, env, expected, kind="s3", endpoint=moto.endpoint)
    if command == "pull":
        return crash.PullScenario(where, zoo, env, expected)
    if command == "gc":
        return crash.GcScenario(where, zoo, env, expected)
    if command == "reindex":
        return crash.ReindexScenario(where, zoo, env, expected)
    raise SystemExit(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")


def run_command(command: str, args, work, zoo, env, expected, moto) -> dict:
    from tvreg.testing import crash

    rng = random.Random(f"{args.seed}-{command}")
    t0 = time.time()
    sc = scenario(command, work, zoo, env, expected, moto)
    cal = sc.calibrate()
    n_random = max(args.kills - len(cal.steps), -(-args.kills // 3))
    plan = crash.kill_plan(cal.steps, args.kills - n_random)
    n_random = args.kills - len(plan)
    _log(f"{sc.label}: {len(cal.steps)} durable steps in {cal.elapsed:.2f} s; "
         f"{len(plan)} kills at steps, {n_random} at random times")
    outcomes: list = []

    def one(**kill) -> None:
        out = crash.attempt(sc, **kill)
        outcomes.append(out)
        flag = "ok" if out.ok else "FAIL"
        _log(f"  {sc.label} {len(outcomes)} {out.how}: {out.point}, "
             f"{'killed' if out.killed else 'finished first'}, "
             f"{'clean' if out.verify_clean else 'catalog behind' if out.catalog_behind else 'BAD'}"
             f", {flag} ({out.seconds:.1f} s)" + (f": {out.problems[:2]}" if out.problems else ""))

    for k in plan:
        one(kill_at=k)
    # random times: until n_random runs were really killed (a run may finish before its
    # delay: timings vary with the load), at most 3 * n_random tries
    timed = 0
    while sum(o.killed for o in outcomes[len(plan):]) < n_random and timed < 3 * n_random:
        one(kill_after=crash.kill_delays(cal, 1, rng)[0])
        timed += 1
    shutil.rmtree(sc.work, ignore_errors=True)
    return {"label": sc.label, "steps": len(cal.steps), "run": cal.elapsed,
            "outcomes": outcomes, "seconds": time.time() - t0, "steps_plan": len(plan)}


def report(info, results) -> None:
    for k, v in info:
        print(f"{k}: {v}")
    print()
    head = ("command", "steps", "runs", "kills (at step + at time)", "verify ok (clean + §11)",
            "versions exact (reported)", "reruns complete", "all ok", "time s (per run)")
    rows = []
    for r in results:
        o = r["outcomes"]
        n, det = len(o), r["steps_plan"]
        timed = sum(x.killed for x in o[det:])
        clean, behind = sum(x.verify_clean for x in o), sum(x.catalog_behind for x in o)
        reported = sum(len(x.reported) for x in o)
        rows.append((r["label"], str(r["steps"]), str(n),
                     f"{sum(x.killed for x in o)} ({sum(x.killed for x in o[:det])} + {timed})",
                     f"{clean + behind}/{n} ({clean} + {behind})",
                     f"{sum(x.exact for x in o)}/{n} ({reported})",
                     f"{sum(x.rerun_complete for x in o)}/{n}", f"{sum(x.ok for x in o)}/{n}",
                     f"{r['seconds']:.0f} ({r['seconds'] / max(1, n):.1f})"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print()
    print("kill points (the durable step each kill came before, or the last one it completed):")
    for r in results:
        points = collections.Counter(x.point for x in r["outcomes"])
        print(f"  {r['label']}: " + ", ".join(f"{k} {v}" for k, v in sorted(points.items())))
    failures = [(r["label"], x) for r in results for x in r["outcomes"] if not x.ok]
    if failures:
        print()
        print(f"FAILURES ({len(failures)}):")
        for label, x in failures:
            print(f"  {label} {x.how} ({x.point}): {x.problems}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--kills", type=int, default=50,
                   help="kills per command (processes really killed)")
    p.add_argument("--commands", default=",".join(COMMANDS),
                   help=f"which commands: {', '.join(COMMANDS)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan and delays")
    p.add_argument("--workdir", default=None, help="where registries go (default: a temp dir, "
                                                   "removed at the end)")
    args = p.parse_args(argv)
    commands = [c for c in args.commands.split(",") if c]
    for c in commands:
        if c not in COMMANDS:
            p.error(f"unknown command {c!r}; choose from {', '.join(COMMANDS)}")

    import duckdb
    import torch

    import tvreg
    from tvreg.testing import crash, make_toy_zoo

    load_start, started = _loadavg(), time.time()
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    moto = _Moto() if "push-s3" in commands else None
    results = []
    try:
        zoo = make_toy_zoo(work / "zoo")
        env = crash.subprocess_env(work / "scratch")
        expected = crash.Expected(zoo)
        for command in commands:
            results.append(run_command(command, args, work, zoo, env, expected, moto))
    finally:
        if moto is not None:
            moto.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    software = f"tvreg {tvreg.__version__}, torch {torch.__version__}, duckdb {duckdb.__version__}"
    if moto is not None:
        import moto as moto_module
        import s3fs

        software += f", s3fs {s3fs.__version__}, moto {moto_module.__version__} (in this process)"
    info = run_header(software) + [
        ("workload", "toy zoo (tvreg.testing.make_toy_zoo: 11,172 parameters, 12 blobs per "
                     "vector); each kill in a fresh copy of the scenario's starting state; "
                     f"seed {args.seed}"),
        ("whole run", f"{time.time() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    report(info, results)


if __name__ == "__main__":
    main()
