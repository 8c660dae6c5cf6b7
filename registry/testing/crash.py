"""Crash-safety harness: kill real ``tvreg`` processes with SIGKILL and check what they leave.

A :class:`Scenario` builds a starting state once (a registry, a remote: a template copied for
every run), names one CLI command (``python -m tvreg.cli …`` in a subprocess) and knows what the
command must achieve. :func:`attempt` runs the command and kills it, either just before its K-th
durable step (the :mod:`tvreg.util.faults` hook, ``TVREG_FAULT_KILL_AT``) or after a wall-clock
delay (``os.killpg(…, SIGKILL)``), then checks:

1. **verify**: ``tvreg verify`` passes, or reports only the state docs/format.md §11 documents
   for a kill between a record and its catalog commit: the catalog misses versions whose records
   the killed command wrote ("catalog behind"). For a push, the remote is checked instead: every
   record there has all its objects, intact; the remote index, ``tvreg --registry URL ls`` and a
   pull into a fresh registry (then ``verify``) show only complete versions.
2. **exact**: every version present, and in particular every one the process reported (printed
   its ref) before it died, decodes bit for bit to the task vector computed directly from the
   checkpoints (``ft - base`` in fp32, with torch).
3. **rerun**: the same command, run again without faults, exits 0 and completes the work: the
   versions it had to make exist exactly once, ``verify`` passes with no ``reindex`` in between,
   the catalog's versions and tags equal the files, similarities are complete; and ``gc --grace
   0`` then removes every leftover of the crash (temporary files, scratch folders, unreferenced
   objects) without touching a version.

Used by tests/test_crash.py (a few kills per command) and benchmarks/bench_crash.py (50 or
more per command). Nothing here is needed to use tvreg.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tvreg.util.faults import KILL_ENV, TRACE_ENV

_REF = re.compile(r"^([a-z0-9][a-z0-9._/-]*@\d+)$")
#: the one verify problem §11 allows after a kill between a record and its catalog commit
_BEHIND = re.compile(r"catalog is out of date \((\d+) version\(s\) missing, 0 extra\)")


@dataclass
class Step:
    """One durable step of a process, from its fault trace."""

    number: int
    time: float
    kind: str
    detail: str


@dataclass
class Run:
    """One CLI process: how it ended and the durable steps it took (from its fault trace)."""

    returncode: int
    stdout: str
    stderr: str
    started: float
    elapsed: float
    steps: list[Step]
    killed_before: Step | None = None  # the step a TVREG_FAULT_KILL_AT kill stopped

    @property
    def killed(self) -> bool:
        """Whether the process died of SIGKILL."""
        return self.returncode == -signal.SIGKILL

    @property
    def reported(self) -> list[str]:
        """Refs the process printed on stdout (``create`` prints its ref when done)."""
        return [m.group(1) for line in self.stdout.splitlines() if (m := _REF.match(line.strip()))]


@dataclass
class Outcome:
    """What one attempt at a scenario found (``ok``: everything held)."""

    scenario: str
    how: str                      # "step 17 (link)" or "after 0.731 s"
    killed: bool                  # False: the command finished before the kill
    point: str                    # kind of the step it died before ("-" if it finished)
    verify_clean: bool = False    # verify passed as is
    catalog_behind: bool = False  # verify reported only the §11 state (catalog missing versions)
    reported: list[str] = field(default_factory=list)
    exact: bool = False           # every version present, reported ones included, is exact
    rerun_complete: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verify_ok(self) -> bool:
        """Whether verify passed, or reported only the documented catalog-behind state."""
        return self.verify_clean or self.catalog_behind

    @property
    def ok(self) -> bool:
        """Whether the attempt found nothing wrong."""
        return self.verify_ok and self.exact and self.rerun_complete and not self.problems


def cli(*args: str) -> list[str]:
    """The argv of ``python -m tvreg.cli`` with ``args``."""
    return [sys.executable, "-m", "tvreg.cli", *args]


def read_trace(path: pathlib.Path) -> tuple[list[Step], Step | None]:
    """The steps of a fault trace, and the step a kill stopped before (``None`` if none);
    no file: no steps."""
    steps: list[Step] = []
    killed: Step | None = None
    if not path.exists():
        return steps, killed
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if parts[0] == "kill":
            killed = Step(int(parts[1]), 0.0, parts[2], parts[3] if len(parts) > 3 else "")
        elif len(parts) >= 3:
            steps.append(Step(int(parts[0]), float(parts[1]), parts[2],
                              parts[3] if len(parts) > 3 else ""))
    return steps, killed


def run_cli(argv: list[str], env: dict[str, str], cwd: pathlib.Path, *,
            kill_at: int | str | None = None, kill_after: float | None = None,
            timeout: float = 600) -> Run:
    """Run ``argv`` in its own process group; kill it (SIGKILL to the whole group) before the
    step ``kill_at`` names (a number or ``KIND[:TEXT][#N]``, the fault hook's
    ``TVREG_FAULT_KILL_AT``), or ``kill_after`` seconds after its first durable step (the
    time before it, interpreter and library imports, varies too much with the load to aim
    at the writing part of a run from the start)."""
    trace = cwd / f".trace-{uuid.uuid4().hex[:8]}"
    env = {**env, TRACE_ENV: str(trace)}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    started = time.time()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kill_after is not None:  # output is a few lines: the pipes cannot fill meanwhile
        while not trace.exists() and proc.poll() is None and time.time() - started < timeout:
            time.sleep(0.001)
        time.sleep(kill_after)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    elapsed = time.time() - started
    steps, killed = read_trace(trace)
    trace.unlink(missing_ok=True)
    return Run(proc.returncode, out, err, started, elapsed, steps, killed)


# --- expected content ---------------------------------------------------------------------------


class Expected:
    """The task vector of each toy task, computed with torch from the checkpoint files alone."""

    def __init__(self, zoo) -> None:
        self.zoo = zoo
        self._cache: dict[str, dict[str, Any]] = {}

    def of(self, task: str) -> dict[str, Any]:
        if task not in self._cache:
            from safetensors.torch import load_file

            base = load_file(str(self.zoo.base))
            ft = load_file(str(self.zoo.finetuned[task]))
            self._cache[task] = {k: ft[k].float() - base[k].float() for k in base
                                 if base[k].is_floating_point()}
        return self._cache[task]

    def mismatch(self, reg, record) -> str | None:
        """None if the version ``record`` names decodes exactly to its task's vector (each
        version made here has the toy task whose checkpoint it came from as ``task``)."""
        import torch

        task = record.metadata.task
        if task not in self.zoo.finetuned:
            return f"{record.ref}: unexpected task {task!r}"
        try:
            got = reg.get(record.ref).tensors()
        except Exception as e:  # noqa: BLE001 - any failure to read it is the finding
            return f"{record.ref}: does not read: {type(e).__name__}: {e}"
        want = self.of(task)
        if set(got) != set(want):
            return f"{record.ref}: tensors {sorted(set(got) ^ set(want))} differ"
        for name, t in want.items():
            if got[name].dtype != t.dtype or not torch.equal(got[name], t):
                return f"{record.ref}: tensor {name} is not bit-exact"
        return None


# --- checks on a local registry -----------------------------------------------------------------


def verify_cli(root: pathlib.Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """``tvreg --registry ROOT verify --json``: its exit code and problems."""
    r = subprocess.run(cli("--registry", str(root), "verify", "--json"), env=env,
                       capture_output=True, text=True, timeout=300)
    try:
        problems = json.loads(r.stdout)["problems"]
    except (ValueError, KeyError):
        problems = [f"verify printed no report (exit {r.returncode}): {r.stderr.strip()[-300:]}"]
    return r.returncode, problems


def store_state(root: pathlib.Path) -> tuple[set, set]:
    """``(versions, tags)`` of a local registry's files: (name, version, vector_id) and
    (name, tag, version, vector_id)."""
    import tvreg

    with tvreg.open(root) as reg:
        versions = {(r.name, r.version, r.vector_id) for r in reg.all_records()}
        tags = {(t.name, t.tag, t.version, t.vector_id) for t in reg.all_tags()}
    return versions, tags


def catalog_state(root: pathlib.Path) -> tuple[set, set]:
    """``(versions, tags)`` as the catalog lists them (read-only, no rebuild)."""
    import duckdb

    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        versions = set(con.execute("SELECT name, version, vector_id FROM versions").fetchall())
        tags = set(con.execute("SELECT name, tag, version, vector_id FROM tags").fetchall())
    finally:
        con.close()
    return versions, tags


def check_local(root: pathlib.Path, env: dict[str, str], expected: Expected,
                may_lag: set[str], out: Outcome, reported: list[str]) -> None:
    """After a kill: verify (clean, or only the catalog missing versions named in ``may_lag``:
    NAME or NAME@N), and every version present exact, reported ones included."""
    import tvreg

    code, problems = verify_cli(root, env)
    if code == 0 and not problems:
        out.verify_clean = True
    elif len(problems) == 1 and _BEHIND.search(problems[0]):
        stored, _ = store_state(root)
        indexed, _ = catalog_state(root)
        missing = stored - indexed
        if indexed <= stored and missing and all(
                n in may_lag or f"{n}@{v}" in may_lag for n, v, _ in missing):
            out.catalog_behind = True
        else:
            out.problems.append(f"catalog differs from the store: missing {sorted(missing)}, "
                                f"extra {sorted(indexed - stored)}")
    else:
        out.problems += [f"verify after the kill: {p}" for p in problems]
    with tvreg.open(root, check_tensors=True) as reg:
        records = {r.ref: r for r in reg.all_records()}
        bad = [m for r in records.values() if (m := expected.mismatch(reg, r))]
    bad += [f"{ref} was reported but does not exist" for ref in reported if ref not in records]
    out.exact = not bad
    out.problems += bad


def check_complete(root: pathlib.Path, env: dict[str, str], expected: Expected,
                   want: dict[str, str], out: Outcome, *, similarities: bool = True) -> None:
    """After the rerun: exactly the versions ``want`` (ref -> task) exist, each exact; verify
    passes; the catalog's versions and tags equal the files; every vector has its similarity
    statistics and every pair of its base its cosine; then ``gc --grace 0`` leaves no
    temporary file, scratch folder or unreferenced object and every version still exact."""
    import tvreg

    problems: list[str] = []
    with tvreg.open(root) as reg:  # what `tvreg verify` runs (the CLI ran after the kill)
        problems += [f"verify after the rerun: {p}" for p in reg.verify().problems]
    stored, tags = store_state(root)
    if catalog_state(root) != (stored, tags):
        problems.append("catalog differs from the files after the rerun (versions or tags)")
    with tvreg.open(root, check_tensors=True) as reg:
        records = {r.ref: r for r in reg.all_records()}
        if set(records) != set(want):
            problems.append(f"versions after the rerun: {sorted(records)}, want {sorted(want)}")
        problems += [m for r in records.values() if (m := expected.mismatch(reg, r))]
        problems += [f"{ref} holds task {records[ref].metadata.task}, want {task}"
                     for ref, task in want.items()
                     if ref in records and records[ref].metadata.task != task]
        vids = {r.vector_id for r in records.values()}
        rows = reg.sql("SELECT (SELECT count(*) FROM vector_stats) AS stats, "
                       "(SELECT count(*) FROM similarities) AS pairs")[0]
        if similarities and (rows["stats"], rows["pairs"]) != \
                (len(vids), len(vids) * (len(vids) - 1) // 2):
            problems.append(f"similarities incomplete: {rows['stats']} statistics, "
                            f"{rows['pairs']} pairs for {len(vids)} vectors")
        reg.gc(grace_seconds=0)
        from tvreg.maintenance.gc import reachable_objects

        extra = set(reg.objects.ids()) - reachable_objects(reg.repo)
        if extra:
            problems.append(f"gc --grace 0 left {len(extra)} unreferenced object(s)")
        problems += [m for r in records.values() if (m := expected.mismatch(reg, r))]
    leftovers = [str(p.relative_to(root)) for p in root.rglob(".tmp-*")]
    leftovers += [str(p.relative_to(root)) for p in (root / "tmp").glob("*")]
    if leftovers:
        problems.append(f"gc --grace 0 left {leftovers[:3]}")
    with tvreg.open(root) as reg:
        problems += [f"verify after gc: {p}" for p in reg.verify().problems]
    out.rerun_complete = not problems
    out.problems += problems


# --- checks on a remote -------------------------------------------------------------------------


@dataclass
class RemoteSpec:
    """A remote a crash scenario pushes to or pulls from: its URL and fsspec options."""

    url: str
    options: dict[str, Any]

    def store(self):
        from tvreg.remote.config import Remote

        return Remote("check", self.url, self.options).store()

    def cli_options(self, flag: str) -> list[str]:
        return [a for k, v in self.options.items()
                for a in (flag, f"{k}={v if isinstance(v, str) else json.dumps(v)}")]


def remote_records(spec: RemoteSpec) -> dict[str, Any]:
    """Every record on the remote that reads (seal and key checked), by ref; problems raise."""
    from tvreg.storage.documents import read_record, record_keys

    store = spec.store()
    return {(r := read_record(store, k)).ref: r for k in record_keys(store)}


def check_remote(spec: RemoteSpec, env: dict[str, str], work: pathlib.Path,
                 expected: Expected, out: Outcome, local: pathlib.Path | None = None
                 ) -> dict[str, Any]:
    """What a reader of the remote sees: every record has all its objects, intact; the index
    (``tvreg ls --remote origin`` from the registry ``local``, which names the remote
    origin), ``tvreg --registry URL ls`` and ``show``, and a pull into a fresh registry list
    only such versions, and each pulled one decodes exactly. Returns the remote's records by
    ref."""
    import tvreg
    from tvreg.digest import sha256_hex
    from tvreg.format.manifest import Manifest
    from tvreg.remote.index import read as read_index
    from tvreg.storage.documents import read_many
    from tvreg.storage.objects import object_key
    from tvreg.stores import MissingKey

    problems: list[str] = []
    store = spec.store()
    try:
        records = remote_records(spec)
    except Exception as e:  # noqa: BLE001
        out.problems.append(f"a record on the remote does not read: {e}")
        return {}

    def intact(oid: str) -> bool:
        try:
            return sha256_hex(store.read(object_key(oid))) == oid
        except MissingKey:
            return False

    vids = sorted({r.vector_id for r in records.values()})
    whole = dict(zip(vids, read_many(intact, vids), strict=True))
    blobs = {v: sorted(Manifest.from_bytes(store.read(object_key(v))).blob_ids())
             for v in vids if whole[v]}
    every = sorted({b for bs in blobs.values() for b in bs})
    good = dict(zip(every, read_many(intact, every), strict=True))
    for ref, rec in sorted(records.items()):
        if not whole[rec.vector_id]:
            problems.append(f"remote {ref}: manifest {rec.vector_id[:12]} missing or damaged")
            continue
        missing = [b for b in blobs[rec.vector_id] if not good[b]]
        if missing:
            problems.append(f"remote {ref}: {len(missing)} of its objects missing or damaged")
    held = {(r.name, r.version, r.vector_id) for r in records.values()}
    index = read_index(store)
    if index is not None and not {row[:3] for row in index.versions} <= held:
        problems.append("the remote index lists a version the remote does not hold")
    if local is not None and index is not None:
        r = subprocess.run(cli("--registry", str(local), "ls", "--remote", "origin", "--all",
                               "--json"), env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            problems.append(f"tvreg ls --remote failed: {r.stderr.strip()[-300:]}")
        elif not {(row["name"], row["version"], row["vector_id"])
                  for row in json.loads(r.stdout)} <= held:
            problems.append("tvreg ls --remote lists a version the remote does not hold")
    cache = work / f"cache-{uuid.uuid4().hex[:8]}"
    if records:
        r = subprocess.run(cli("--registry", spec.url, *spec.cli_options("--registry-option"),
                               "ls", "--all", "--json"),
                           env={**env, "TVREG_CACHE": str(cache)}, capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            problems.append(f"tvreg --registry URL ls failed: {r.stderr.strip()[-300:]}")
        else:
            listed = {f"{row['name']}@{row['version']}" for row in json.loads(r.stdout)}
            if listed != set(records):
                problems.append(f"tvreg --registry URL ls lists {sorted(listed)}, the remote "
                                f"holds {sorted(records)}")
        with tvreg.open(spec.url, options=spec.options, cache=cache) as reader:
            for ref, rec in sorted(records.items()):  # what `show` says of each
                shown = reader.show(ref)
                if (shown["ref"], shown["vector_id"]) != (ref, rec.vector_id):
                    problems.append(f"tvreg --registry URL show {ref}: {shown['vector_id']}")
        clone = work / f"clone-{uuid.uuid4().hex[:8]}"
        with tvreg.open(clone, check_tensors=True) as reg:
            reg.add_remote("origin", spec.url, spec.options)
            try:
                reg.pull("origin", similarities=False)
            except Exception as e:  # noqa: BLE001
                problems.append(f"pull from the remote failed: {type(e).__name__}: {e}")
            else:
                problems += [m for rec in reg.all_records() if (m := expected.mismatch(reg, rec))]
                problems += [f"verify of a pulled clone: {p}" for p in reg.verify().problems]
        shutil.rmtree(clone, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    out.problems += problems
    return records


# --- scenarios ----------------------------------------------------------------------------------

#: the versions of the template registries: ref -> toy task (topic@2 holds sentiment's vector)
BASE_VERSIONS = {"sentiment@1": "sentiment", "topic@1": "topic", "topic@2": "sentiment"}


def fill(root: pathlib.Path, zoo, versions: dict[str, str] = BASE_VERSIONS,
         tag: tuple[str, str] | None = ("topic@1", "prod")) -> None:
    """Create ``versions`` (ref -> task; refs in order) in a registry, with the task as
    metadata, and one tag."""
    import tvreg

    with tvreg.open(root) as reg:
        for ref, task in versions.items():
            name = ref.split("@")[0]
            steps = 20 if task == name else 7
            res = reg.create(name, zoo.base, zoo.finetuned[task], task=task,
                             dataset=f"toy-{task}", steps=steps)
            assert res.record.ref == ref, (res.record.ref, ref)
        if tag:
            reg.tag(*tag)


class Scenario:
    """One command to kill, the state it starts from, and what it must achieve."""

    label = "?"

    def __init__(self, work: pathlib.Path, zoo, env: dict[str, str],
                 expected: Expected | None = None) -> None:
        self.work = pathlib.Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.zoo = zoo
        self.env = dict(env)
        self.expected = expected or Expected(zoo)
        self.template = self.work / "template"
        self._runs = 0
        self.prepare()

    # to override
    def prepare(self) -> None:
        """Build ``self.template`` (once)."""

    def argv(self, where: pathlib.Path) -> list[str]:
        raise NotImplementedError

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        raise NotImplementedError

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        raise NotImplementedError

    # shared
    def fresh(self) -> pathlib.Path:
        self._runs += 1
        where = self.work / f"run-{self._runs}"
        if self.template.exists():
            shutil.copytree(self.template, where, symlinks=True)
        else:
            where.mkdir()
        self.started(where)
        return where

    def started(self, where: pathlib.Path) -> None:
        """Per-run set-up after the copy (e.g. a fresh bucket)."""

    def discard(self, where: pathlib.Path) -> None:
        shutil.rmtree(where, ignore_errors=True)

    def run(self, where: pathlib.Path, **kill: Any) -> Run:
        return run_cli(self.argv(where), self.env, where, **kill)

    def calibrate(self) -> Run:
        """One run to the end with the fault trace on: its steps and timing."""
        where = self.fresh()
        try:
            run = self.run(where)
            if run.returncode != 0:
                raise RuntimeError(f"{self.label}: the command failed without a fault: "
                                   f"{run.stderr.strip()[-500:]}")
            return run
        finally:
            self.discard(where)


def attempt(scenario: Scenario, *, kill_at: int | str | None = None,
            kill_after: float | None = None) -> Outcome:
    """Run the scenario's command, kill it, check; run it again, check it completed."""
    t0 = time.time()
    where = scenario.fresh()
    try:
        run = scenario.run(where, kill_at=kill_at, kill_after=kill_after)
        how = f"before {kill_at}" if isinstance(kill_at, str) else \
            f"step {kill_at}" if kill_at is not None else \
            f"{kill_after:.3f} s after the first step"
        point = run.killed_before.kind if run.killed_before else \
            (f"after {run.steps[-1].kind}" if run.killed and run.steps else
             "before any step" if run.killed else "-")
        out = Outcome(scenario.label, how, run.killed, point, reported=run.reported)
        if not run.killed and run.returncode != 0:
            out.problems.append(f"the command failed (exit {run.returncode}): "
                                f"{run.stderr.strip()[-300:]}")
        scenario.after_kill(where, run, out)
        rerun = scenario.run(where)
        if rerun.returncode != 0:
            out.problems.append(f"the rerun failed (exit {rerun.returncode}): "
                                f"{rerun.stderr.strip()[-400:]}")
        else:
            scenario.after_rerun(where, out)
    finally:
        scenario.discard(where)
    out.seconds = time.time() - t0
    return out


