#!/usr/bin/env python3
"""Codecs on real fine-tuned deltas: tvreg's lossless pipelines against zstd-3 and ZipNN.

Builds a real base and fine-tune (``tvreg.testing.toy``, as ``bench_core.py`` does), takes every
floating tensor's delta in the dtype tvreg stores it (fp32 for fp32/fp16/bf16 checkpoints), and
for each codec encodes and decodes every tensor on one thread, in the same process, on the same
bytes. Reported: stored ratio (raw bytes / encoded bytes), encode and decode MB/s (raw bytes /
the fastest of ``--repeats`` timed runs: the run least disturbed by other work on the machine,
the same rule for every codec), and that every round trip is bit-exact.

- tvreg pipelines are run the way the registry runs them: 64 MiB item-aligned chunks, encoded
  with ``CodecPipeline.encode``, decoded with ``CodecPipeline.decode_into`` into a reused
  buffer (the read path of ``TaskVector`` and compositions). ``bgzstd (chosen)`` is what
  ``create`` writes: ``choose_pipeline`` per tensor, whose time counts as encoding time.
- ``zstd-3``: one ``ZstdCompressor(level=3)`` call per tensor, ``decompress`` back.
- ZipNN (``pip install zipnn``, optional): ``ZipNN(method=…, input_format="torch",
  threads=1)`` per tensor. ZipNN 0.5.4 reorders the bytes of its input tensor in place, so every
  compress gets a fresh copy (the copy is not timed).

Sizes in MB = 10**6 bytes. The first table is single-threaded: one core's work. The second
decodes (and encodes) with ``--threads`` threads (default: every usable CPU): tvreg's ``bgzstd``
spreads the blocks of one chunk over a thread pool (as ``decode_tensor`` does with the
registry's pool), ZipNN gets ``threads=T``; both over all tensors, and for the largest tensor
alone (one chunk: the old pipelines can use only one thread for it).

    python benchmarks/bench_codecs.py                      # 20.6M params, fp32 checkpoints
    python benchmarks/bench_codecs.py --dtype bfloat16     # bf16 checkpoints (fp32 deltas)
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import (  # noqa: E402
    DEFAULT_WIDTH,
    _build_checkpoints,
    _g,
    _load_line,
    _loadavg,
    _usable_cpus,
    run_header,
)

MB = 1_000_000


def _deltas(base: str, finetuned: str) -> list:
    """(name, fp32 delta tensor) of every floating tensor, in name order."""
    import torch
    from safetensors import safe_open

    out = []
    with safe_open(base, "pt") as fb, safe_open(finetuned, "pt") as ff:
        for name in sorted(fb.keys()):
            tb = fb.get_tensor(name)
            if tb.is_floating_point():
                out.append((name, (ff.get_tensor(name).to(torch.float32)
                                   - tb.to(torch.float32)).contiguous()))
    return out


def _pairs(base: str, finetuned: str) -> list:
    """(name, fine-tuned tensor, base tensor) of every floating tensor, in name order, in the
    checkpoints' dtype: what exact mode encodes."""
    from safetensors import safe_open

    out = []
    with safe_open(base, "pt") as fb, safe_open(finetuned, "pt") as ff:
        for name in sorted(fb.keys()):
            tb = fb.get_tensor(name)
            if tb.is_floating_point():
                out.append((name, ff.get_tensor(name).contiguous(), tb.contiguous()))
    return out


