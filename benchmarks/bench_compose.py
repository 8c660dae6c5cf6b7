"""Compose k task vectors of a real ~20M-parameter fine-tune and apply them to the base.

tvreg (`reg.apply(expr, base, out)`: streaming, tensor by tensor) against the naive approach of
the paper's reference code (load every checkpoint fully, build each task vector as a dict, sum
the dicts, add to the base, save). Each is timed and measured (peak RSS) in a fresh child
process, in the same run; the results must agree.

    python benchmarks/bench_compose.py [--model deep|toy] [--k 8] [--width 1600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LAM = 0.3


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def naive(work: str, k: int, out: str, device: str) -> None:
    """As the paper's code does: every task vector in memory as a dict, then summed."""
    from safetensors.torch import load_file, save_file

    base = load_file(f"{work}/base.safetensors")
    vectors = []
    for i in range(k):
        ft = load_file(f"{work}/ft{i}.safetensors")
        vectors.append({n: ft[n] - base[n] for n in base if base[n].is_floating_point()})
        del ft
    merged = {n: sum(v[n] for v in vectors) for n in vectors[0]}
    theta = {n: (base[n] + LAM * merged[n]) if n in merged else base[n] for n in base}
    if device == "cpu":
        save_file(theta, out)
    else:  # the model's weights end up on the GPU
        _keep_on_device({n: t.to(device) for n, t in theta.items()}, device, out)


def streaming(work: str, k: int, out: str, device: str) -> None:
    import tvreg

    reg = tvreg.open(f"{work}/registry")
    expr = f"{LAM}*(" + " + ".join(f"t{i}" for i in range(k)) + ")"
    if device == "cpu":
        reg.apply(expr, f"{work}/base.safetensors", out)
    else:  # the base on the GPU, θ += merged in place: pinned, non_blocking copies
        from safetensors.torch import load_file

        theta = load_file(f"{work}/base.safetensors", device=device)
        reg.resolve(expr).apply_to(theta)
        _keep_on_device(theta, device, out)


def _keep_on_device(theta: dict, device: str, out: str) -> None:
    import torch

    torch.cuda.synchronize(device)
    _keep_on_device.result = (theta, out)  # saved after the clock stops (see child)


def child(op: str, work: str, k: int, out: str, device: str) -> None:
    import safetensors.torch  # noqa: F401
    import torch  # (imports are not part of the measurement)

    import tvreg  # noqa: F401

    if device != "cpu":
        torch.zeros(1, device=device)  # CUDA context creation is not part of it either
    before = _maxrss()
    t0 = time.perf_counter()
    {"naive": naive, "tvreg": streaming}[op](work, k, out, device)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "peak_rss": _maxrss() - before}
    if device != "cpu":
        from safetensors.torch import save_file

        theta, path = _keep_on_device.result
        result["gpu_peak"] = torch.cuda.max_memory_allocated(device)
        save_file({n: t.cpu() for n, t in theta.items()}, path)
    print(json.dumps(result))


def run_child(op: str, work: str, k: int, out: str, device: str = "cpu") -> dict:
    # a small launcher in between: Linux keeps ru_maxrss across execve, so a child started
    # straight from this (big) process would start at its peak
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    cmd = [sys.executable, "-c", launcher, sys.executable, __file__, "--child", op,
           "--workdir", work, "--k", str(k), "--out", out, "--device", device]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _deep_mlp(width: int, depth: int):
    """A stack of ``depth`` residual Linear+LayerNorm blocks: many mid-size tensors, like the
    layers of a transformer (unlike the toy classifier, whose two MLP matrices are the model)."""
    import torch
    from torch import nn

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
                                        for _ in range(depth))
            self.head = nn.Linear(width, 1)

        def forward(self, x):
            for block in self.blocks:
                x = x + torch.tanh(block(x))
            return self.head(x).squeeze(-1)

    return Deep()