def kill_plan(steps: list[Step], count: int | None) -> list[int]:
    """Step numbers to kill before: all of them (``count`` None or at least their number), or
    ``count`` of them: the first step of every kind first, the rest spread evenly."""
    numbers = [s.number for s in steps]
    if count is None or count >= len(numbers):
        return numbers
    firsts, seen = [], set()
    for s in steps:
        if s.kind not in seen:
            seen.add(s.kind)
            firsts.append(s.number)
    chosen = set(firsts[:count])
    rest = [n for n in numbers if n not in chosen]
    need = count - len(chosen)
    if need > 0 and rest:
        chosen |= {rest[round(i * (len(rest) - 1) / max(1, need - 1))] for i in range(need)}
    return sorted(chosen)


def kill_delays(run: Run, count: int, rng: random.Random) -> list[float]:
    """``count`` random delays after a command's first durable step (for :func:`run_cli`'s
    ``kill_after``), uniform over the part of its run that writes as the trace of ``run``
    shows it: from the first durable step to a little after the last (10 ms and a tenth of
    the span more, past its final output)."""
    span = run.steps[-1].time - run.steps[0].time if run.steps else run.elapsed
    return [rng.uniform(0.0, 1.1 * span + 0.01) for _ in range(count)]


class CreateScenario(Scenario):
    """``tvreg create toxicity`` into a registry holding three versions and a tag; with
    ``new_registry``, into a registry that does not exist yet."""

    def __init__(self, *args: Any, new_registry: bool = False, **kw: Any) -> None:
        self.new_registry = new_registry
        self.label = "create (new registry)" if new_registry else "create"
        super().__init__(*args, **kw)

    def prepare(self) -> None:
        if not self.new_registry:
            fill(self.template / "reg", self.zoo)

    def started(self, where: pathlib.Path) -> None:
        (where / "tmp").mkdir(exist_ok=True)  # TMPDIR: where a new registry stages

    def argv(self, where: pathlib.Path) -> list[str]:
        return create_argv(where / "reg", self.zoo, "toxicity")

    def run(self, where: pathlib.Path, **kill: Any) -> Run:
        return run_cli(self.argv(where), {**self.env, "TMPDIR": str(where / "tmp")}, where,
                       **kill)

    def want(self) -> dict[str, str]:
        return {"toxicity@1": "toxicity"} if self.new_registry else \
            {**BASE_VERSIONS, "toxicity@1": "toxicity"}

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        root = where / "reg"
        if self.new_registry and not (root / "config.json").exists():
            # killed before the registry was created (§11 steps 1-3): nothing is there but,
            # at most, what an interrupted init leaves (its layout folders and the temporary
            # file of config.json); staging is in TMPDIR
            left = sorted(p.name for p in root.iterdir()) if root.exists() else []
            files = [f for f in root.rglob("*") if f.is_file()] if root.exists() else []
            if set(left) - {"objects", "refs", "tags", "tmp"} - {f.name for f in files} or any(
                    f.parent != root or not f.name.startswith(".tmp-") for f in files):
                out.problems.append(f"no registry, yet {left} was left")
            out.verify_clean = out.exact = not out.reported
            return
        check_local(root, self.env, self.expected, {"toxicity"}, out, run.reported)

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        check_complete(where / "reg", self.env, self.expected, self.want(), out)