def _exact_case(pairs, repeats: int) -> dict:
    """Exact mode (``create --exact``): the bit differences chosen and encoded like any tensor
    (``bitdiff`` + ``bgzstd``); decoding rebuilds the float delta from them and the base, which
    is what reading an exact vector costs. Checked: the fine-tuned bits come back exactly and
    the delta equals ft − base; also counted: values where base + delta in floating point is not
    the fine-tuned value."""
    import numpy as np
    import torch

    from tvreg.codecs import CodecPipeline
    from tvreg.tensors.build import exact_payload, exact_pipeline

    work = torch.float32
    deltas = [(ft.to(work) - tb.to(work)).contiguous() for _, ft, tb in pairs]
    bases = [tb.view(-1).view(torch.uint8).numpy() for _, _, tb in pairs]
    pipelines: list = []
    encoded: list[bytes] = []

    def encode() -> None:
        pipelines.clear()
        encoded.clear()
        for (_, ft, tb) in pairs:
            payload = exact_payload(str(ft.dtype).removeprefix("torch."), ft, tb)
            pipe = exact_pipeline(str(ft.dtype).removeprefix("torch."), "0" * 64, payload)
            pipelines.append(pipe)
            encoded.append(CodecPipeline(pipe.codecs[1:]).encode(memoryview(payload)))

    t_enc = _best_time(encode, repeats)
    outs = [np.empty(d.numel() * 4, dtype=np.uint8) for d in deltas]

    def decode() -> None:
        for pipe, blob, b, out in zip(pipelines, encoded, bases, outs):
            diff = CodecPipeline(pipe.codecs[1:]).decode(blob, b.size)
            pipe.codecs[0].delta_into(diff, b, out)

    t_dec = _best_time(decode, repeats)
    off = 0
    for (name, ft, tb), pipe, blob, b, out, d in zip(pairs, pipelines, encoded, bases, outs,
                                                      deltas):
        diff = CodecPipeline(pipe.codecs[1:]).decode(blob, b.size)
        back = pipe.codecs[0].restore(diff, b)
        if not np.array_equal(back, ft.view(-1).view(torch.uint8).numpy()) \
                or not np.array_equal(out, d.view(-1).view(torch.uint8).numpy()):
            raise SystemExit(f"exact mode: {name} does not round-trip")
        off += int(((tb.to(work) + d).to(ft.dtype).view(-1).view(torch.uint8).numpy()
                    .reshape(-1, ft.element_size())
                    != ft.view(-1).view(torch.uint8).numpy().reshape(-1, ft.element_size()))
                   .any(axis=1).sum())
    return {"codec": "tvreg exact mode (bitdiff + bgzstd)", "stored": sum(map(len, encoded)),
            "enc": t_enc, "dec": t_dec, "raw": sum(d.numel() * 4 for d in deltas),
            "off": off, "n": sum(d.numel() for d in deltas)}


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _tvreg_case(label: str, pipeline, tensors, repeats: int, pool=None) -> dict:
    """``pipeline``: a CodecPipeline, or None for the per-tensor choice (``choose_pipeline``,
    timed as part of encoding); ``pool``: threads that help with each chunk's blocks."""
    import numpy as np

    from tvreg.codecs import choose_pipeline
    from tvreg.tensors.encoding import DEFAULT_CHUNK_BYTES

    raws = [t.view(-1).view(dtype=__import__("torch").uint8).numpy() for _, t in tensors]
    step = DEFAULT_CHUNK_BYTES // 4 * 4
    chunks = [(i, r[o:o + step]) for i, r in enumerate(raws) for o in range(0, r.size, step)]
    pipelines: list = [pipeline] * len(raws)
    encoded: list[bytes] = []

    def encode() -> None:
        if pipeline is None:
            pipelines[:] = [choose_pipeline(r, 4) for r in raws]
        encoded[:] = [pipelines[i].encode(memoryview(c), pool) for i, c in chunks]

    t_enc = _best_time(encode, repeats)
    dest = np.empty(max(c.size for _, c in chunks), dtype=np.uint8)

    def decode() -> None:
        for blob, (i, c) in zip(encoded, chunks):
            pipelines[i].decode_into(blob, dest[:c.size], pool)

    t_dec = _best_time(decode, repeats)
    for blob, (i, c) in zip(encoded, chunks):  # bit-exact
        dest[:c.size] = 0
        pipelines[i].decode_into(blob, dest[:c.size], pool)
        if not np.array_equal(dest[:c.size], c):
            raise SystemExit(f"{label}: round trip differs")
    return {"codec": label, "stored": sum(map(len, encoded)), "enc": t_enc, "dec": t_dec,
            "raw": sum(r.size for r in raws),
            "labels": [p.label for p in pipelines]}


def _zstd_case(tensors, repeats: int) -> dict:
    import zstandard

    raws = [t.view(-1).numpy().tobytes() for _, t in tensors]
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    encoded: list[bytes] = []

    def encode() -> None:
        encoded[:] = [cctx.compress(r) for r in raws]

    t_enc = _best_time(encode, repeats)
    t_dec = _best_time(lambda: [dctx.decompress(b) for b in encoded], repeats)
    if [dctx.decompress(b) for b in encoded] != raws:
        raise SystemExit("zstd-3: round trip differs")
    return {"codec": "zstd-3 (whole tensor)", "stored": sum(map(len, encoded)), "enc": t_enc,
            "dec": t_dec}


def _zipnn_case(method: str, tensors, repeats: int, threads: int = 1) -> dict | None:
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    import torch

    z = ZipNN(method=method, input_format="torch", threads=threads)
    encoded: list[bytes] = []
    enc_times = []
    for _ in range(repeats):
        copies = [t.clone() for _, t in tensors]  # ZipNN reorders its input's bytes in place
        t0 = time.perf_counter()
        encoded[:] = [z.compress(c) for c in copies]
        enc_times.append(time.perf_counter() - t0)
    t_dec = _best_time(lambda: [z.decompress(b) for b in encoded], repeats)
    for blob, (_, t) in zip(encoded, tensors):
        back = z.decompress(blob)
        if not torch.equal(back.reshape(t.shape).view(torch.int32), t.view(torch.int32)):
            raise SystemExit(f"zipnn {method}: round trip differs")
    return {"codec": f"ZipNN {method} (threads={threads})", "stored": sum(map(len, encoded)),
            "enc": min(enc_times), "dec": t_dec,
            "raw": sum(t.numel() * 4 for _, t in tensors)}


