#!/usr/bin/env python3
"""Bounded memory: a task vector bigger than the memory a process may use is created, verified,
pushed, pulled, applied and exported (docs/reliability.md, section 5).

1. **Generate** a base and a fine-tuned checkpoint of ``--gb`` GB each (10**9 bytes, fp32):
   ``max(2, round(4*gb))`` big 2-D tensors of equal size plus a small bias and an int64 buffer,
   written tensor by tensor in 64 MB slices from seeded numpy generators (base ~ N(0, 0.02²),
   fine-tuned = base + N(0, 0.001²)), so the generator itself holds a few slices.
2. **Run each step in a fresh process under a memory cap** (``resource.setrlimit`` before
   anything is imported): ``tvreg create``, ``tvreg verify --deep``, ``tvreg push`` to a
   directory remote, ``tvreg pull`` into another registry, ``tvreg verify --deep`` there,
   ``tvreg apply`` to a file and ``tvreg export``; each through the CLI (``tvreg.cli.main``),
   as a user runs it. Per step: exit code, wall time, ``ru_maxrss`` (peak RSS), the peak of
   virtual memory (``VmPeak``) and the cap.
3. **Check** every result in an uncapped process, tensor by tensor: the exported vector equals
   ft − base bit for bit, and the applied weights equal base + (ft − base) computed in fp32 bit
   for bit (and are within one rounding of ft).

The cap is ``RLIMIT_DATA`` by default (``--limit data``): it bounds a process's private writable
memory (heap, anonymous mmaps, thread stacks), which is what the data tvreg holds lives in.
``RLIMIT_AS`` (``--limit as``) bounds *address space*: a CPU-only ``import torch`` maps ~1 GB of
shared libraries and glibc reserves up to 64 MB of address space per thread arena, none of it
memory in use, so the same data needs a much larger AS cap (the ``baseline`` row shows it:
its VmPeak against its peak RSS). ``--limit none`` measures without a cap.

    python benchmarks/bench_memory.py --gb 0.5 --cap-mb 1000    # a quick run, about 1 min
    python benchmarks/bench_memory.py                          # 2 x 3 GB under 1.5 GB, ~6 min
    python benchmarks/bench_memory.py --limit as --cap-mb 3000

Disk: about 6x ``--gb`` at once under ``--workdir`` (a temp dir, removed at the end unless
``--keep``); the apply and export outputs are removed once checked.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

MB = 1_000_000
GB = 1_000_000_000
SLICE = 16 << 20  # elements per generated slice (64 MB of fp32)
COLS = 1024
LIMITS = {"data": resource.RLIMIT_DATA, "as": resource.RLIMIT_AS}


# --- the checkpoints ---------------------------------------------------------------------------------


def _layout(gb: float) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, safetensors dtype, shape)`` of every tensor, sorted by name."""
    n = max(2, round(4 * gb))
    rows = max(1, int(gb * GB / 4 / n) // COLS)
    tensors = [(f"layers.{i:02d}.weight", "F32", (rows, COLS)) for i in range(n)]
    tensors += [("head.bias", "F32", (COLS,)), ("position_ids", "I64", (512,))]
    return sorted(tensors)


def generate(workdir: str, gb: float) -> dict:
    """Write base.safetensors and ft.safetensors slice by slice; returns sizes and the peak RSS."""
    import numpy as np

    layout = _layout(gb)
    header, offset = {}, 0
    for name, dtype, shape in layout:
        n = int(np.prod(shape)) * (8 if dtype == "I64" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    paths = {k: os.path.join(workdir, f"{k}.safetensors") for k in ("base", "ft")}
    files = {k: open(p, "wb") for k, p in paths.items()}
    try:
        for f in files.values():
            f.write(len(raw).to_bytes(8, "little") + raw)
        for i, (name, dtype, shape) in enumerate(layout):
            count = int(np.prod(shape))
            if dtype == "I64":
                data = np.arange(count, dtype=np.int64).tobytes()
                for f in files.values():
                    f.write(data)
                continue
            g_base = np.random.Generator(np.random.PCG64([7, i, 0]))
            g_delta = np.random.Generator(np.random.PCG64([7, i, 1]))
            for start in range(0, count, SLICE):
                k = min(SLICE, count - start)
                base = g_base.standard_normal(k, dtype=np.float32)
                base *= np.float32(0.02)
                delta = g_delta.standard_normal(k, dtype=np.float32)
                delta *= np.float32(0.001)
                delta += base
                files["base"].write(base.tobytes())
                files["ft"].write(delta.tobytes())
    finally:
        for f in files.values():
            f.close()
    floating = sum(int(np.prod(s)) for _, d, s in layout if d == "F32")
    return {"checkpoint_bytes": os.path.getsize(paths["base"]), "vector_bytes": floating * 4,
            "tensors": len(layout), "big_tensor_bytes": int(np.prod(layout[-2][2])) * 4
            if layout[-2][1] == "F32" else None, "maxrss": _maxrss()}


# --- the capped steps ------------------------------------------------------------------------------


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child(limit: str, cap_mb: int, commands: list[list[str]], log: str) -> dict:
    """Set the cap, then run ``commands`` (tvreg CLI argument lists) in this process: the exit
    code of the first failing command (or 0), peak RSS, VmPeak, wall time."""
    start_rss = _maxrss()  # what Linux carried over from the parent (ru_maxrss survives exec)
    if limit != "none":
        cap = cap_mb * MB
        resource.setrlimit(LIMITS[limit], (cap, cap))
    started = time.perf_counter()
    code = 0
    with open(log, "a") as out:
        out.write(f"\n=== {commands}\n")
        out.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            from tvreg.cli.main import cli

            if commands == [["--baseline"]]:  # the imports every step pays for
                import torch  # noqa: F401

                import tvreg.registry  # noqa: F401
                commands = []
            for args in commands:
                try:
                    cli.main(args, prog_name="tvreg")
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                if code:
                    break
        except BaseException as e:  # MemoryError, torch's "can't allocate memory"...
            import traceback

            traceback.print_exc()
            code = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return {"code": code, "maxrss": _maxrss(), "start_maxrss": start_rss,
            "vmpeak": _status("VmPeak"), "seconds": time.perf_counter() - started}


def _in_child(function: str, *args) -> dict:
    """``function(*args)`` of this module in a fresh ``python`` process; its JSON result. The
    benchmark's own process stays small: Linux carries a parent's peak RSS into its children's
    ``ru_maxrss`` (through fork and exec)."""
    read, write = os.pipe()
    code = ("import json, os, sys; sys.path.insert(0, %r); import bench_memory as b; "
            "r = b.%s(*%r); os.write(%d, json.dumps(r).encode())"
            % (os.path.dirname(os.path.abspath(__file__)), function, args, write))
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    proc.wait()
    if not text.strip():
        return {"code": f"killed (exit {proc.returncode})", "maxrss": None, "vmpeak": None,
                "start_maxrss": None, "seconds": None}
    return json.loads(text)


# --- checks (uncapped) -------------------------------------------------------------------------------


def check(workdir: str, what: str, path: str) -> str:
    """Compare ``path`` with the checkpoints tensor by tensor; a one-line verdict."""
    import torch
    from safetensors import safe_open

    base_f = safe_open(os.path.join(workdir, "base.safetensors"), "pt")
    ft_f = safe_open(os.path.join(workdir, "ft.safetensors"), "pt")
    out_f = safe_open(path, "pt")
    worst = 0.0
    for name in sorted(base_f.keys()):
        b, f = base_f.get_tensor(name), ft_f.get_tensor(name)
        if what == "export":
            if not b.is_floating_point():
                continue
            if not torch.equal(out_f.get_tensor(name), f - b):
                return f"MISMATCH in {name}"
        else:
            got = out_f.get_tensor(name)
            want = f if not b.is_floating_point() else b + (f - b)
            if not torch.equal(got, want):
                return f"MISMATCH in {name}"
            if b.is_floating_point():
                worst = max(worst, float((got - f).abs().max()))
    if what == "export":
        return "= ft - base, bit for bit"
    return f"= base + (ft - base) bit for bit; max |out - ft| = {worst:.2e}"


# --- main ------------------------------------------------------------------------------------------------


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MB:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=3.0,
                        help="size of each checkpoint in GB (10**9 bytes; default 3)")
    parser.add_argument("--cap-mb", type=int, default=1500,
                        help="memory cap of every step in MB (default 1500)")
    parser.add_argument("--limit", choices=["data", "as", "none"], default="data",
                        help="RLIMIT_DATA (default), RLIMIT_AS, or no cap")
    parser.add_argument("--workdir", help="where checkpoints and registries go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--steps", default="create,verify,push,pull,verify-pulled,apply,export",
                        help="comma-separated steps to run (default: all)")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_core import run_header

    import tvreg

    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-memory-")
    os.makedirs(work, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < 6.5 * args.gb * GB:
        sys.exit(f"{work}: {free / GB:.1f} GB free, the run needs about {6.5 * args.gb:.1f} GB")
    for key, value in run_header(f"tvreg {tvreg.__version__}, torch (CPU)"):
        print(f"{key:9} {value}")
    cap = "none" if args.limit == "none" else f"RLIMIT_{args.limit.upper()} = {args.cap_mb:,} MB"
    print(f"{'cap':9} {cap} per step (set before the imports)")
    reg, reg2 = os.path.join(work, "registry"), os.path.join(work, "pulled")
    remote = os.path.join(work, "remote")
    base, ft = os.path.join(work, "base.safetensors"), os.path.join(work, "ft.safetensors")
    outs = {"apply": os.path.join(work, "applied.safetensors"),
            "export": os.path.join(work, "exported.safetensors")}
    log = os.path.join(work, "steps.log")
    try:
        started = time.perf_counter()
        sizes = _in_child("generate", work, args.gb)
        print(f"{'data':9} 2 checkpoints of {sizes['checkpoint_bytes'] / MB:,.0f} MB "
              f"({sizes['tensors']} tensors, the big ones {sizes['big_tensor_bytes'] / MB:,.0f} "
              f"MB each); task vector {sizes['vector_bytes'] / MB:,.0f} MB fp32; generated in "
              f"{time.perf_counter() - started:.0f} s, generator peak RSS "
              f"{sizes['maxrss'] / MB:,.0f} MB\n")
        steps = {
            "baseline": [["--baseline"]],
            "create": [["--registry", reg, "create", "big", "--base", base, "--finetuned", ft]],
            "verify": [["--registry", reg, "verify", "--deep"]],
            "push": [["--registry", reg, "remote", "add", "dir", remote],
                     ["--registry", reg, "push", "dir"]],
            "pull": [["--registry", reg2, "remote", "add", "dir", remote],
                     ["--registry", reg2, "pull", "dir"]],
            "verify-pulled": [["--registry", reg2, "verify", "--deep"]],
            "apply": [["--registry", reg, "apply", "big", "--base", base, "-o", outs["apply"]]],
            "export": [["--registry", reg, "export", "big", "-o", outs["export"]]],
        }
        wanted = ["baseline"] + [s for s in args.steps.split(",") if s]
        rows, failed = [], None
        for step in wanted:
            if failed:  # every step works on what the ones before made
                rows.append((step, {"code": "skipped", "maxrss": None, "vmpeak": None,
                                    "start_maxrss": None, "seconds": None},
                             f"skipped ({failed} failed)"))
                continue
            res = _in_child("child", args.limit, args.cap_mb, steps[step], log)
            if res["code"] != 0:
                failed = step
            verdict = "ok" if res["code"] == 0 else f"FAILED ({res['code']})"
            if res["code"] == 0 and step in outs:
                verdict = "ok, " + _in_child("check", work, step, outs[step])
                os.remove(outs[step])
            elif res["code"] == 0 and step.startswith("verify"):
                verdict = "ok, every tensor decoded and hashed"
            rows.append((step, res, verdict))
            print(f"  {step:14} {verdict}", file=sys.stderr)
        vector = sizes["vector_bytes"]
        head = ("step", "wall s", "peak RSS MB", "RSS / vector", "RSS / cap", "VmPeak MB",
                "result")
        table = [(step, "n/a" if r["seconds"] is None else f"{r['seconds']:.1f}",
                  _mb(r["maxrss"]),
                  "n/a" if r["maxrss"] is None else f"{r['maxrss'] / vector:.0%}",
                  "n/a" if r["maxrss"] is None or args.limit == "none"
                  else f"{r['maxrss'] / (args.cap_mb * MB):.0%}",
                  _mb(r["vmpeak"]), v) for step, r, v in rows]
        widths = [max(len(str(row[i])) for row in [head] + table) for i in range(len(head))]
        print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in table:
            print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        inherited = max((r["start_maxrss"] or 0) for _, r, _ in rows)
        print(f"\nru_maxrss of every step's process before its imports (inherited): at most "
              f"{inherited / MB:,.0f} MB")
        print(f"vector {vector / MB:,.0f} MB; the stored vector: "
              f"{_tree_bytes(os.path.join(reg, 'objects')) / MB:,.0f} MB of objects; "
              f"step logs in {log if args.keep or args.workdir else '(removed)'}")
        if any(r["code"] != 0 for _, r, _ in rows):
            sys.exit(1)
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(work, ignore_errors=True)


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


if __name__ == "__main__":
    main()
