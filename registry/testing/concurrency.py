"""Many real processes on one registry at once: the workers and the checks of
tests/test_concurrency.py and benchmarks/bench_concurrency.py.

:func:`run_local` starts N worker processes (``python -m tvreg.testing.concurrency``) on one local
registry. Each waits for a start signal, then runs a seeded random mix of ``create`` (into names
shared by all workers, with metadata drawn from a small set so that workers often store the same
content at the same time), ``tag``, reads (``ls``, ``show``, ``sql``, the tensors of a version) and
``gc``, and writes one JSON line per operation: what it did, whether it succeeded, how long it
took and how long it waited for the catalog's lock. :func:`check_local` then checks the registry
against what the workers reported: ``verify --deep`` passes, the catalog equals a rebuild from
the store, every reported version is there with exactly the content and metadata reported, no
content is stored twice under one name, every tensor read was the stored one.

:func:`run_pushers` starts N processes that each push their own registry to one remote (a
directory, or S3) at once; :func:`check_remote` checks that every version landed exactly once
and that nothing was overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import subprocess
import sys
import time
from collections.abc import Set as AbstractSet
from typing import Any

#: names every worker creates into
SHARED_NAMES = ("alpha", "beta")
TAGS = ("prod", "staging")
#: the operations of a worker and their weights in the mix
DEFAULT_MIX = {"create": 4, "tag": 2, "ls": 1, "show": 1, "sql": 1, "tensors": 2, "gc": 1}


# --- the worker (a separate process) ------------------------------------------------------------


def _timed_locks() -> tuple[list[float], list[float]]:
    """Record how long each catalog connection took to open, and each hold of the gc lock to
    be granted (lock waits included): two lists, filled as the worker goes."""
    import contextlib

    import tvreg.storage.gclock
    from tvreg.catalog.db import Catalog

    catalog: list[float] = []
    gc_lock: list[float] = []
    real_connection, real_gc_lock = Catalog._connection, tvreg.storage.gclock.gc_lock

    @contextlib.contextmanager
    def timed_connection(self, *args, **kwargs):
        t0 = time.perf_counter()
        with real_connection(self, *args, **kwargs) as con:
            catalog.append(time.perf_counter() - t0)
            yield con

    @contextlib.contextmanager
    def timed_gc_lock(*args, **kwargs):
        t0 = time.perf_counter()
        with real_gc_lock(*args, **kwargs):
            gc_lock.append(time.perf_counter() - t0)
            yield

    # instrumentation of this worker process: the method is swapped for a timing wrapper
    Catalog._connection = timed_connection  # type: ignore[method-assign]
    tvreg.storage.gclock.gc_lock = timed_gc_lock
    return catalog, gc_lock


def _worker(args: argparse.Namespace) -> int:
    import tvreg

    waits, gc_waits = _timed_locks()
    plan = json.loads(pathlib.Path(args.plan).read_text())
    rng = random.Random(args.seed)
    mix = plan["mix"]
    ops, weights = list(mix), [mix[k] for k in mix]
    pathlib.Path(f"{args.go}.{args.id}").touch()
    deadline = time.time() + 300
    while not os.path.exists(args.go):
        if time.time() > deadline:
            return 3
        time.sleep(0.002)
    out = open(args.out, "a", encoding="utf-8")
    reg = tvreg.open(plan["registry"])
    first = rng.sample(ops, len(ops))
    for i in range(plan["ops"]):
        # each worker does every kind of operation once (in an order of its own), then draws
        # them by weight: a short run still exercises all of them
        op = first[i] if i < len(first) else rng.choices(ops, weights)[0]
        line: dict[str, Any] = {"worker": args.id, "i": i, "op": op}
        del waits[:], gc_waits[:]
        t0 = time.perf_counter()
        try:
            line.update(_do(reg, op, rng, plan, args.id) or {})
            line["ok"] = True
        except tvreg.TvregError as e:
            line.update(ok=False, error=type(e).__name__, message=str(e))
        except Exception as e:  # noqa: BLE001 - an untyped error is a finding: report it
            import traceback

            line.update(ok=False, error=type(e).__name__, message=repr(e), untyped=True,
                        traceback=traceback.format_exc()[-3000:])
        line["seconds"] = time.perf_counter() - t0
        line["catalog_waits"] = [round(w, 6) for w in waits]
        line["gc_lock_waits"] = [round(w, 6) for w in gc_waits]
        out.write(json.dumps(line) + "\n")
        out.flush()
    reg.close()
    return 0


def _do(reg, op: str, rng: random.Random, plan: dict, me: int) -> dict | None:
    from tvreg.errors import NotFound

    if op == "create":
        task = rng.choice(sorted(plan["finetuned"]))
        name = rng.choice(SHARED_NAMES)
        k = rng.randrange(plan["meta_values"])
        res = reg.create(name, plan["base"], plan["finetuned"][task], task=task,
                         meta={"k": k}, similarities=plan["similarities"])
        return {"ref": res.ref, "created": res.created, "vector_id": res.record.vector_id,
                "task": task, "k": k}
    if op == "tag":
        name, tag = rng.choice(SHARED_NAMES), rng.choice(TAGS)
        try:
            versions = reg.versions(name)
        except NotFound:
            versions = []
        if not versions:
            return {"skipped": True}
        rec = rng.choice(versions)
        tagged, _ = reg.tag(rec.ref, tag)
        return {"ref": rec.ref, "tag": f"{name}@{tag}", "vector_id": tagged.vector_id}
    if op == "ls":
        return {"rows": len(reg.ls(all_versions=True))}
    if op == "sql":
        rows = reg.sql("SELECT name, version, vector_id FROM versions")
        return {"rows": len(rows)}
    if op == "show":
        name = rng.choice(SHARED_NAMES)
        try:
            shown = reg.show(name)
        except NotFound:
            return {"skipped": True}
        return {"ref": shown["ref"], "vector_id": shown["vector_id"]}
    if op == "tensors":
        name = rng.choice(SHARED_NAMES)
        try:
            vec = reg.get(name)
        except NotFound:
            return {"skipped": True}
        import hashlib

        digest = hashlib.sha256()
        for tname, t in sorted(vec.state_dict().items()):
            digest.update(tname.encode() + t.contiguous().numpy().tobytes())
        return {"ref": vec.ref, "vector_id": vec.vector_id, "digest": digest.hexdigest()}
    if op == "gc":
        rep = reg.gc(grace_seconds=plan["grace"])
        return {"deleted": rep.deleted_objects, "kept_recent": rep.kept_recent}
    raise ValueError(op)


def _pusher(args: argparse.Namespace) -> int:
    import tvreg

    plan = json.loads(pathlib.Path(args.plan).read_text())
    src = plan["sources"][args.id]
    pathlib.Path(f"{args.go}.{args.id}").touch()
    deadline = time.time() + 300
    while not os.path.exists(args.go):
        if time.time() > deadline:
            return 3
        time.sleep(0.002)
    line: dict[str, Any] = {"worker": args.id, "op": "push"}
    t0 = time.perf_counter()
    try:
        with tvreg.open(src) as reg:
            rep = reg.push("origin")
        line.update(ok=True, report=rep.to_json())
    except tvreg.TvregError as e:
        line.update(ok=False, error=type(e).__name__, message=str(e))
    except Exception as e:  # noqa: BLE001
        line.update(ok=False, error=type(e).__name__, message=repr(e), untyped=True)
    line["seconds"] = time.perf_counter() - t0
    with open(args.out, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvreg.testing.concurrency")
    p.add_argument("role", choices=["worker", "pusher"])
    p.add_argument("plan")
    p.add_argument("id", type=int)
    p.add_argument("go")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return _worker(args) if args.role == "worker" else _pusher(args)


# --- the driver (the test or the benchmark) ------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What N processes did: one dict per operation, the wall time, the exit codes."""

    lines: list[dict[str, Any]]
    wall: float
    returncodes: list[int]
    stderr: list[str]

    def failures(self) -> list[dict[str, Any]]:
        return [x for x in self.lines if not x["ok"]]