def _table(rows: list[dict], raw_key: bool = False) -> None:
    header = ("codec", "ratio", "encode MB/s", "decode MB/s", "bit-exact")
    body = [(r["codec"], f"{r['raw'] / r['stored']:.3f}", f"{r['raw'] / r['enc'] / MB:.0f}",
             f"{r['raw'] / r['dec'] / MB:.0f}", "yes") for r in rows]
    widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
    for r in [header] + body:
        print("  ".join([str(r[0]).ljust(widths[0])]
                        + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]))


def run(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tvreg.codecs import ByteGroup, CodecPipeline, Zstd

    torch.set_num_threads(1)
    threads = args.threads or _usable_cpus()
    started, load_start = time.perf_counter(), _loadavg()
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-codecs-")
    os.makedirs(work, exist_ok=True)
    try:
        base, finetuned, setup = _build_checkpoints(work, args.width, args.pretrain_steps,
                                                    args.finetune_steps, args.task, args.dtype)
        tensors = _deltas(base, finetuned)
        pairs = _pairs(base, finetuned)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    raw = sum(t.numel() * 4 for _, t in tensors)
    zeros = sum(int((t == 0).sum()) for _, t in tensors) / (raw / 4)
    ours = _tvreg_case("tvreg bgzstd, chosen per tensor (default)", None, tensors, args.repeats)
    rows = [
        ours,
        _tvreg_case("tvreg bytegroup4+zstd3 (tvreg 0.1.0)",
                    CodecPipeline((ByteGroup(4), Zstd(3))), tensors, args.repeats),
        _tvreg_case("tvreg bytegroup4+zstd1", CodecPipeline((ByteGroup(4), Zstd(1))), tensors,
                    args.repeats),
        _zstd_case(tensors, args.repeats),
    ]
    missing_zipnn = False
    for method in ("huffman", "zstd"):
        row = _zipnn_case(method, tensors, args.repeats)
        if row is None:
            missing_zipnn = True
            break
        rows.append(row)
    rows[3]["raw"] = raw
    exact = _exact_case(pairs, args.repeats)
    rows.insert(1, exact)

    # several threads: all tensors, then the largest tensor alone (one chunk)
    largest = [max(tensors, key=lambda nt: nt[1].numel())]
    parallel = []
    with ThreadPoolExecutor(max(1, threads - 1)) as pool:  # + the calling thread: T threads
        for what, subset in (("all tensors", tensors), (f"{largest[0][0]} alone", largest)):
            row = _tvreg_case(f"tvreg bgzstd, {what}", None, subset, args.repeats, pool)
            parallel.append(row)
            if threads > 1 and subset is largest:
                one = _tvreg_case(f"tvreg bgzstd, {what}, 1 thread", None, subset, args.repeats)
                parallel.append(one)
            if not missing_zipnn:
                z = _zipnn_case("zstd", subset, args.repeats, threads)
                z["codec"] = f"ZipNN zstd (threads={threads}), {what}"
                parallel.append(z)

    import zstandard

    info = run_header(f"torch {torch.__version__}, zstandard {zstandard.__version__}"
                      + ("" if missing_zipnn else
                         f", zipnn {__import__('importlib.metadata').metadata.version('zipnn')}"))
    info += [
        ("deltas", f"toy width {args.width}, {args.dtype} checkpoints, {len(tensors)} floating "
                   f"tensors, {_g(raw / MB)} MB fp32, {100 * zeros:.1f}% exact zeros; "
                   f"built in {setup:.0f} s"),
        ("setup", f"repeats {args.repeats}; one thread, then {threads} threads; whole "
                  f"benchmark {time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
        ("chosen", ", ".join(f"{n} x {label}" for label, n in
                             sorted(collections.Counter(ours["labels"]).items()))),
    ]
    for key, value in info:
        print(f"{key:<9} {value}")
    print("\none thread:\n")
    _table(rows)
    print(f"\nexact mode: base + delta in floating point differs from the fine-tuned value in "
          f"{exact['off']:,} of {exact['n']:,} values ({100 * exact['off'] / exact['n']:.3f}%); "
          "exact mode rebuilds all of them bit for bit")
    if missing_zipnn:
        print("\nZipNN not installed (pip install zipnn): its rows are missing")
    for r in rows[1:]:
        if r["codec"].startswith("ZipNN") or "0.1.0" in r["codec"]:
            print(f"\ntvreg bgzstd vs {r['codec']}: ratio {r['stored'] / ours['stored']:.2f}x "
                  f"its ratio, decode {r['dec'] / ours['dec']:.2f}x its speed, encode "
                  f"{r['enc'] / ours['enc']:.2f}x its speed")
    print(f"\n{threads} threads (tvreg: the calling thread and a pool of {max(1, threads - 1)}; "
          f"ZipNN: threads={threads}):\n")
    _table(parallel)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                   help=f"toy model width (default {DEFAULT_WIDTH}: 20.6M parameters)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each codec (the fastest counts)")
    p.add_argument("--pretrain-steps", type=int, default=3)
    p.add_argument("--finetune-steps", type=int, default=3)
    p.add_argument("--task", default="sentiment")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the second table (default: every usable CPU)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
