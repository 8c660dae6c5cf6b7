#!/usr/bin/env python3
"""Core benchmark: ``Registry.create`` and ``Registry.export`` on a real ~20M-parameter task vector.

What it does (see benchmarks/README.md):

1. Builds a real base and fine-tuned checkpoint with :mod:`tvreg.testing.toy` (a few Adam steps
   of pre-training, then a few of fine-tuning) and saves both as ``.safetensors``.
2. Times ``reg.create(...)`` and ``reg.export(...)`` ``--repeats`` times, each into a fresh
   registry, and quotes medians. Throughput is the raw fp32 size of the task vector divided by
   the wall time. In the same process it times two references on the same raw delta bytes (every
   floating tensor's fp32 delta, concatenated in name order): plain zstd level 3 in one call, and
   byte grouping (4 streams) followed by zstd level 3 in one call.
3. Measures the peak RSS of one create and of one export, each in a fresh child process that does
   only that operation: ``ru_maxrss`` after the operation minus ``ru_maxrss`` right after the
   imports. On Linux it also samples ``RssAnon`` (anonymous memory only, i.e. not counting
   file pages of memory-mapped checkpoints) every few milliseconds and reports its peak increase.

Sizes are in MB = 10**6 bytes. Run ``python benchmarks/bench_core.py --help`` for options.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")  # no progress bars inside timed regions

MB = 1_000_000
DEFAULT_WIDTH = 1600          # param_count(1600) = 20,628,804
NAME = "bench"


# --- helpers ---------------------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _proc_status() -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``VmHWM``... of /proc/self/status in bytes (empty off Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


class _RssSampler:
    """Peaks of RssAnon and RssFile, sampled every ``interval`` seconds on a thread (Linux)."""

    KEYS = ("RssAnon", "RssFile")

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        status = _proc_status()
        self.start = {k: status.get(k) for k in self.KEYS}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        status = _proc_status()
        for k in self.KEYS:
            v = status.get(k)
            if v is not None and (self.peak[k] is None or v > self.peak[k]):
                self.peak[k] = v

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> "_RssSampler":
        if self.start["RssAnon"] is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.start["RssAnon"] is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

    def delta(self, key: str) -> int | None:
        if self.start[key] is None or self.peak[key] is None:
            return None
        return self.peak[key] - self.start[key]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_header(software: str) -> list[tuple[str, str]]:
    """The first lines of every benchmark's report: date, machine, software, command."""
    return [
        ("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"{_cpu_model()}, {_usable_cpus()} usable CPUs (os.cpu_count()="
                    f"{os.cpu_count()}), {platform.platform()}"),
        ("software", f"python {platform.python_version()}, {software}"),
        ("command", "python " + shlex.join(sys.argv)),
    ]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _g(x: float) -> str:
    """Three significant digits, without exponents for the sizes seen here."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}" if x >= 0.001 else f"{x:.2e}"


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_line(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "n/a"
    text = f"1-min load average {start:.2f} at start, {end:.2f} at end"
    # this benchmark itself keeps ~1-2 CPUs busy; a load at the start means other work
    if start > 0.5:
        text += " (other work was running at the start: timings may be noisy)"
    return text


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _dir_bytes(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(folder, name))
    return total


# --- child mode: one operation, peak RSS -------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    """Do exactly one create or export and print its memory use as JSON on stdout."""
    import duckdb  # noqa: F401
    import torch  # noqa: F401
    import zstandard  # noqa: F401

    import tvreg  # noqa: F401 - the imports a real caller pays before the operation

    reg = tvreg.open(args.root)
    base_rss = _maxrss_bytes()
    hwm = _proc_status().get("VmHWM")
    # ru_maxrss survives execve on Linux: a child spawned straight from a big process starts with
    # that process's peak. _run_child goes through a small launcher to avoid it; check anyway.
    inherited = hwm is not None and base_rss > hwm + 16 * MB
    t0 = time.perf_counter()
    with _RssSampler() as sampler:
        if args.child == "create":
            reg.create(NAME, args.base, args.finetuned)
        else:
            reg.export(NAME, args.out)
    seconds = time.perf_counter() - t0
    reg.close()
    print(json.dumps({
        "op": args.child, "seconds": seconds, "inherited_maxrss": inherited,
        "baseline_maxrss": base_rss, "maxrss_delta": _maxrss_bytes() - base_rss,
        "anon_delta": sampler.delta("RssAnon"), "file_delta": sampler.delta("RssFile"),
    }))


# Started from this (big) process, a child would inherit its ru_maxrss (Linux keeps the peak RSS
# across execve); a small launcher process in between gives the child a small starting value.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _run_child(op: str, **paths: str) -> dict:
    cmd = [sys.executable, "-c", _LAUNCHER,
           sys.executable, os.path.abspath(__file__), "--_child", op]
    for key, value in paths.items():
        cmd += [f"--_{key}", value]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {op} failed (rc {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the benchmark -----------------------------------------------------------------------------------


def _build_checkpoints(workdir: str, width: int, pretrain_steps: int, finetune_steps: int,
                       task: str, dtype: str) -> tuple[str, str, float]:
    import torch

    from tvreg.testing import toy

    save_dtype = None if dtype == "float32" else getattr(torch, dtype)

    t0 = time.perf_counter()
    # num_threads=None: use torch's thread setting (all cores) to keep setup short; the
    # checkpoints are still real (Adam steps on real gradients), just not bit-identical across
    # machines with different thread counts, which this benchmark does not need.
    base_model = toy.pretrain(width=width, steps=pretrain_steps, num_threads=None)
    ft_model = toy.finetune(base_model, task, steps=finetune_steps, num_threads=None)
    base = str(toy.save_safetensors(base_model, os.path.join(workdir, "base.safetensors"),
                                    dtype=save_dtype))
    finetuned = str(toy.save_safetensors(ft_model, os.path.join(workdir, f"ft_{task}.safetensors"),
                                         dtype=save_dtype))
    return base, finetuned, time.perf_counter() - t0


def _raw_delta(base: str, finetuned: str):
    """Concatenated fp32 deltas of every floating tensor, in name order, as a numpy uint8 array."""
    import numpy as np
    import torch
    from safetensors import safe_open

    parts = []
    with safe_open(base, "pt") as fb, safe_open(finetuned, "pt") as ff:
        for name in sorted(fb.keys()):
            tb = fb.get_tensor(name)
            if not tb.is_floating_point():
                continue
            d = ff.get_tensor(name).to(torch.float32) - tb.to(torch.float32)
            parts.append(d.contiguous().view(-1).view(torch.uint8).numpy())
    return np.concatenate(parts)


def _bytegroup_zstd(raw, cctx) -> bytes:
    import numpy as np

    streams = np.ascontiguousarray(raw.reshape(-1, 4).T)
    return cctx.compress(streams)


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import zstandard

    import tvreg
    from tvreg.tensors.encoding import default_workers
    from tvreg.testing import toy

    params = toy.param_count(args.width)
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    load_start = _loadavg()
    try:
        print(f"# building checkpoints: width={args.width} ({params:,} parameters), "
              f"pretrain {args.pretrain_steps} + finetune {args.finetune_steps} Adam steps "
              f"on {args.task!r} ...", file=sys.stderr, flush=True)
        base, finetuned, setup_s = _build_checkpoints(workdir, args.width, args.pretrain_steps,
                                                      args.finetune_steps, args.task, args.dtype)

        raw = _raw_delta(base, finetuned)
        raw_bytes = raw.nbytes
        nonzero = float(np.count_nonzero(raw.view(np.float32))) / (raw_bytes // 4)

        # tvreg create / export, each repeat into a fresh registry
        create_s, export_s = [], []
        manifest = None
        objects_bytes = 0
        for i in range(args.repeats):
            root = os.path.join(workdir, f"reg-{i}")
            out = os.path.join(workdir, f"export-{i}.safetensors")
            shutil.rmtree(root, ignore_errors=True)  # a reused --workdir: start fresh anyway
            with tvreg.open(root) as reg:
                t0 = time.perf_counter()
                result = reg.create(NAME, base, finetuned)
                create_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                reg.export(NAME, out)
                export_s.append(time.perf_counter() - t0)
            if manifest is None:
                manifest = result.manifest
                objects_bytes = _dir_bytes(os.path.join(root, "objects"))
                _check_export(out, raw)
            os.unlink(out)
            if i < args.repeats - 1:
                shutil.rmtree(root)
            print(f"# repeat {i + 1}/{args.repeats}: create {create_s[-1]:.3f} s, "
                  f"export {export_s[-1]:.3f} s", file=sys.stderr, flush=True)
        if manifest.raw_bytes != raw_bytes:
            raise SystemExit(f"manifest raw_bytes {manifest.raw_bytes} != fp32 delta bytes {raw_bytes}")
        stored_bytes = manifest.stored_bytes

        # in-process references on the same raw delta bytes
        cctx = zstandard.ZstdCompressor(level=3)
        zstd_s, zstd_len = [], 0
        bgz_s, bgz_len = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            zstd_len = len(cctx.compress(raw))
            zstd_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bgz_len = len(_bytegroup_zstd(raw, cctx))
            bgz_s.append(time.perf_counter() - t0)

        # peak RSS, one fresh child process per operation
        last_root = os.path.join(workdir, f"reg-{args.repeats - 1}")
        shutil.rmtree(os.path.join(workdir, "reg-rss"), ignore_errors=True)
        mem_create = _run_child("create", root=os.path.join(workdir, "reg-rss"), base=base,
                                finetuned=finetuned)
        mem_export = _run_child("export", root=last_root,
                                out=os.path.join(workdir, "export-rss.safetensors"))
        os.unlink(os.path.join(workdir, "export-rss.safetensors"))
        largest = max(t.nbytes for t in manifest.tensors)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    def rss(m: dict, key: str) -> str:
        v = m[f"{key}_delta"]
        if v is None:
            return "n/a"
        return f"{v / MB:.0f}" + ("?" if key == "maxrss" and m["inherited_maxrss"] else "")

    c_med, e_med = _median(create_s), _median(export_s)
    z_med, b_med = _median(zstd_s), _median(bgz_s)
    ratio = raw_bytes / stored_bytes
    z_ratio, b_ratio = raw_bytes / zstd_len, raw_bytes / bgz_len
    raw_mb = raw_bytes / MB

    def runs(xs: list[float]) -> str:
        return " ".join(_g(x) for x in xs)

    header = ("operation", "median s", "MB/s", "ratio", "peak RSS +MB", "anon +MB", "file +MB",
              "runs (s)")
    rows = [
        (f"tvreg create ({manifest.codec_label})", _g(c_med), _g(raw_mb / c_med),
         f"{ratio:.3f}", rss(mem_create, "maxrss"), rss(mem_create, "anon"), rss(mem_create, "file"),
         runs(create_s)),
        ("tvreg export (verify+decode+write)", _g(e_med), _g(raw_mb / e_med), "-",
         rss(mem_export, "maxrss"), rss(mem_export, "anon"), rss(mem_export, "file"),
         runs(export_s)),
        ("zstd-3, one call", _g(z_med), _g(raw_mb / z_med), f"{z_ratio:.3f}",
         "-", "-", "-", runs(zstd_s)),
        ("bytegroup4 + zstd-3, one call", _g(b_med), _g(raw_mb / b_med),
         f"{b_ratio:.3f}", "-", "-", "-", runs(bgz_s)),
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r) -> str:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])]
        return "  ".join(cells + [r[-1]]).rstrip()

    info = run_header(
        f"torch {torch.__version__}, zstandard {zstandard.__version__} (libzstd "
        f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}), numpy {np.__version__}, tvreg encode "
        f"workers {default_workers()}, torch threads {torch.get_num_threads()}") + [
        ("model", f"toy width {args.width}: {params:,} parameters, {args.dtype} checkpoints, "
                  f"{len(manifest.tensors)} floating tensors (largest {_g(largest / MB)} MB), "
                  f"{len(manifest.skipped)} skipped"),
        ("task vector", f"raw fp32 {_g(raw_mb)} MB ({raw_bytes:,} bytes), "
                        f"{100 * nonzero:.1f}% non-zero; tvreg stored {_g(stored_bytes / MB)} MB "
                        f"(objects/ on disk incl. manifest {_g(objects_bytes / MB)} MB)"),
        ("setup", f"checkpoints built in {setup_s:.1f} s; repeats {args.repeats}; "
                  f"whole benchmark {time.perf_counter() - started:.1f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    kw = max(len(k) for k, _ in info)
    print()
    for k, v in info:
        print(f"{k.ljust(kw)}  {v}")
    print()
    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    print()
    print(f"stored ratio tvreg / zstd-3:               {ratio / z_ratio:.3f}x")
    print(f"stored ratio tvreg / bytegroup4 + zstd-3:  {ratio / b_ratio:.3f}x")
    print(f"create throughput tvreg / zstd-3:          {z_med / c_med:.3f}x")
    print(f"largest tensor {_g(largest / MB)} MB; peak RSS over baseline / largest tensor: "
          f"create {mem_create['maxrss_delta'] / largest:.1f}x, "
          f"export {mem_export['maxrss_delta'] / largest:.1f}x; "
          f"whole vector {_g(raw_mb)} MB")
    print()
    print("MB = 10^6 bytes; MB/s = raw fp32 MB / median wall time (checkpoints in the page cache).\n"
          "peak RSS +MB: ru_maxrss of a fresh child process doing only that operation, minus its\n"
          "ru_maxrss right after the imports. anon/file +MB: peak increase of RssAnon (heap) and\n"
          "RssFile (file pages mapped in, e.g. the memory-mapped checkpoints) in that child, sampled\n"
          "every 2 ms. '?' marks a ru_maxrss baseline inherited from the parent (then meaningless).")


def _check_export(path: str, raw) -> None:
    """The exported file holds exactly the fp32 deltas (a correctness check, not timed)."""
    import numpy as np
    import torch
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        got = np.concatenate([f.get_tensor(n).contiguous().view(-1).view(torch.uint8).numpy()
                              for n in sorted(f.keys())])
    if not np.array_equal(got, raw):
        raise SystemExit(f"{path}: exported tensors differ from the task vector")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                   help="toy model width (1600 gives 20.6M parameters; parameters ~ 8*width^2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each operation")
    p.add_argument("--workdir", default=None,
                   help="where checkpoints and registries go; kept afterwards (default: a temp dir, "
                        "removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    p.add_argument("--pretrain-steps", type=int, default=3, help="Adam steps of pre-training")
    p.add_argument("--finetune-steps", type=int, default=3, help="Adam steps of fine-tuning")
    p.add_argument("--task", default="sentiment", help="toy task to fine-tune on")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the saved checkpoints (the task vector is fp32 either way)")
    # internal: child-process mode for peak-RSS measurement
    p.add_argument("--_child", choices=("create", "export"), help=argparse.SUPPRESS)
    for key in ("root", "base", "finetuned", "out"):
        p.add_argument(f"--_{key}", dest=key, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        args.child = args._child
        _child(args)
        return
    if args.repeats < 1 or args.width < 1:
        p.error("--repeats and --width must be positive")
    run(args)


if __name__ == "__main__":
    main()