class PushScenario(Scenario):
    """``tvreg push origin`` of four versions and a tag to a remote that holds one of them
    already: a directory (``kind="dir"``) or an S3 bucket (``kind="s3"``, moto's server at
    ``endpoint``)."""

    def __init__(self, *args: Any, kind: str = "dir", endpoint: str | None = None,
                 **kw: Any) -> None:
        self.kind, self.endpoint = kind, endpoint
        self.label = f"push ({'directory' if kind == 'dir' else 'S3'})"
        super().__init__(*args, **kw)

    def prepare(self) -> None:
        fill(self.template / "reg", self.zoo, {**BASE_VERSIONS, "toxicity@1": "toxicity"})

    def spec(self, where: pathlib.Path) -> RemoteSpec:
        if self.kind == "dir":
            return RemoteSpec("file://" + str(where / "remote"), {})
        return RemoteSpec(f"s3://{(where / 'bucket').read_text()}/team",
                          {"endpoint_url": self.endpoint, "skip_instance_cache": True,
                           "use_listings_cache": False})

    def started(self, where: pathlib.Path) -> None:
        import tvreg

        if self.kind == "s3":
            import s3fs

            bucket = f"crash-{uuid.uuid4().hex[:16]}"
            s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True).mkdir(bucket)
            (where / "bucket").write_text(bucket)
        spec = self.spec(where)
        with tvreg.open(where / "reg") as reg:
            reg.add_remote("origin", spec.url, spec.options)
            reg.push("origin", ["sentiment@1"])

    def discard(self, where: pathlib.Path) -> None:
        if self.kind == "s3" and (where / "bucket").exists():
            import s3fs

            try:
                s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True).rm(
                    (where / "bucket").read_text(), recursive=True)
            except (FileNotFoundError, OSError):
                pass
        super().discard(where)

    def argv(self, where: pathlib.Path) -> list[str]:
        return cli("--registry", str(where / "reg"), "push", "origin")

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        before = len(out.problems)
        import tvreg

        with tvreg.open(where / "reg") as reg:  # push changes nothing here
            out.problems += [f"local verify: {p}" for p in reg.verify().problems]
        check_remote(self.spec(where), self.env, where, self.expected, out, where / "reg")
        out.verify_clean = out.exact = len(out.problems) == before

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        import tvreg

        before = len(out.problems)
        spec = self.spec(where)
        records = check_remote(spec, self.env, where, self.expected, out, where / "reg")
        with tvreg.open(where / "reg") as reg:
            ours = {r.ref: r for r in reg.all_records()}
            tags = {(t.name, t.tag, t.version) for t in reg.all_tags()}
        if {ref: r.vector_id for ref, r in records.items()} != \
                {ref: r.vector_id for ref, r in ours.items()}:
            out.problems.append(f"the remote holds {sorted(records)} after the rerun, the "
                                f"registry {sorted(ours)}")
        from tvreg.remote.index import read as read_index
        from tvreg.storage.documents import read_tag, tag_keys

        store = spec.store()
        theirs = {(t.name, t.tag, t.version) for t in (read_tag(store, k)
                                                        for k in tag_keys(store))}
        if theirs != tags:
            out.problems.append(f"remote tags {sorted(theirs)}, want {sorted(tags)}")
        index = read_index(store)
        held = {(r.name, r.version, r.vector_id) for r in records.values()}
        if index is None or {row[:3] for row in index.versions} != held or \
                {row[:3] for row in index.tags} != theirs:
            out.problems.append("the remote index does not list every version and tag")
        out.rerun_complete = len(out.problems) == before


