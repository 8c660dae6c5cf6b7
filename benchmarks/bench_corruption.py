#!/usr/bin/env python3
"""Corruption: random damage to every kind of file, and whether tvreg detects (and repairs) it.

What it does (see docs/reliability.md, section 3):

1. Builds one small real registry (``tvreg.testing.make_toy_zoo``: a base and three fine-tuned
   checkpoints): three versions, a composed version, a tag, a stored base with a name and an
   exact-mode version (read through that base), pushed with its base to a directory remote.
   Every file is classified by kind: ``blob``, ``manifest`` (of a vector), ``base blob``,
   ``base manifest``, ``record``, ``tag``, ``base record``, ``base name``.
2. Traces which files each read touches, on the pristine registry: ``get(REF).state_dict()``
   for every version and tag ref, ``export`` of one version, ``apply`` of one version onto the
   stored base, and ``export_base`` by name and by hash prefix (``LocalStore.read`` wrapped to
   record keys; the process-wide cache of verified base manifests cleared before each read, as
   in a fresh process). ``apply`` also reads the base names, only to label the base in its
   messages, and leaves a damaged one out of the label: it counts as not reading them (and
   so must give exactly its result when one is damaged).
3. **Local flips** (``--flips``, default 1,000): a kind drawn uniformly, then a file of that kind,
   a byte position and a non-zero XOR mask (1-255), all from ``--seed``. Each flip goes into a
   fresh copy of the registry folder, and three detectors run on it:

   - **read**: every read that touches the file must fail with a tvreg damage error
     (``CorruptObject`` or ``FormatError``); one that returns is a miss. Every other read must
     return exactly the pristine result (a sha256 over its tensors); one that fails or differs
     is a false alarm.
   - **verify**: ``Registry.verify()`` must report the damaged file's key (``damaged``); any
     other key reported is a false alarm.
   - **repair**: ``Registry.verify(repair="origin")`` must end ``ok``, with the file put back
     (objects, records, base records byte for byte; tags and base names pointing where they
     did, as the remote holds them).

4. **Remote flips** (``--remote-flips``, default 300): the same draw over the remote's files (its
   Parquet index left out: derived data that tvreg does not trust), in a fresh copy of the
   remote; **pull** (``pull(with_base=True)`` into a fresh registry) must fail naming the key,
   or (a tag or base name, movable pointers) report it under ``problems`` and not pull it; and
   whatever it did pull must verify (``verify(deep=True)``). Anything else is a miss.
5. **Other damage**, per kind, both sides: the file truncated by one byte, cut to half, extended
   by one byte, 2-8 random bytes flipped, a 64-byte run zeroed, the file emptied.
6. **Controls** (``--controls``): undamaged copies through every detector; any report is a
   false alarm.

Times are per trial, median, in milliseconds (the copy of the folder not included).

    python benchmarks/bench_corruption.py                 # about 10 min on 2 cores
    python benchmarks/bench_corruption.py --quick         # 60 + 24 flips, about 1 min
    python benchmarks/bench_corruption.py --flips 2000 --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _load_line, _loadavg, run_header  # noqa: E402

KINDS = ("blob", "manifest", "base blob", "base manifest", "record", "tag", "base record",
         "base name")
POINTERS = ("tag", "base name")          # movable: put back as the remote holds them
OTHER = ("truncated by 1", "cut to half", "extended by 1", "2-8 bytes flipped",
         "64 bytes zeroed", "emptied")


def _log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- the registry ----------------------------------------------------------------------------------


def build(work: str, width: int) -> str:
    import tvreg
    from tvreg.testing import make_toy_zoo

    zoo = make_toy_zoo(os.path.join(work, "zoo"), width=width)
    root = os.path.join(work, "pristine")
    with tvreg.open(os.path.join(root, "registry")) as reg:
        for task, path in zoo.finetuned.items():
            reg.create(task, zoo.base, path, **zoo.meta[task], similarities=False)
        reg.tag("topic@1", "prod")
        reg.save_composition("mix", reg.resolve("topic - 0.5*toxicity"), similarities=False)
        reg.add_base(zoo.base, "toy")
        reg.create("exact", zoo.base, zoo.finetuned["sentiment"], exact=True, similarities=False)
        reg.add_remote("origin", os.path.join(root, "remote"))
        reg.push(with_base=True)
    return root


def classify(reg) -> dict[str, list[str]]:
    """Every file of the store by kind (the catalog, config.json and tmp/ are not objects)."""
    from tvreg.storage.documents import base_keys, base_name_keys, read_base, record_keys, tag_keys
    from tvreg.storage.objects import object_key

    kinds: dict[str, set[str]] = defaultdict(set)
    for key in record_keys(reg.store):
        rec = reg._read_record(key)
        kinds["record"].add(key)
        kinds["manifest"].add(object_key(rec.vector_id))
        kinds["blob"] |= {object_key(b) for b in reg.manifest(rec.vector_id).blob_ids()}
    for key in base_keys(reg.store):
        rec = read_base(reg.store, key)
        kinds["base record"].add(key)
        kinds["base manifest"].add(object_key(rec.manifest))
        kinds["base blob"] |= {object_key(b) for b in reg.manifest(rec.manifest).blob_ids()}
    kinds["tag"] = set(tag_keys(reg.store))
    kinds["base name"] = set(base_name_keys(reg.store))
    shared = kinds["blob"] & kinds["base blob"]
    kinds["blob"] -= shared  # none in practice: a delta's blob is never a base tensor's
    every = {object_key(o) for o in reg.objects.ids()}
    assert set().union(*kinds.values()) >= every, "an object of no kind"
    return {k: sorted(kinds[k]) for k in KINDS}


# --- reads -----------------------------------------------------------------------------------------


def _digest(tensors) -> str:
    from tvreg.digest import tensor_bytes

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _file_digest(path: str) -> str:
    from safetensors.torch import load_file

    return _digest(load_file(path))


def reads(reg) -> dict[str, object]:
    """name -> fn(reg, outdir) -> digest of what the read gives."""
    from tvreg.storage.documents import record_keys, tag_keys

    ops: dict[str, object] = {}
    for key in record_keys(reg.store):
        ref = reg._read_record(key).ref
        ops[f"get {ref}"] = lambda r, out, ref=ref: _digest(r.get(ref).state_dict())
    for key in tag_keys(reg.store):
        tag = reg._read_tag(key)
        ref = f"{tag.name}@{tag.tag}"
        ops[f"get {ref}"] = lambda r, out, ref=ref: _digest(r.get(ref).state_dict())

    def export(r, out):
        path = os.path.join(out, "export.safetensors")
        r.export("sentiment@1", path)
        return _file_digest(path)

    def apply(r, out):
        path = os.path.join(out, "apply.safetensors")
        r.apply("topic@1", None, path)
        return _file_digest(path)

    base_hash = reg.sql("SELECT base_hash FROM bases")[0]["base_hash"]

    def export_base(ref):
        def run(r, out):
            path = os.path.join(out, "base.safetensors")
            r.export_base(ref, path)
            return _file_digest(path)
        return run

    ops["export sentiment@1"] = export
    ops["apply topic@1"] = apply
    ops["export_base toy"] = export_base("toy")
    ops["export_base HASH"] = export_base(base_hash[:12])
    return ops


def run_read(op, root: str, out: str):
    """Run one read on a fresh Registry object; its digest, or the error."""
    import tvreg
    from tvreg.repo.bases import _MANIFESTS

    _MANIFESTS.clear()  # as in a fresh process: the process keeps verified base manifests
    try:
        with tvreg.open(root) as reg:
            return op(reg, out)
    except Exception as e:  # noqa: BLE001 - classified by the caller
        return e


def trace(ops: dict, root: str, out: str) -> tuple[dict[str, set[str]], dict[str, str]]:
    """For each read: the keys it reads, and its digest on the pristine registry."""
    from tvreg.stores.local import LocalStore

    seen: list[str] = []
    real = LocalStore.read

    def logged(self, key):
        seen.append(key)
        return real(self, key)

    touched, expected = {}, {}
    LocalStore.read = logged
    try:
        for name, op in ops.items():
            seen.clear()
            got = run_read(op, root, out)
            if isinstance(got, Exception):
                raise RuntimeError(f"{name} fails on the pristine registry: {got!r}")
            expected[name] = got
            touched[name] = set(seen)
            if name != "export_base toy":
                # reads that do not resolve a base by name read the base names only to label
                # the base in messages ("stored base toy"); a damaged name is left out of the
                # label (verify reports it), so they do not depend on it: they must still give
                # exactly the same result, which is checked
                touched[name] = {k for k in touched[name] if not k.startswith("bases/names/")}
    finally:
        LocalStore.read = real
    return touched, expected


# --- damage ----------------------------------------------------------------------------------------


def damage(path: str, how: str, rng: random.Random) -> str:
    """Damage the file; returns a short description."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    n = len(data)
    if how == "flip":
        i, mask = rng.randrange(n), rng.randrange(1, 256)
        data[i] ^= mask
        desc = f"byte {i}/{n} ^ 0x{mask:02x}"
    elif how == "truncated by 1":
        data, desc = data[:-1], f"{n} -> {n - 1} bytes"
    elif how == "cut to half":
        data, desc = data[:n // 2], f"{n} -> {n // 2} bytes"
    elif how == "extended by 1":
        data.append(rng.randrange(256))
        desc = f"{n} -> {n + 1} bytes"
    elif how == "2-8 bytes flipped":
        k = min(n, rng.randrange(2, 9))
        for i in rng.sample(range(n), k):
            data[i] ^= rng.randrange(1, 256)
        desc = f"{k} bytes"
    elif how == "64 bytes zeroed":
        start = rng.randrange(max(1, n - 64))
        before = bytes(data[start:start + 64])
        data[start:start + 64] = bytes(len(data[start:start + 64]))
        if bytes(data[start:start + 64]) == before:  # already zeros: flip one instead
            data[start] ^= 0xFF
        desc = f"bytes {start}-{start + 63}"
    elif how == "emptied":
        data, desc = bytearray(), f"{n} -> 0 bytes"
    else:
        raise ValueError(how)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return desc


# --- the detectors ---------------------------------------------------------------------------------


@dataclass
class Tally:
    trials: int = 0
    detected: int = 0
    missed: int = 0
    false_alarms: int = 0
    times: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


def _is_damage_error(e: BaseException) -> bool:
    from tvreg.errors import CorruptObject, FormatError

    return isinstance(e, (CorruptObject, FormatError))


def detect_read(root: str, out: str, key: str, ops: dict, touched: dict, expected: dict,
                tally: Tally, desc: str) -> None:
    t0 = time.perf_counter()
    affected = [n for n in ops if key in touched[n]]
    ok = bool(affected)
    for name in ops:
        got = run_read(ops[name], root, out)
        if name in affected:
            if not (isinstance(got, Exception) and _is_damage_error(got)):
                ok = False
                tally.misses.append(f"{key} ({desc}): {name} gave "
                                    f"{'the same result' if got == expected[name] else repr(got)}")
        elif isinstance(got, Exception) or got != expected[name]:
            tally.false_alarms += 1
            tally.misses.append(f"false alarm: {key} ({desc}): {name} gave {got!r}")
    tally.times.append(time.perf_counter() - t0)
    tally.trials += 1
    tally.detected += ok
    tally.missed += not ok


def detect_verify(root: str, key: str | None, tally: Tally, desc: str) -> None:
    import tvreg

    t0 = time.perf_counter()
    with tvreg.open(root) as reg:
        rep = reg.verify()
    tally.times.append(time.perf_counter() - t0)
    tally.trials += 1
    others = set(rep.damaged) - {key}
    if key is not None:
        if key in rep.damaged and not rep.ok:
            tally.detected += 1
        else:
            tally.missed += 1
            tally.misses.append(f"{key} ({desc}): verify reported {rep.problems}")
    elif not rep.ok:
        others.add("(problems) " + "; ".join(rep.problems))
    if others:
        tally.false_alarms += 1
        tally.misses.append(f"false alarm: {key} ({desc}): verify also reported {sorted(others)}")


def _pointer(path: str, kind: str):
    from tvreg.format.bases import BaseName
    from tvreg.format.records import TagRecord

    with open(path, "rb") as f:
        data = f.read()
    if kind == "tag":
        t = TagRecord.from_bytes(data)
        return (t.name, t.tag, t.version, t.vector_id)
    n = BaseName.from_bytes(data)
    return (n.name, n.base_hash)


def detect_repair(root: str, pristine: str, key: str | None, kind: str | None, tally: Tally,
                  desc: str) -> None:
    import tvreg

    t0 = time.perf_counter()
    with tvreg.open(root) as reg:
        rep = reg.verify(repair="origin")
    tally.times.append(time.perf_counter() - t0)
    tally.trials += 1
    if key is None:
        if rep.repaired or not rep.ok:
            tally.false_alarms += 1
            tally.misses.append(f"false alarm: control: repair did {rep.repaired} {rep.problems}")
        return
    here, there = os.path.join(root, key), os.path.join(pristine, key)
    if kind in POINTERS:
        same = os.path.exists(here) and _pointer(here, kind) == _pointer(there, kind)
    else:
        with open(there, "rb") as f:
            want = f.read()
        same = os.path.exists(here) and open(here, "rb").read() == want
    if rep.ok and same and rep.repaired == [key]:
        tally.detected += 1
    else:
        tally.missed += 1
        tally.misses.append(f"{key} ({desc}): repair ok={rep.ok} repaired={rep.repaired} "
                            f"unrepaired={rep.unrepaired} restored={same}")


def detect_pull(remote: str, work: str, key: str | None, kind: str | None, tally: Tally,
                desc: str) -> None:
    import tvreg
    from tvreg.errors import TvregError

    target = os.path.join(work, "clone")
    t0 = time.perf_counter()
    error, rep = None, None
    with tvreg.open(target) as clone:
        clone.add_remote("origin", remote)
        try:
            rep = clone.pull(with_base=True, similarities=False)
        except TvregError as e:
            error = e
        intact = clone.verify(deep=True)
    tally.times.append(time.perf_counter() - t0)
    tally.trials += 1
    named = error is not None and key is not None and key in str(error)
    reported = rep is not None and key is not None and any(key in p for p in rep.problems)
    if key is None:
        if error is not None or rep.problems or not intact.ok:
            tally.false_alarms += 1
            tally.misses.append(f"false alarm: control: pull {error!r} "
                                f"{rep.problems if rep else ''} {intact.problems}")
        return
    pulled_key = os.path.exists(os.path.join(target, key))
    if kind in POINTERS:
        ok = reported and not pulled_key and intact.ok
    else:
        ok = named and intact.ok
    if ok:
        tally.detected += 1
    else:
        tally.missed += 1
        tally.misses.append(f"{key} ({desc}): pull error={error!r} "
                            f"problems={rep.problems if rep else None} clone ok={intact.ok}")
    if error is not None and not named:
        tally.false_alarms += 1


# --- the runs --------------------------------------------------------------------------------------


def local_trials(args, work: str, pristine: str, kinds: dict, ops: dict, touched: dict,
                 expected: dict, cases: list[tuple[str, str, str]]) -> dict:
    """cases: (kind, key, how); how "control" for an undamaged copy."""
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    src = os.path.join(pristine, "registry")
    rng = random.Random(args.seed + 1)
    started = time.perf_counter()
    for i, (kind, key, how) in enumerate(cases):
        trial = os.path.join(work, "trial")
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(src, trial)
        out = os.path.join(work, "out")
        os.makedirs(out, exist_ok=True)
        label = "control" if how == "control" else kind
        group = "flip" if how == "flip" else how
        if how == "control":
            desc, key_ = "control", None
        else:
            desc, key_ = damage(os.path.join(trial, key), how, rng), key
        if key_ is not None:
            detect_read(trial, out, key_, ops, touched, expected,
                        tallies[(group, label, "read")], desc)
        detect_verify(trial, key_, tallies[(group, label, "verify")], desc)
        detect_repair(trial, src, key_, kind if key_ else None,
                      tallies[(group, label, "repair")], desc)
        if (i + 1) % 100 == 0:
            _log(f"local: {i + 1}/{len(cases)} trials, {time.perf_counter() - started:.0f} s")
    return tallies


def remote_trials(args, work: str, pristine: str, cases: list[tuple[str, str, str]]) -> dict:
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    src = os.path.join(pristine, "remote")
    rng = random.Random(args.seed + 2)
    started = time.perf_counter()
    for i, (kind, key, how) in enumerate(cases):
        trial = os.path.join(work, "trial-remote")
        shutil.rmtree(trial, ignore_errors=True)
        shutil.rmtree(os.path.join(work, "clone"), ignore_errors=True)
        shutil.copytree(src, trial)
        label = "control" if how == "control" else kind
        group = "flip" if how == "flip" else how
        if how == "control":
            desc, key_ = "control", None
        else:
            desc, key_ = damage(os.path.join(trial, key), how, rng), key
        detect_pull(trial, work, key_, kind if key_ else None,
                    tallies[(group, label, "pull")], desc)
        if (i + 1) % 50 == 0:
            _log(f"remote: {i + 1}/{len(cases)} trials, {time.perf_counter() - started:.0f} s")
    return tallies


def draw(kinds: dict, n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(kind, rng.choice(kinds[kind]), "flip")
            for kind in (rng.choice(KINDS) for _ in range(n))]


def others(kinds: dict, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(kind, rng.choice(kinds[kind]), how) for how in OTHER for kind in KINDS]


# --- report ----------------------------------------------------------------------------------------


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        cells = [str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]


def _merge(into: Tally, t: Tally) -> None:
    into.trials += t.trials
    into.detected += t.detected
    into.missed += t.missed
    into.false_alarms += t.false_alarms
    into.times += t.times
    into.misses += t.misses


def _ms(t: Tally) -> str:
    return f"{1000 * statistics.median(t.times):.0f}" if t.times else "-"


def report(info, tallies: dict) -> int:
    """Flips per kind and detector; the other damage per kind of damage and detector (over all
    kinds of file); the controls; totals."""
    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")
    det_order = {"read": 0, "verify": 1, "pull": 2, "repair": 3}
    kind_order = {k: i for i, k in enumerate(KINDS)}
    other_order = {k: i for i, k in enumerate(OTHER)}
    flips: dict[tuple[str, str], Tally] = {}
    other: dict[tuple[str, str], Tally] = defaultdict(Tally)
    controls: dict[str, Tally] = {}
    totals: dict[tuple[str, str], Tally] = defaultdict(Tally)
    misses: list[str] = []
    for (group, label, det), t in tallies.items():
        misses += t.misses
        if label == "control":
            controls[det] = t
            continue
        if group == "flip":
            flips[(label, det)] = t
        else:
            _merge(other[(group, det)], t)
        _merge(totals[("flip" if group == "flip" else "other", det)], t)
    header = ("detector", "trials", "detected", "missed", "false alarms", "median ms")

    def row(first: tuple, t: Tally) -> tuple:
        return (*first, t.trials, t.detected, t.missed, t.false_alarms, _ms(t))

    print()
    print("single-byte flips (a random byte XOR a random non-zero mask), per kind of file:")
    rows = [row((k, d), t) for (k, d), t in sorted(
        flips.items(), key=lambda kv: (kind_order[kv[0][0]], det_order[kv[0][1]]))]
    for line in _table(("kind", *header), rows):
        print(f"  {line}")
    if other:
        print()
        print(f"other damage, each to one file of every kind ({len(KINDS)} files per row):")
        rows = [row((g, d), t) for (g, d), t in sorted(
            other.items(), key=lambda kv: (other_order[kv[0][0]], det_order[kv[0][1]]))]
        for line in _table(("damage", *header), rows):
            print(f"  {line}")
    print()
    print("controls (undamaged copies; any report is a false alarm):")
    rows = [(d, t.trials, "-", t.missed, t.false_alarms, _ms(t))
            for d, t in sorted(controls.items(), key=lambda kv: det_order[kv[0]])]
    for line in _table(header, rows):
        print(f"  {line}")
    print()
    print("totals:")
    rows = [row((g, d), t) for (g, d), t in sorted(
        totals.items(), key=lambda kv: (kv[0][0] != "flip", det_order[kv[0][1]]))]
    for line in _table(("damage", *header), rows):
        print(f"  {line}")
    print()
    print("read: every read that touches the damaged file must fail with CorruptObject or\n"
          "FormatError, and every other read must give exactly what it gave before (else a\n"
          "false alarm); verify: Registry.verify() must name the file, and nothing else; repair:\n"
          "verify(repair='origin') must end ok with the file put back (tags and base names as\n"
          "the remote holds them); pull: pull(with_base=True) into a fresh registry from the\n"
          "damaged remote must fail naming the file, or, for a tag or base name, report it and\n"
          "not pull it, and what was pulled must pass verify(deep=True). median ms: per trial,\n"
          "all of that detector's work (every read; the verification; the repair and both\n"
          "verifications; the pull and the deep verification of the clone).")
    if misses:
        print()
        print(f"misses and false alarms ({len(misses)}):")
        for m in misses[:50]:
            print(f"  {m}")
    return sum(t.missed + t.false_alarms for t in tallies.values())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--flips", type=int, default=1000, help="random single-byte flips, local")
    p.add_argument("--remote-flips", type=int, default=300,
                   help="random single-byte flips on the remote (detected by pull)")
    p.add_argument("--controls", type=int, default=10, help="undamaged copies, each side")
    p.add_argument("--no-other", dest="other", action="store_false",
                   help="skip the truncation / extension / multi-byte cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=32, help="toy model width (32: 11,188 params)")
    p.add_argument("--quick", action="store_true", help="60 + 24 flips, 2 controls")
    p.add_argument("--workdir", default=None, help="default: a temp dir, removed at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.flips, args.remote_flips, args.controls = 60, 24, 2

    import torch

    import tvreg

    started = time.perf_counter()
    load_start = _loadavg()
    own = args.workdir is None
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-corruption-")
    os.makedirs(work, exist_ok=True)
    try:
        _log("building the registry ...")
        pristine = build(work, args.width)
        reg_root = os.path.join(pristine, "registry")
        with tvreg.open(reg_root) as reg:
            kinds = classify(reg)
            ops = reads(reg)
        remote_kinds = {k: [key for key in v if os.path.exists(os.path.join(pristine, "remote",
                                                                            key))]
                        for k, v in kinds.items()}
        out = os.path.join(work, "out")
        os.makedirs(out, exist_ok=True)
        touched, expected = trace(ops, reg_root, out)
        unread = [k for keys in kinds.values() for k in keys
                  if not any(k in t for t in touched.values())]
        assert not unread, f"files no read touches: {unread}"
        local_cases = draw(kinds, args.flips, args.seed)
        remote_cases = draw(remote_kinds, args.remote_flips, args.seed + 100)
        if args.other:
            local_cases += others(kinds, args.seed + 3)
            remote_cases += others(remote_kinds, args.seed + 4)
        local_cases += [("control", "", "control")] * args.controls
        remote_cases += [("control", "", "control")] * args.controls
        _log(f"{len(local_cases)} local trials, {len(remote_cases)} remote trials ...")
        tallies = local_trials(args, work, pristine, kinds, ops, touched, expected, local_cases)
        tallies.update(remote_trials(args, work, pristine, remote_cases))
        n_files = {k: len(v) for k, v in kinds.items()}
        sizes = sum(os.path.getsize(os.path.join(reg_root, k)) for v in kinds.values() for k in v)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    info = run_header(f"torch {torch.__version__}, tvreg {tvreg.__version__}")
    info += [
        ("registry", f"toy width {args.width}: 3 versions, 1 composed, 1 exact-mode, 1 tag, 1 "
                     f"stored base with 1 name; {sum(n_files.values())} files, {sizes:,} bytes "
                     f"(catalog aside); pushed with its base to a directory remote"),
        ("files", ", ".join(f"{k} {n}" for k, n in n_files.items())),
        ("reads", f"{len(ops)}: " + ", ".join(ops)),
        ("trials", f"{args.flips} local flips, {args.remote_flips} remote flips (seed "
                   f"{args.seed}); {len(OTHER)} other kinds of damage x {len(KINDS)} kinds, each "
                   f"side; {args.controls} controls each side; whole benchmark "
                   f"{time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    bad = report(info, tallies)
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
