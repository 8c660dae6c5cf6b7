#!/usr/bin/env python3
"""Codecs on real fine-tuned deltas: tvreg's lossless pipelines against zstd-3 and ZipNN.

Builds a real base and fine-tune (``tvreg.testing.toy``, as ``bench_core.py`` does), takes every
floating tensor's delta in the dtype tvreg stores it (fp32 for fp32/fp16/bf16 checkpoints), and
for each codec encodes and decodes every tensor on one thread, in the same process, on the same
bytes. Reported: stored ratio (raw bytes / encoded bytes), encode and decode MB/s (raw bytes /
median wall time over ``--repeats``), and that every round trip is bit-exact.

- tvreg pipelines are run the way the registry runs them: 64 MiB item-aligned chunks, encoded
  with ``CodecPipeline.encode``, decoded with ``CodecPipeline.decode_into`` into a reused
  buffer (the read path of ``TaskVector`` and compositions).
- ``zstd-3``: one ``ZstdCompressor(level=3)`` call per tensor, ``decompress`` back.
- ZipNN (``pip install zipnn``, optional): ``ZipNN(method=…, input_format="torch",
  threads=1)`` per tensor. ZipNN 0.5.4 reorders the bytes of its input tensor in place, so every
  compress gets a fresh copy (the copy is not timed).

Sizes in MB = 10**6 bytes. Single-threaded throughout: tvreg decodes chunks of different tensors
on several threads in practice, ZipNN can use threads too; this compares one core's work.

    python benchmarks/bench_codecs.py                      # 20.6M params, fp32 checkpoints
    python benchmarks/bench_codecs.py --dtype bfloat16     # bf16 checkpoints (fp32 deltas)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import (DEFAULT_WIDTH, _build_checkpoints, _g, _load_line,  # noqa: E402
                        _loadavg, run_header)

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


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tvreg_case(label: str, pipeline, tensors, repeats: int) -> dict:
    import numpy as np

    from tvreg.encoding import DEFAULT_CHUNK_BYTES

    raws = [t.view(-1).view(dtype=__import__("torch").uint8).numpy() for _, t in tensors]
    step = DEFAULT_CHUNK_BYTES // 4 * 4
    chunks = [r[o:o + step] for r in raws for o in range(0, r.size, step)]
    encoded: list[bytes] = []

    def encode() -> None:
        encoded[:] = [pipeline.encode(memoryview(c)) for c in chunks]

    t_enc = _median_time(encode, repeats)
    dest = np.empty(max(c.size for c in chunks), dtype=np.uint8)

    def decode() -> None:
        for blob, c in zip(encoded, chunks):
            pipeline.decode_into(blob, dest[:c.size])

    t_dec = _median_time(decode, repeats)
    for blob, c in zip(encoded, chunks):  # bit-exact
        pipeline.decode_into(blob, dest[:c.size])
        if not np.array_equal(dest[:c.size], c):
            raise SystemExit(f"{label}: round trip differs")
    return {"codec": label, "stored": sum(map(len, encoded)), "enc": t_enc, "dec": t_dec}


def _zstd_case(tensors, repeats: int) -> dict:
    import zstandard

    raws = [t.view(-1).numpy().tobytes() for _, t in tensors]
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    encoded: list[bytes] = []

    def encode() -> None:
        encoded[:] = [cctx.compress(r) for r in raws]

    t_enc = _median_time(encode, repeats)
    t_dec = _median_time(lambda: [dctx.decompress(b) for b in encoded], repeats)
    if [dctx.decompress(b) for b in encoded] != raws:
        raise SystemExit("zstd-3: round trip differs")
    return {"codec": "zstd-3 (whole tensor)", "stored": sum(map(len, encoded)), "enc": t_enc,
            "dec": t_dec}


def _zipnn_case(method: str, tensors, repeats: int) -> dict | None:
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    import torch

    z = ZipNN(method=method, input_format="torch", threads=1)
    encoded: list[bytes] = []
    enc_times = []
    for _ in range(repeats):
        copies = [t.clone() for _, t in tensors]  # ZipNN reorders its input's bytes in place
        t0 = time.perf_counter()
        encoded[:] = [z.compress(c) for c in copies]
        enc_times.append(time.perf_counter() - t0)
    t_dec = _median_time(lambda: [z.decompress(b) for b in encoded], repeats)
    for blob, (_, t) in zip(encoded, tensors):
        back = z.decompress(blob)
        if not torch.equal(back.reshape(t.shape).view(torch.int32), t.view(torch.int32)):
            raise SystemExit(f"zipnn {method}: round trip differs")
    return {"codec": f"ZipNN {method} (threads=1)", "stored": sum(map(len, encoded)),
            "enc": statistics.median(enc_times), "dec": t_dec}


def run(args: argparse.Namespace) -> None:
    import torch

    from tvreg.codecs import ByteGroup, CodecPipeline, Zstd

    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), _loadavg()
    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-codecs-")
    os.makedirs(work, exist_ok=True)
    try:
        base, finetuned, setup = _build_checkpoints(work, args.width, args.pretrain_steps,
                                                    args.finetune_steps, args.task, args.dtype)
        tensors = _deltas(base, finetuned)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    raw = sum(t.numel() * 4 for _, t in tensors)
    zeros = sum(int((t == 0).sum()) for _, t in tensors) / (raw / 4)
    rows = [
        _tvreg_case("tvreg bytegroup4+zstd3 (default)",
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

    import zstandard

    info = run_header(f"torch {torch.__version__}, zstandard {zstandard.__version__}"
                      + ("" if missing_zipnn else
                         f", zipnn {__import__('importlib.metadata').metadata.version('zipnn')}"))
    info += [
        ("deltas", f"toy width {args.width}, {args.dtype} checkpoints, {len(tensors)} floating "
                   f"tensors, {_g(raw / MB)} MB fp32, {100 * zeros:.1f}% exact zeros; "
                   f"built in {setup:.0f} s"),
        ("setup", f"repeats {args.repeats}, one thread; whole benchmark "
                  f"{time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    for key, value in info:
        print(f"{key:<9} {value}")
    print()
    header = ("codec", "ratio", "encode MB/s", "decode MB/s", "bit-exact")
    body = [(r["codec"], f"{raw / r['stored']:.3f}", f"{raw / r['enc'] / MB:.0f}",
             f"{raw / r['dec'] / MB:.0f}", "yes") for r in rows]
    widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
    for r in [header] + body:
        print("  ".join([str(r[0]).ljust(widths[0])]
                        + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]))
    if missing_zipnn:
        print("\nZipNN not installed (pip install zipnn): its rows are missing")
    default = rows[0]
    for r in rows[1:]:
        if r["codec"].startswith("ZipNN"):
            print(f"\ntvreg default vs {r['codec']}: ratio {r['stored'] / default['stored']:.2f}x "
                  f"its ratio, decode {r['dec'] / default['dec']:.2f}x its speed, encode "
                  f"{r['enc'] / default['enc']:.2f}x its speed")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                   help=f"toy model width (default {DEFAULT_WIDTH}: 20.6M parameters)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each codec")
    p.add_argument("--pretrain-steps", type=int, default=3)
    p.add_argument("--finetune-steps", type=int, default=3)
    p.add_argument("--task", default="sentiment")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