class PullScenario(Scenario):
    """``tvreg pull origin`` of five versions and a tag from a directory remote into a
    registry that holds one of them already."""

    label = "pull"

    def prepare(self) -> None:
        import tvreg

        origin = self.work / "origin-reg"
        fill(origin, self.zoo, {**BASE_VERSIONS, "toxicity@1": "toxicity",
                                "toxicity@2": "topic"})
        self.remote = self.work / "origin"  # shared by all runs: pull only reads it
        with tvreg.open(origin) as reg:
            reg.add_remote("origin", str(self.remote))
            reg.push("origin")
        with tvreg.open(self.template / "reg") as reg:
            reg.add_remote("origin", str(self.remote))
            reg.pull("origin", ["sentiment@1"])

    def argv(self, where: pathlib.Path) -> list[str]:
        return cli("--registry", str(where / "reg"), "pull", "origin")

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        check_local(where / "reg", self.env, self.expected, {"topic", "toxicity"}, out,
                    run.reported)

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        check_complete(where / "reg", self.env, self.expected,
                       {**BASE_VERSIONS, "toxicity@1": "toxicity", "toxicity@2": "topic"}, out)


def _age(root: pathlib.Path, seconds: float) -> None:
    """Set every file's and folder's times ``seconds`` in the past."""
    when = time.time() - seconds
    for p in [root, *root.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def killed_command(argv: list[str], cwd: pathlib.Path, env: dict[str, str], spec: str) -> Run:
    """Leave what the command ``argv`` leaves when it is killed just before the step ``spec``
    names (``KIND[:TEXT][#N]``), by doing exactly that."""
    run = run_cli(argv, env, cwd, kill_at=spec)
    if not run.killed:
        raise RuntimeError(f"{argv}: not killed before {spec}: {run.stderr[-300:]}")
    return run


def create_argv(root: pathlib.Path, zoo, task: str, *more: str) -> list[str]:
    return cli("--registry", str(root), "create", task, "--base", _abs(zoo.base),
               "--finetuned", _abs(zoo.finetuned[task]), "--task", task,
               "--dataset", f"toy-{task}", *more)


def _abs(path: Any) -> str:
    return str(pathlib.Path(path).resolve())


class GcScenario(Scenario):
    """``tvreg gc --grace 600`` on a registry with three versions, a tag, and what two killed
    creates left an hour ago: the blobs and manifest of a vector without a record, a scratch
    folder of staged blobs, temporary files."""

    label = "gc"

    def prepare(self) -> None:
        root = self.template / "reg"
        fill(root, self.zoo)
        argv = create_argv(root, self.zoo, "toxicity")
        killed_command(argv, self.work, self.env, "stage#6")  # a scratch folder of 5 blobs
        killed_command(argv, self.work, self.env, "tmp:refs/")  # a vector without its record
        for folder in ("objects/aa", "refs/topic"):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / ".tmp-leftover").write_bytes(b"half a file")
        _age(root, 3600)

    def argv(self, where: pathlib.Path) -> list[str]:
        return cli("--registry", str(where / "reg"), "gc", "--grace", "600")

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        check_local(where / "reg", self.env, self.expected, set(), out, run.reported)

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        root = where / "reg"
        before = len(out.problems)
        import tvreg
        from tvreg.maintenance.gc import reachable_objects

        with tvreg.open(root) as reg:
            extra = set(reg.objects.ids()) - reachable_objects(reg.repo)
        left = [str(p.relative_to(root)) for p in root.rglob(".tmp-*")] + \
            [str(p.relative_to(root)) for p in (root / "tmp").glob("*")]
        if extra or left:
            out.problems.append(f"the rerun of gc left {len(extra)} unreferenced object(s) and "
                                f"{left[:3]}")
        check_complete(root, self.env, self.expected, BASE_VERSIONS, out)
        out.rerun_complete = out.rerun_complete and len(out.problems) == before