def _train(model, task: int, steps: int, lr: float) -> None:
    """Real Adam steps on a synthetic regression task ``task``."""
    import torch

    g = torch.Generator().manual_seed(1000 + task)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    width = model.blocks[0][1].in_features
    for _ in range(steps):
        x = torch.randn(256, width, generator=g)
        y = torch.sin(x[:, task % width] * (task + 1))
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def build(work: str, k: int, width: int, model: str) -> int:
    import copy

    import torch
    from safetensors.torch import save_file

    import tvreg
    from tvreg.testing import TASKS, finetune, param_count, pretrain, save_safetensors

    reg = tvreg.open(f"{work}/registry")
    if model == "toy":
        base = pretrain(width=width, steps=2, num_threads=None)
        save_safetensors(base, f"{work}/base.safetensors")
    else:
        torch.manual_seed(0)
        base = _deep_mlp(1024, 20)
        _train(base, 0, 2, 1e-3)
        save_file({n: t.contiguous() for n, t in base.state_dict().items()},
                  f"{work}/base.safetensors")
    for i in range(k):
        if model == "toy":
            ft = finetune(base, TASKS[i % len(TASKS)], steps=1, lr=1e-3, seed=i, num_threads=None)
            save_safetensors(ft, f"{work}/ft{i}.safetensors")
        else:
            ft = copy.deepcopy(base)
            _train(ft, i + 1, 2, 1e-4)
            save_file({n: t.contiguous() for n, t in ft.state_dict().items()},
                      f"{work}/ft{i}.safetensors")
        reg.create(f"t{i}", f"{work}/base.safetensors", f"{work}/ft{i}.safetensors")
        del ft
    torch.set_num_threads(os.cpu_count() or 1)
    if model == "toy":
        return param_count(width)
    return sum(p.numel() for p in base.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8, help="number of task vectors")
    ap.add_argument("--model", choices=["deep", "toy"], default="deep",
                    help="deep: 20 residual 1024-wide blocks (21M params in 41 mid-size tensors); "
                         "toy: tvreg.testing's classifier, whose two MLP matrices are the model")
    ap.add_argument("--width", type=int, default=1600, help="toy width (1600: 20.6M params)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu",
                    help="cpu: write θ to a safetensors file; cuda: leave θ on the GPU (tvreg: "
                         "base loaded there, merged added in place with apply_to)")
    ap.add_argument("--workdir")
    ap.add_argument("--child", choices=["naive", "tvreg"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workdir, args.k, args.out, args.device)
        return
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-compose-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        params = build(work, args.k, args.width, args.model)
        setup = time.perf_counter() - t0
        model_mb = os.path.getsize(f"{work}/base.safetensors") / 1e6
        results: dict[str, list[dict]] = {"naive": [], "tvreg": []}
        for _ in range(args.repeats):  # interleaved, so drift of a shared machine hits both alike
            for op in results:
                results[op].append(run_child(op, work, args.k, f"{work}/{op}.safetensors",
                                             args.device))
        import torch
        from safetensors.torch import load_file

        a, b = load_file(f"{work}/naive.safetensors"), load_file(f"{work}/tvreg.safetensors")
        worst = max(float((a[n].double() - b[n].double()).abs().max()) for n in a)
        assert set(a) == set(b) and worst < 1e-5, worst

        print(f"date     {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
        print(f"machine  {os.cpu_count()} CPUs, {platform.platform()}")
        print(f"software python {platform.python_version()}, torch {torch.__version__}")
        print(f"command  python benchmarks/bench_compose.py --model {args.model} --k {args.k} "
              f"--width {args.width} --repeats {args.repeats} --device {args.device}")
        if args.device != "cpu":
            print(f"device   {torch.cuda.get_device_name(args.device)}")
        print(f"workload {args.k} task vectors of {params:,} params (one model: {model_mb:.1f} MB "
              f"fp32), applied as {LAM}*(t0 + … + t{args.k - 1}) to the base; setup {setup:.0f} s")
        print(f"results agree: max |naive - tvreg| = {worst:.2e}\n")
        gpu = args.device != "cpu"
        print(f"{'approach':<34}{'median s':>9}{'peak RSS MB':>13}{'× model':>9}"
              + (f"{'GPU peak MB':>13}" if gpu else "") + "   runs (s)")
        rows = {}
        for op, label in (("naive", "naive (dicts of full state dicts)"),
                          ("tvreg", "tvreg apply_to (GPU, streaming)" if gpu
                           else "tvreg apply (streaming)")):
            secs = [r["seconds"] for r in results[op]]
            peak = max(r["peak_rss"] for r in results[op]) / 1e6
            rows[op] = (statistics.median(secs), peak)
            gpu_peak = (f"{max(r['gpu_peak'] for r in results[op]) / 1e6:>13.0f}" if gpu else "")
            print(f"{label:<34}{rows[op][0]:>9.2f}{peak:>13.0f}{peak / model_mb:>9.2f}{gpu_peak}   "
                  + " ".join(f"{s:.2f}" for s in secs))
        print(f"\nspeed-up tvreg vs naive: {rows['naive'][0] / rows['tvreg'][0]:.2f}x; "
              f"peak RSS ratio naive / tvreg: {rows['naive'][1] / rows['tvreg'][1]:.2f}x")
        print("peak RSS: ru_maxrss of a fresh child doing only that operation, minus its value "
              "right after the imports")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
