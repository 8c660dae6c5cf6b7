"""Spectral merges (TSV-M, Iso-C, Iso-CTS): tvreg against fusion_bench 0.2.33 on real vectors.

Three full fine-tunes of the real all-MiniLM-L6-v2 (the `examples` extra; a few AdamW steps
each on random tokens, every parameter trained; built by bench_interop.py's builder) give three
task vectors of 22.7M parameters. Each method runs, in this one process, alternately:

* fusion_bench's own function (``TSVM_utils.compute_and_sum_svd_mem_reduction``,
  ``iso_utils.iso_c``, ``iso_utils.iso_cts``) on the task vectors as plain state dicts already
  in memory (its cost is the merge alone), and once more with the base and fine-tuned
  checkpoints read from their safetensors folders and subtracted first (its end to end, what
  tvreg's from-the-store row compares with);
* tvreg's ``merge_tensor`` on the same in-memory tensors (the same work);
* with ``--concurrent``, the same, two names at a time (tried: slower, not used);
* tvreg end to end: ``reg.resolve(...).state_dict()`` from the stored vectors (decoding and
  verifying them included).

Wall time (median of ``--repeats``), the largest relative error per tensor against
fusion_bench's result (over the well-posed tensors, and over all), and the peak RSS of each
run in a fresh child (``--rss``, measured first, while this process is small) are printed as a
table with ratios against fusion_bench's time.

    python benchmarks/bench_merge_methods.py [--repeats 3] [--workdir DIR] [--rss]
        [--methods iso_c,tsv,iso_cts] [--concurrent]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("iso_c", "tsv", "iso_cts")


def _vectors(work: str) -> list[dict]:
    sys.path.insert(0, HERE)
    from bench_interop import _read as read  # a folder's safetensors files as one dict

    base = read(os.path.join(work, "base"))
    out = []
    for k in range(3):
        ft = read(os.path.join(work, f"ft{k}"))
        out.append({n: ft[n] - t for n, t in base.items() if t.is_floating_point()})
    return out


def _fusion(method: str, vectors: list[dict]) -> dict:
    from fusion_bench.method.isotropic_merging import iso_utils
    from fusion_bench.method.task_singular_vector.utils import TSVM_utils

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per tensor
        if method == "tsv":
            return TSVM_utils.compute_and_sum_svd_mem_reduction(vectors, accelerator="cpu")
        if method == "iso_c":
            return iso_utils.iso_c(vectors, accelerator="cpu")
        return iso_utils.iso_cts(vectors, common_space_fraction=0.8, accelerator="cpu")


def _tvreg_kernel(method: str, vectors: list[dict]) -> dict:
    from tvreg.compose.merge import MergeParams, merge_tensor

    params = MergeParams(method)
    return {n: merge_tensor(params, [v[n] for v in vectors], [1.0] * len(vectors), name=n)
            for n in vectors[0]}


def _tvreg_kernel_concurrent(method: str, vectors: list[dict]) -> dict:
    """As :func:`_tvreg_kernel`, two names' SVDs at a time: the same results bit for bit, but
    measured 2.5x slower on a quiet 2-core machine (MKL's threads of two SVDs fight over the
    cores; with one thread each it is no better), so compositions merge one name at a time.
    Kept as the measurement behind that choice."""
    from concurrent.futures import ThreadPoolExecutor

    from tvreg.compose.merge import MergeParams, merge_tensor

    params = MergeParams(method)
    names = list(vectors[0])
    with ThreadPoolExecutor(2) as pool:
        merged = pool.map(lambda n: merge_tensor(params, [v[n] for v in vectors],
                                                 [1.0] * len(vectors), name=n), names)
        return dict(zip(names, merged, strict=True))


def _tvreg_e2e(method: str, registry: str) -> dict:
    import tvreg

    reg = tvreg.open(registry)
    return reg.resolve("ft0 + ft1 + ft2", method=method).state_dict()


def _rel(ours: dict, theirs: dict, names: set[str] | None = None) -> float:
    """The largest relative error per tensor (over ``names`` when given)."""
    worst = 0.0
    for n, t in theirs.items():
        if names is None or n in names:
            norm = float(t.double().norm()) or 1.0
            worst = max(worst, float((ours[n].double() - t.double()).norm()) / norm)
    return worst


def _well_posed(vectors: list[dict]) -> set[str]:
    """Tensors whose every task matrix is numerically full rank (smallest singular value above
    1e-3 of the largest), and 1-D tensors. Iso-C/Iso-CTS give every kept direction the same
    weight: where a task matrix lacks directions (here the position embeddings beyond the 32
    trained positions, changed only by weight decay) the result is rounding noise in any
    implementation (docs/composition.md)."""
    import torch

    out = set()
    for n in vectors[0]:
        if vectors[0][n].dim() != 2:
            out.add(n)
            continue
        if all(float((s := torch.linalg.svdvals(v[n].double()))[-1]) > 1e-3 * float(s[0])
               for v in vectors):
            out.add(n)
    return out


def _child(args: list[str]) -> int | None:
    """Peak RSS (bytes) of this script run with ``args`` in a fresh child (None: it failed)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    return usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--rss", action="store_true", help="also peak RSS, one child per run")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated, of " + ", ".join(METHODS))
    ap.add_argument("--concurrent", action="store_true",
                    help="also merge_tensor two names at a time (tried, slower, not used)")
    ap.add_argument("--one", nargs=2, metavar=("TOOL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        ap.error(f"--methods: some of {', '.join(METHODS)}")
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-methods-")
    registry = os.path.join(work, "registry")
    if args.one:  # a child of --rss: one run, then exit
        tool, method = args.one
        if tool == "e2e":
            _tvreg_e2e(method, registry)
        else:
            {"fusion": _fusion, "fusion_e2e": _fusion, "kernel": _tvreg_kernel,
             "kernel2": _tvreg_kernel_concurrent}[tool](method, _vectors(work))
        return
    if not os.path.isdir(os.path.join(work, "ft2")):
        subprocess.run([sys.executable, os.path.join(HERE, "bench_interop.py"), "--build-only",
                        "--workdir", work], check=True, capture_output=True)
    if not os.path.isdir(registry):
        tv = [os.path.join(os.path.dirname(sys.executable), "tvreg"), "--registry", registry]
        for k in range(3):
            subprocess.run([*tv, "create", f"ft{k}", "--base", os.path.join(work, "base"),
                            "--finetuned", os.path.join(work, f"ft{k}"), "--no-similarities"],
                           check=True, capture_output=True)
    tools = ["fusion", "fusion_e2e", "kernel", *(["kernel2"] if args.concurrent else []), "e2e"]
    rss: dict[tuple[str, str], float | None] = {}
    if args.rss:  # first, while this process is small (a child's ru_maxrss starts from ours)
        for method in methods:
            for tool in tools:
                peak = _child(["--workdir", work, "--one", tool, method])
                rss[tool, method] = peak / 1e6 if peak is not None else None
    import torch

    vectors = _vectors(work)
    posed = _well_posed(vectors)
    rows = []
    failed: dict[tuple[str, str], str] = {}
    for method in methods:
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for tool in times:  # interleaved: the same machine state for all
                t0 = time.perf_counter()
                try:
                    out = (_fusion(method, vectors) if tool == "fusion" else
                           _fusion(method, _vectors(work)) if tool == "fusion_e2e" else
                           _tvreg_kernel(method, vectors) if tool == "kernel" else
                           _tvreg_kernel_concurrent(method, vectors) if tool == "kernel2" else
                           _tvreg_e2e(method, registry))
                except Exception as e:  # e.g. an SVD that does not converge (LAPACK)
                    failed[tool, method] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    continue
                times[tool].append(time.perf_counter() - t0)
                results[tool] = out
        base_t = statistics.median(times["fusion"]) if times["fusion"] else float("nan")
        for tool, label in (("fusion", "fusion_bench 0.2.33 (in memory)"),
                            ("fusion_e2e", "fusion_bench, checkpoints read and subtracted first"),
                            ("kernel", "tvreg merge_tensor (in memory)"),
                            ("kernel2", "tvreg merge_tensor, 2 names at once (tried, not used)"),
                            ("e2e", "tvreg resolve().state_dict() (from the store)")):
            if tool not in times:
                continue
            if not times[tool]:
                rows.append((method, label + " — failed: " + failed[tool, method],
                             float("nan"), float("nan"), None, (float("nan"),) * 2))
                continue
            t = statistics.median(times[tool])
            err = (0.0, 0.0) if tool in ("fusion", "fusion_e2e") else (float("nan"),) * 2 \
                if "fusion" not in results else (
                _rel(results[tool], results["fusion"], posed),
                _rel(results[tool], results["fusion"]))
            rows.append((method, label, t, t / base_t, rss.get((tool, method)), err))
    print(f"\n3 full fine-tunes of all-MiniLM-L6-v2 (22.7M parameters, fp32); medians of "
          f"{args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{len(posed)} of {len(vectors[0])} tensors well posed (_well_posed)\n")
    print("| method | tool | wall s | × fusion_bench | peak RSS MB | max rel. error per tensor, "
          "well posed | all tensors |")
    print("|---|---|---|---|---|---|---|")
    for method, label, t, r, mb, (err, err_all) in rows:
        rss_s = f"{mb:.0f}" if mb is not None else "–"
        print(f"| {method} | {label} | {t:.2f} | {r:.2f} | {rss_s} | {err:.1e} | {err_all:.1e} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