class ReindexScenario(Scenario):
    """``tvreg reindex`` of a registry whose catalog is behind, as kills left it: a create
    killed before its catalog commit (toxicity@1 stored, not indexed) and a ``tvreg tag``
    killed before its catalog commit (topic@prod moved to 2 in its file only)."""

    label = "reindex"

    def prepare(self) -> None:
        root = self.template / "reg"
        fill(root, self.zoo)
        killed_command(create_argv(root, self.zoo, "toxicity"), self.work, self.env, "commit")
        killed_command(cli("--registry", str(root), "tag", "topic@2", "prod"), self.work,
                       self.env, "commit")

    def argv(self, where: pathlib.Path) -> list[str]:
        return cli("--registry", str(where / "reg"), "reindex")

    def after_kill(self, where: pathlib.Path, run: Run, out: Outcome) -> None:
        check_local(where / "reg", self.env, self.expected, {"toxicity"}, out, run.reported)

    def after_rerun(self, where: pathlib.Path, out: Outcome) -> None:
        # reindex indexes; similarities are `tvreg similarities`' (or the create rerun's) job
        check_complete(where / "reg", self.env, self.expected,
                       {**BASE_VERSIONS, "toxicity@1": "toxicity"}, out, similarities=False)


def subprocess_env(scratch: pathlib.Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the killed commands: no progress bars, short lock waits, a private
    cache and TMPDIR, no fault hook inherited."""
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, TRACE_ENV)}
    scratch.mkdir(parents=True, exist_ok=True)
    env.update(TVREG_NO_PROGRESS="1", TVREG_LOCK_TIMEOUT="30", TVREG_CACHE=str(scratch / "cache"),
               TMPDIR=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env
