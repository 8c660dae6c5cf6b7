#!/usr/bin/env python3
"""GPU check: task vectors and compositions delivered to a CUDA device, against plain copies.

Builds the compose benchmark's model (20 residual 1024-wide blocks, 21M parameters, 84 MB fp32;
``--model toy`` for tvreg.testing's classifier) and ``--k`` task vectors of it in a registry,
then times, in one process, each delivering the same bytes to ``--device`` (default ``cuda``
when available, else ``cpu``):

- ``plain .to(device)``: the baseline the issue names: a vector's delta tensors, already
  decoded in ordinary (pageable) host memory, copied with ``tensor.to(device)``;
- ``pinned .to(device, non_blocking)``: the same from pinned host memory (the bus's ceiling);
- ``vector.state_dict(device)``: one stored vector read, verified, decoded and copied;
- ``composition.state_dict(device)``: the task-arithmetic sum of the k vectors, on the device;
- ``composition.apply_to(module)``: θ += merged, in place, on a module already on the device.

GB/s is bytes delivered (fp32 tensors of one model) over the median wall time, with the device
synchronised before the clock stops; "vs plain" divides the baseline's time by the row's. Every
result is checked against the host computation. On a machine without CUDA the same script runs
on the CPU (the baseline then is a plain host copy, ``tensor.clone()``), so it is exercised in
CI; its GPU figures come from a run on a GPU machine.

    python benchmarks/bench_gpu.py [--device cuda] [--k 8] [--repeats 7] [--model deep|toy]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_compose import LAM, build  # noqa: E402

GB = 1e9


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        del out
    return times


def _machine(device) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    line = f"{cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        line += f", {p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return line


def run(args: argparse.Namespace) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    import tvreg

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda, but torch sees no CUDA device")
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-gpu-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        params = build(work, args.k, args.width, args.model)
        setup = time.perf_counter() - t0
        torch.set_num_threads(os.cpu_count() or 1)
        reg = tvreg.open(f"{work}/registry")
        vec = reg.get("t0")
        host = vec.state_dict()  # decoded, pageable
        nbytes = sum(t.numel() * t.element_size() for t in host.values())
        expr = f"{LAM}*(" + " + ".join(f"t{i}" for i in range(args.k)) + ")"
        comp = reg.resolve(expr)
        want = comp.state_dict()  # the host result every device result must equal

        copy = (lambda: {n: t.to(device) for n, t in host.items()}) if device.type == "cuda" \
            else (lambda: {n: t.clone() for n, t in host.items()})
        rows = [("plain .to(device)" if device.type == "cuda" else "plain host copy (clone)",
                 copy)]
        if device.type == "cuda":
            pinned = {n: t.pin_memory() for n, t in host.items()}
            rows.append(("pinned .to(device, non_blocking)",
                         lambda: {n: t.to(device, non_blocking=True) for n, t in pinned.items()}))
        rows.append(("vector.state_dict(device)", lambda: vec.state_dict(device=device)))
        rows.append((f"composition of {args.k}: state_dict(device)",
                     lambda: comp.state_dict(device=device)))
        base = {n: t.to(device) for n, t in load_file(f"{work}/base.safetensors").items()}
        model = _module(base)

        def apply() -> None:
            comp.apply_to(model)

        rows.append((f"composition of {args.k}: apply_to(module on device)", apply))

        # correctness first (once), then the timings
        got = vec.state_dict(device=device)
        assert all(torch.equal(got[n].cpu(), host[n]) for n in host), "vector differs"
        got = comp.state_dict(device=device)
        assert all(torch.equal(got[n].cpu(), want[n]) for n in want), "composition differs"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        apply()
        for n, p in model.named_parameters():
            if n in want:
                assert torch.allclose(p.cpu(), before[n].cpu() + want[n], atol=1e-6), n
        del got, before
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = []
        for label, fn in rows:
            times = _timed(fn, device, args.repeats)
            results.append({"label": label, "median": statistics.median(times), "times": times})
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    baseline = results[0]["median"]
    print(f"date      {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine   {_machine(device)}")
    print(f"command   python benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"model     {args.model}, {params:,} params, {nbytes / 2**20:.1f} MiB fp32 per vector; "
          f"{args.k} vectors built in {setup:.0f} s")
    print(f"device    {device}; {args.repeats} repeats, median")
    print()
    header = ("operation", "median s", "GB/s", "vs plain", "runs (s)")
    body = [(r["label"], f"{r['median']:.4f}", f"{nbytes / r['median'] / GB:.2f}",
             f"{baseline / r['median']:.2f}x", " ".join(f"{t:.3f}" for t in r["times"]))
            for r in results]
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    for line in [header] + body:
        print("  ".join([line[0].ljust(widths[0])]
                        + [c.rjust(w) for c, w in zip(line[1:-1], widths[1:-1])] + [line[-1]]))
    if peak is not None:
        print(f"\nGPU peak memory during the timings: {peak:.0f} MiB "
              f"(model {nbytes / 2**20:.0f} MiB)")
    print("\nresults agree with the host computation (bit for bit; apply_to within 1e-6)")
    return results


def _module(state: dict):
    """A module whose parameters are ``state``'s tensors (the base, on the device)."""
    import torch

    module = torch.nn.Module()
    for name, t in state.items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
    return module


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--k", type=int, default=8, help="number of task vectors")
    ap.add_argument("--model", choices=["deep", "toy"], default="deep")
    ap.add_argument("--width", type=int, default=1600, help="toy width")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