def _start(role: str, n: int, plan: dict, workdir: pathlib.Path, seed: int,
           env: dict[str, str] | None, timeout: float) -> Run:
    """Start ``n`` processes of ``role``, let them go at once, wait for them."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan_path = workdir / f"plan-{role}.json"
    plan_path.write_text(json.dumps(plan))
    go = workdir / f"go-{role}"
    out = workdir / f"ops-{role}.jsonl"
    for p in [go, out, *workdir.glob(f"go-{role}.*")]:
        p.unlink(missing_ok=True)
    penv = {**os.environ, **(env or {})}
    procs = [subprocess.Popen([sys.executable, "-m", "tvreg.testing.concurrency", role,
                               str(plan_path), str(i), str(go), str(out),
                               "--seed", str(seed * 1000 + i)],
                              env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    try:
        deadline = time.time() + timeout
        while not all(pathlib.Path(f"{go}.{i}").exists() for i in range(n)):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a {role} died before the start: {dead[0].communicate()}")
            if time.time() > deadline:
                raise RuntimeError(f"{role}s did not start within {timeout}s")
            time.sleep(0.01)
        t0 = time.perf_counter()
        go.touch()
        outs = [p.communicate(timeout=timeout) for p in procs]
        wall = time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return Run(lines, wall, [p.returncode for p in procs], [e for _, e in outs])


def make_variants(base: str | os.PathLike, finetuned: dict[str, str | os.PathLike], k: int,
                  folder: str | os.PathLike) -> dict[str, str]:
    """``k`` fine-tuned checkpoints per task with distinct task vectors (θ = base + (1 + i/4)·τ),
    so that concurrent creates write new objects, not only reuse them: ``{"TASK-i": path}``."""
    from safetensors.torch import load_file

    from tvreg.testing.toy import save_safetensors

    b = load_file(os.fspath(base))
    out = {}
    for task, path in sorted(finetuned.items()):
        ft = load_file(os.fspath(path))
        for i in range(k):
            sd = {n: (b[n] + (ft[n] - b[n]) * (1 + i / 4)) if t.is_floating_point() else t
                  for n, t in ft.items()}
            out[f"{task}-{i}"] = os.fspath(save_safetensors(
                sd, pathlib.Path(folder) / f"ft_{task}_{i}.safetensors"))
    return out


def expected_vector_ids(base: str, finetuned: dict[str, str], workdir: str | os.PathLike
                        ) -> dict[str, str]:
    """The vector id of each fine-tuned checkpoint's task vector, made alone in a fresh registry
    (``WORKDIR/reference-registry``, kept for :func:`seed_orphans`)."""
    import tvreg

    with tvreg.open(pathlib.Path(workdir) / "reference-registry") as ref:
        return {task: ref.create(task, base, path, similarities=False).record.vector_id
                for task, path in finetuned.items()}


#: seconds in the past given to seeded orphans: older than any grace period used here
ORPHAN_AGE = 7 * 24 * 3600


def seed_orphans(registry: str | os.PathLike, reference: str | os.PathLike,
                 vector_ids: list[str], garbage: int = 0) -> tuple[set[str], set[str]]:
    """Put old, unreferenced objects into ``registry``, as crashed writes leave them: every
    object of ``vector_ids`` (manifests and blobs, copied from the ``reference`` registry), which
    the workers will create again and so reuse, and ``garbage`` objects nothing will reference.
    Returns (the reused ids, the garbage ids)."""
    import tvreg
    from tvreg.storage.objects import ObjectDB
    from tvreg.stores import LocalStore

    target = ObjectDB(LocalStore(registry))
    old = time.time() - ORPHAN_AGE
    reused: set[str] = set()
    with tvreg.open(reference) as ref:
        for vid in vector_ids:
            for oid in sorted({vid, *ref.manifest(vid).blob_ids()}):
                target.put(ref.objects.get(oid))
                reused.add(oid)
    junk = {target.put(f"left behind by a crashed write #{i}".encode()) for i in range(garbage)}
    for oid in reused | junk:
        path = os.path.join(os.fspath(registry), "objects", oid[:2], oid[2:])
        os.utime(path, (old, old))
    return reused, junk


def run_local(registry: str | os.PathLike, n: int, ops: int, *, base: str,
              finetuned: dict[str, str], workdir: str | os.PathLike,
              mix: dict[str, int] | None = None,
              grace: float = 3600.0, meta_values: int = 2, similarities: bool = False,
              seed: int = 0, env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    plan = {"registry": os.fspath(registry), "base": os.fspath(base),
            "finetuned": {k: os.fspath(v) for k, v in finetuned.items()},
            "mix": mix or DEFAULT_MIX, "ops": ops, "grace": grace, "meta_values": meta_values,
            "similarities": similarities}
    return _start("worker", n, plan, pathlib.Path(workdir), seed, env, timeout)


@dataclasses.dataclass
class Check:
    """The outcome of :func:`check_local` / :func:`check_remote`; ``problems`` empty means all
    guarantees held."""

    problems: list[str]
    versions: int = 0
    duplicates: int = 0
    verify_ok: bool = False


def check_local(registry: str | os.PathLike, run: Run, expected: dict[str, str],
                garbage: AbstractSet[str] = frozenset()) -> Check:
    """Everything the workers reported against what the registry holds (see the module doc);
    ``garbage``: seeded objects nothing references, which a gc that ran must have deleted."""
    import tvreg

    problems: list[str] = []
    reg = tvreg.open(registry)
    if any(x["op"] == "gc" and x["ok"] for x in run.lines):
        left = sorted(oid for oid in garbage if reg.objects.exists(oid))
        if left:
            problems.append(f"gc ran but left {len(left)} unreferenced old object(s)")
    rep = reg.verify(deep=True)
    problems += [f"verify: {p}" for p in rep.problems]
    before = _catalog_state(reg)
    counts = reg.reindex()
    problems += [f"reindex: {p}" for p in counts["problems"]]
    after = _catalog_state(reg)
    if before != after:
        problems.append(f"the catalog differed from a rebuild: {_diff(before, after)}")
    records = {r.ref: r for r in reg.all_records()}
    # every reported version is there, with the content and metadata reported
    for x in run.lines:
        if x["op"] != "create" or not x["ok"]:
            continue
        rec = records.get(x["ref"])
        if rec is None:
            problems.append(f"worker {x['worker']} created {x['ref']}, which is not stored")
            continue
        if rec.vector_id != x["vector_id"] or rec.vector_id != expected[x["task"]]:
            problems.append(f"{x['ref']} holds {rec.vector_id[:12]}, worker {x['worker']} "
                            f"stored {x['vector_id'][:12]} of {x['task']}")
        if (rec.metadata.task, rec.metadata.meta) != (x["task"], {"k": x["k"]}):
            problems.append(f"{x['ref']} has the metadata of another create")
    # the same content is stored at most once per name
    seen: dict[tuple, str] = {}
    dups = 0
    for ref, rec in sorted(records.items()):
        key = (rec.name, rec.vector_id, json.dumps(rec.metadata.to_json(), sort_keys=True),
               tuple(rec.parents), json.dumps(rec.recipe, sort_keys=True))
        if key in seen:
            dups += 1
            problems.append(f"{ref} stores the same content as {seen[key]}")
        seen.setdefault(key, ref)
    # what readers saw was a stored version's content
    digests: dict[str, str] = {}
    for x in run.lines:
        if x["op"] in ("tensors", "show") and x["ok"] and not x.get("skipped"):
            rec = records.get(x["ref"])
            if rec is None or rec.vector_id != x["vector_id"]:
                problems.append(f"worker {x['worker']} read {x['ref']} as {x['vector_id'][:12]}, "
                                "which is not what is stored")
            if "digest" in x:
                if digests.setdefault(x["vector_id"], x["digest"]) != x["digest"]:
                    problems.append(f"two reads of vector {x['vector_id'][:12]} gave other tensors")
    # tags point at versions that exist (verify checks it too), created by a worker
    for t in reg.all_tags():
        if f"{t.name}@{t.version}" not in records:
            problems.append(f"tag {t.name}@{t.tag} points at a missing version")
    for x in run.lines:
        if x.get("untyped"):
            problems.append(f"worker {x['worker']} {x['op']}: untyped error {x['message']}")
    for i, code in enumerate(run.returncodes):
        if code != 0:
            problems.append(f"worker {i} exited {code}: {run.stderr[i][-2000:]}")
    reg.close()
    return Check(problems, versions=len(records), duplicates=dups, verify_ok=rep.ok)


# --- pushers to one remote ------------------------------------------------------------------------


def make_sources(folder: str | os.PathLike, n: int, base: str, variants: dict[str, str],
                 url: str, options: dict[str, Any] | None = None) -> list[str]:
    """``n`` registries that will push to the remote ``url`` at once. Each holds:
    ``common@1``, ``common@2``: the same content in all (vector and metadata; only their
    ``created_at`` differ), to land once; ``contested@1``: content of its own under a name
    they all push, so all but one must take another number; ``own-I@1``: a name of its own;
    and tags ``common@prod`` (the same in all) and ``contested@prod`` (each its own)."""
    import tvreg

    names = sorted(variants)
    paths = []
    for i in range(n):
        path = pathlib.Path(folder) / f"source-{i}"
        with tvreg.open(path) as reg:
            for k in range(2):
                reg.create("common", base, variants[names[k]], task="common", meta={"k": k},
                           similarities=False)
            mine = variants[names[(2 + i) % len(names)]]
            reg.create("contested", base, mine, task="contested", meta={"pusher": i},
                       similarities=False)
            reg.create(f"own-{i}", base, mine, task="own", similarities=False)
            reg.tag("common@1", "prod")
            reg.tag("contested@1", "prod")
            reg.add_remote("origin", url, options)
        paths.append(os.fspath(path))
    return paths


def run_pushers(sources: list[str], workdir: str | os.PathLike, *, seed: int = 0,
                env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    """Every source registry pushes everything to its remote ``origin``, all at once."""
    return _start("pusher", len(sources), {"sources": list(sources)}, pathlib.Path(workdir),
                  seed, env, timeout)


def check_remote(url: str, options: dict[str, Any] | None, sources: list[str], run: Run,
                 workdir: str | os.PathLike) -> Check:
    """After :func:`run_pushers`: every pusher succeeded; each content of each source is on the
    remote exactly once (no duplicates), numbers run 1..K without gaps, every record written
    was a new key (the pushers' ``versions_sent`` add up to the remote's records: nothing was
    overwritten), every tag points at a remote version of its vector, the remote index lists
    exactly the records and tags, and a pull of everything into a fresh registry verifies."""
    import tvreg
    from tvreg.remote.config import Remote
    from tvreg.remote.index import read as read_index
    from tvreg.storage.documents import read_record, read_tag, record_keys, tag_keys

    problems: list[str] = []
    for x in run.lines:
        if not x["ok"]:
            problems.append(f"pusher {x['worker']} failed: {x['error']}: {x['message']}")
    for i, code in enumerate(run.returncodes):
        if code != 0:
            problems.append(f"pusher {i} exited {code}: {run.stderr[i][-2000:]}")
    store = Remote("origin", url, dict(options or {})).store()
    records = [read_record(store, k) for k in record_keys(store)]

    def content(r) -> tuple:
        return (r.vector_id, json.dumps(r.metadata.to_json(), sort_keys=True), tuple(r.parents),
                json.dumps(r.recipe, sort_keys=True))

    by_name: dict[str, dict[tuple, list[int]]] = {}
    for r in records:
        by_name.setdefault(r.name, {}).setdefault(content(r), []).append(r.version)
    dups = sum(len(v) - 1 for d in by_name.values() for v in d.values())
    for name, d in sorted(by_name.items()):
        for versions in d.values():
            if len(versions) > 1:
                problems.append(f"{name}: the same content is there {len(versions)} times "
                                f"(versions {sorted(versions)})")
        numbers = sorted(v for vs in d.values() for v in vs)
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{name}: versions {numbers} are not 1..{len(numbers)}")
    for src in sources:
        with tvreg.open(src) as reg:
            for r in reg.all_records():
                if content(r) not in by_name.get(r.name, {}):
                    problems.append(f"{src}: {r.ref} is not on the remote")
    sent = sum(x["report"]["versions_sent"] for x in run.lines if x["ok"])
    if sent != len(records):
        problems.append(f"the pushers wrote {sent} records, the remote holds {len(records)}: "
                        "a record was overwritten")
    remote_refs = {(r.name, r.version): r.vector_id for r in records}
    tags = [read_tag(store, k) for k in tag_keys(store)]
    for t in tags:
        if remote_refs.get((t.name, t.version)) != t.vector_id:
            problems.append(f"tag {t.name}@{t.tag} points at {t.name}@{t.version}, which does not "
                            "hold its vector")
    index = read_index(store)
    if index is None:
        problems.append("the remote has no index")
    else:
        listed = sorted((row[0], row[1], row[2]) for row in index.versions)
        if listed != sorted((r.name, r.version, r.vector_id) for r in records):
            problems.append(f"the remote index lists {len(listed)} versions, the remote holds "
                            f"{len(records)}")
        if sorted((row[0], row[1], row[2]) for row in index.tags) != \
                sorted((t.name, t.tag, t.version) for t in tags):
            problems.append("the remote index's tags differ from the tag files")
    dest = pathlib.Path(workdir) / "pulled"
    with tvreg.open(dest) as reg:
        reg.add_remote("origin", url, options)
        reg.pull("origin", similarities=False)
        rep = reg.verify(deep=True)
        problems += [f"pulled registry: {p}" for p in rep.problems]
    return Check(problems, versions=len(records), duplicates=dups, verify_ok=rep.ok)


def _catalog_state(reg) -> dict[str, list]:
    return {
        "versions": [tuple(r.values()) for r in reg.sql(
            "SELECT name, version, vector_id, task, meta, created_at FROM versions "
            "ORDER BY name, version")],
        "vectors": [r["vector_id"] for r in reg.sql("SELECT vector_id FROM vectors ORDER BY 1")],
        "tags": [tuple(r.values()) for r in reg.sql(
            "SELECT name, tag, version, vector_id, updated_at FROM tags ORDER BY name, tag")],
    }


def _diff(a: dict[str, list], b: dict[str, list]) -> str:
    out = []
    for k in a:
        if a[k] != b[k]:
            extra, missing = set(map(str, a[k])) - set(map(str, b[k])), \
                set(map(str, b[k])) - set(map(str, a[k]))
            out.append(f"{k}: catalog has {sorted(extra)[:3]}, store has {sorted(missing)[:3]}")
    return "; ".join(out)


if __name__ == "__main__":  # pragma: no cover - run by run_local / run_pushers
    sys.exit(main())
