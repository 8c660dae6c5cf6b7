#!/usr/bin/env python3
"""tvreg's lossless storage against ZipNN on every case of the codec benchmark set (issue 19).

For each case of ``codec_cases.py`` (full fine-tunes of the real all-MiniLM-L6-v2 in fp32 and
bf16 checkpoints, with and without weight decay, masked-LM training of it, the walkthrough's
frozen-embedding fine-tune, a LoRA-merged full delta, the toy cases of ``bench_codecs.py``), in
one process, on the same bytes:

- **tvreg** as users run it: ``reg.create(name, base, finetuned)`` into a fresh registry
  (default lossless pipeline, chosen per tensor; similarities on, as by default). Ratio =
  ``raw_bytes / stored_bytes`` of the catalog (raw = the fp32 delta's bytes). Encode = raw bytes
  / create's wall time (it reads both checkpoints, subtracts, encodes, hashes, writes and fsyncs
  the objects, indexes the version and computes its similarities). Decode, end to end =
  ``reg.get(ref).state_dict()`` (record and manifest read, every blob read and its sha256
  checked, decoded into tensors), warm page cache. The same pipelines in memory
  (``choose_pipeline`` + encode, ``decode_into``, per 64 MiB chunk as the registry cuts them)
  are timed too, as the codec's own speed next to ZipNN's in-memory one.
- **tvreg exact mode** (``create(..., exact=True)``: ``bitdiff`` + ``bgzstd``; the base is
  stored alongside, not counted in its ratio): ratio and ``state_dict()`` time (which decodes
  the stored base's tensors too), for information.
- **ZipNN** (``ZipNN(method=M, input_format="torch", threads=T)`` per tensor, methods huffman
  and zstd) on the same fp32 delta tensors: ratio, compress and in-memory decompress time. For a
  bf16 checkpoint pair also: ZipNN on the delta cast to bf16 (what someone storing a bf16 delta
  would keep; lossy, the count of values it changes is printed), tvreg's ``bgzstd`` chosen for
  the same bf16 delta bytes (in memory: tvreg never stores that), and ZipNN on the bf16
  fine-tuned checkpoint itself. Ratios there are given against both the bytes each coder was
  given and the fp32 delta's bytes.
- **Per byte stream** of the fp32 delta (byte j of each float32, little-endian, after byte
  grouping: byte 3 = sign and top 7 exponent bits, byte 2 = last exponent bit and top 7 mantissa
  bits, bytes 1 and 0 = lower mantissa), over the whole vector and the largest dense matrix (the
  largest 2-D tensor outside the embeddings): order-0 entropy H (bits/byte) and its bound
  ratio 8/H; what tvreg stores for the stream (the chosen ``bgzstd`` segments: raw or zstd-1,
  blocks of 2^20 items); zstd-1 and zstd-3 on the same blocks (no raw fallback); ZipNN's total.
  Conditional entropies (plug-in estimates) of byte 0 given the delta's 8 exponent bits E,
  of byte 0 given E_base - E (the base's exponent minus the delta's: a delta is a multiple of
  the base's ulp, so this tells how many low mantissa bits are zero; a decoder has it only with
  the base at hand), of bytes 1 and 2 given E; and the bound of a context coder (byte 3
  order-0, byte 2 given byte 3, bytes 1 and 0 given E).
- **Decode floor**: reading and sha256-hashing the stored blobs alone, on T threads.

Threads: tvreg sizes its pools with ``tvreg.tensors.encoding.default_workers()``
(``min(8, os.cpu_count())``; no setting or environment variable), for the create encoder, the
``chunks`` pool (a tensor's blocks and chunks) and the ``operands`` pool (``state_dict`` decodes
several tensors at once). With ``--threads T`` this script replaces that function by one
returning T, pins the process to T CPUs (``os.sched_setaffinity``; with T = every usable CPU, a
no-op), sets ``torch.set_num_threads(T)`` and gives ZipNN ``threads=T``. Times are medians of
``--repeats`` runs after one untimed warm-up (creates: each into its own fresh registry).
Sizes in MB = 10**6 bytes. A JSON of every number is written to
``WORKDIR/results/codec-set-<UTC time>.json``.

    python benchmarks/bench_codec_set.py                          # all cases, cached under
                                                                  # ~/.cache/tvreg-bench/codec-cases
    python benchmarks/bench_codec_set.py --cases minilm-full-topic toy-fp32-3+3 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import codec_cases  # noqa: E402
from bench_core import _load_line, _loadavg, _usable_cpus, run_header  # noqa: E402

MB = 1_000_000
ZIPNN_METHODS = ("huffman", "zstd")


# --- threads --------------------------------------------------------------------------------------


def limit_threads(threads: int) -> str:
    """Make tvreg, torch and this process use ``threads`` threads; returns how, in words."""
    import torch

    import tvreg.tensors.encoding as encoding

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = ""
    if cpus and threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
        pinned = f", pinned to CPUs {cpus[:threads]}"
    encoding.default_workers = lambda: threads  # type: ignore[assignment]
    torch.set_num_threads(threads)
    return (f"T={threads}: tvreg pools of {threads} (default_workers), torch "
            f"{threads} threads, ZipNN threads={threads}{pinned}")


# --- small helpers --------------------------------------------------------------------------------


def _times(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _u8(t) -> Any:
    import torch

    return t.contiguous().view(-1).view(torch.uint8).numpy()


def _entropy(counts) -> float:
    import numpy as np

    c = counts[counts > 0].astype(np.float64)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def _h(x, bins: int) -> float:
    import numpy as np

    return _entropy(np.bincount(x, minlength=bins))


def _h_cond(x, ctx, xbins: int, cbins: int) -> float:
    """H(x | ctx) = H(ctx, x) - H(ctx), plug-in estimate."""
    import numpy as np

    joint = ctx.astype(np.int64) * xbins + x
    return _h(joint, xbins * cbins) - _h(ctx, cbins)


# --- tvreg through the registry -------------------------------------------------------------------


def tvreg_registry(case, raw: int, deltas, work: Path, repeats: int, threads: int,
                   exact: bool) -> dict:
    """create into fresh registries (timed), then state_dict() and the decode floor."""
    import torch

    import tvreg

    def creates(similarities: bool, keep_last: bool) -> tuple[list[float], Any, str]:
        times, reg, ref = [], None, ""
        for r in range(repeats + 1):  # the first create is the warm-up
            root = work / f"reg-{'exact' if exact else 'plain'}-{r}"
            shutil.rmtree(root, ignore_errors=True)
            reg = tvreg.open(root)
            reg.init()
            t0 = time.perf_counter()
            res = reg.create("bench", str(case.base), str(case.finetuned), exact=exact,
                             similarities=similarities)
            dt = time.perf_counter() - t0
            if r:
                times.append(dt)
            ref = res.ref
            if r < repeats or not keep_last:
                reg.close()
                shutil.rmtree(root, ignore_errors=True)
        return times, reg, ref

    # without similarities first, for the share of create they take (plain mode only)
    create_nosim = [] if exact else creates(False, False)[0]
    create_times, reg, ref = creates(True, True)
    root = Path(reg.root)
    row = reg.sql("SELECT raw_bytes, stored_bytes, codec FROM versions")[0]
    label = row["codec"]
    if row["raw_bytes"] != raw:
        raise SystemExit(f"{case.name}: catalog raw_bytes {row['raw_bytes']} != {raw}")
    manifest = reg.get(ref).manifest
    labels: dict[str, int] = {}
    for e in manifest.tensors:
        labels[e.codecs.label] = labels.get(e.codecs.label, 0) + 1

    sd = reg.get(ref).state_dict()  # checked once, bit for bit
    for name, d in deltas:
        if not torch.equal(sd[name].view(torch.int32), d.view(torch.int32)):
            raise SystemExit(f"{case.name}: state_dict()[{name!r}] differs from the delta")
    del sd
    dec = _times(lambda: reg.get(ref).state_dict(), repeats)
    get_only = _times(lambda: reg.get(ref), repeats)
    blobs = [c.blob for e in manifest.tensors for c in e.chunks]

    def floor() -> None:
        with ThreadPoolExecutor(threads) as pool:
            for data in pool.map(reg.objects.get, blobs):
                del data

    def floor_read_only() -> None:
        from tvreg.storage.objects import object_key

        with ThreadPoolExecutor(threads) as pool:
            for data in pool.map(lambda b: reg.store.read(object_key(b)), blobs):
                del data

    fl = _times(floor, repeats)
    fl_read = _times(floor_read_only, repeats)
    stored = row["stored_bytes"]
    blob_bytes = sum(c.stored_nbytes for e in manifest.tensors for c in e.chunks)
    reg.close()
    shutil.rmtree(root, ignore_errors=True)
    return {"ratio": raw / stored, "stored_bytes": stored, "catalog_label": label,
            "labels": labels, "create_s": create_times, "create_nosim_s": create_nosim,
            "state_dict_s": dec, "get_s": get_only,
            "floor_s": fl, "floor_read_s": fl_read, "blobs": len(blobs),
            "blob_bytes": blob_bytes}


# --- tvreg's pipeline in memory -------------------------------------------------------------------


def tvreg_memory(deltas, repeats: int, threads: int) -> dict:
    """choose_pipeline + encode per 64 MiB chunk, decode_into: the codec alone, T threads."""
    import numpy as np

    from tvreg.codecs import choose_pipeline
    from tvreg.tensors.encoding import DEFAULT_CHUNK_BYTES

    raws = [_u8(t) for _, t in deltas]
    step = DEFAULT_CHUNK_BYTES // 4 * 4
    chunks = [(i, r[o:o + step]) for i, r in enumerate(raws) for o in range(0, r.size, step)]
    pipes: list = [None] * len(raws)
    encoded: list[bytes] = []
    helpers = ThreadPoolExecutor(threads - 1) if threads > 1 else None  # + the calling thread
    with contextlib.nullcontext(helpers) if helpers is None else helpers as pool:
        def encode() -> None:
            pipes[:] = [choose_pipeline(r, 4) for r in raws]
            encoded[:] = [pipes[i].encode(memoryview(c), pool) for i, c in chunks]

        enc = _times(encode, repeats)
        dest = np.empty(max(c.size for _, c in chunks), dtype=np.uint8)

        def decode_fresh() -> None:  # a new output per tensor, as state_dict() and ZipNN make
            outs = [np.empty(r.size, dtype=np.uint8) for r in raws]
            for blob, (i, c) in zip(encoded, chunks, strict=True):
                off = c.ctypes.data - raws[i].ctypes.data
                pipes[i].decode_into(blob, outs[i][off:off + c.size], pool)

        def decode_reuse() -> None:  # one buffer reused (no page faults on the output)
            for blob, (i, c) in zip(encoded, chunks, strict=True):
                pipes[i].decode_into(blob, dest[:c.size], pool)

        dec = _times(decode_fresh, repeats)
        dec_reuse = _times(decode_reuse, repeats)
        for blob, (i, c) in zip(encoded, chunks, strict=True):
            pipes[i].decode_into(blob, dest[:c.size], pool)
            if not np.array_equal(dest[:c.size], c):
                raise SystemExit("tvreg in memory: round trip differs")
    return {"stored_bytes": sum(map(len, encoded)), "encode_s": enc, "decode_s": dec,
            "decode_reuse_s": dec_reuse}


def bgzstd_on(tensors, itemsize: int) -> int:
    """Bytes tvreg's chosen bgzstd stores for these tensors' bytes (in memory)."""
    from tvreg.codecs import choose_pipeline

    return sum(len(choose_pipeline(_u8(t), itemsize).encode(memoryview(_u8(t))))
               for t in tensors)


# --- ZipNN ----------------------------------------------------------------------------------------


def zipnn_run(tensors, method: str, threads: int, repeats: int) -> dict:
    """ZipNN on each tensor (its input is reordered in place: each compress gets a fresh copy,
    untimed); round trip checked bit for bit."""
    import torch
    from zipnn import ZipNN

    z = ZipNN(method=method, input_format="torch", threads=threads)
    encoded: list[bytes] = []
    enc_times = []
    for r in range(repeats + 1):
        copies = [t.clone() for t in tensors]
        t0 = time.perf_counter()
        encoded[:] = [z.compress(c) for c in copies]
        if r:
            enc_times.append(time.perf_counter() - t0)
        del copies
    dec = _times(lambda: [z.decompress(b) for b in encoded], repeats)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    for blob, t in zip(encoded, tensors, strict=True):
        back = z.decompress(blob)
        w = ints[t.element_size()]
        if not torch.equal(back.reshape(t.shape).view(w), t.view(w)):
            raise SystemExit(f"ZipNN {method}: round trip differs")
    return {"stored_bytes": sum(map(len, encoded)), "encode_s": enc_times, "decode_s": dec,
            "input_bytes": sum(t.numel() * t.element_size() for t in tensors)}


# --- per byte stream ------------------------------------------------------------------------------


def stream_report(deltas, bases: dict, zipnn_stored: int | None) -> dict:
    """Entropies and stored sizes per byte stream of the fp32 ``deltas`` [(name, tensor)]."""
    import numpy as np

    from tvreg.codecs import choose_pipeline
    from tvreg.codecs.choose import BLOCK_ITEMS
    from tvreg.codecs.zstd import compress
    from tvreg.tensors.encoding import DEFAULT_CHUNK_BYTES

    n = sum(t.numel() for _, t in deltas)
    tv = np.zeros(4, dtype=np.int64)
    tables = 0
    zs = {1: np.zeros(4, dtype=np.int64), 3: np.zeros(4, dtype=np.int64)}
    levels: dict[str, int] = {}
    hblk = [0.0] * 4  # sum over blocks of (items x the block's order-0 entropy), per stream
    for _, t in deltas:
        raw = _u8(t)
        pipe = choose_pipeline(raw, 4)
        levels[pipe.label] = levels.get(pipe.label, 0) + 1
        step = DEFAULT_CHUNK_BYTES // 4 * 4
        for o in range(0, raw.size, step):
            chunk = raw[o:o + step]
            blob = pipe.encode(memoryview(chunk))
            nb = -(-(chunk.size // 4) // BLOCK_ITEMS)
            sizes = np.frombuffer(blob, dtype="<u4", count=4 * nb).reshape(nb, 4)
            tv += sizes.astype(np.int64).sum(axis=0)
            tables += 16 * nb
        streams = np.ascontiguousarray(raw.reshape(-1, 4).T)
        for b0 in range(0, streams.shape[1], BLOCK_ITEMS):
            for j in range(4):
                seg = streams[j, b0:b0 + BLOCK_ITEMS]
                hblk[j] += seg.size * _h(seg, 256)
                for lv in zs:
                    zs[lv][j] += len(compress(seg, lv))
    u = np.concatenate([_u8(t).view("<u4") for _, t in deltas])
    ub = np.concatenate([_u8(bases[name].float()).view("<u4") for name, _ in deltas])
    b = [((u >> (8 * j)) & 0xFF).astype(np.int64) for j in range(4)]
    e = ((u >> 23) & 0xFF).astype(np.int64)
    eb = ((ub >> 23) & 0xFF).astype(np.int64)
    shift = np.clip(eb - e + 16, 0, 79)  # E_base - E, offset; zero deltas land at the top
    H = [_h(b[j], 256) for j in range(4)]
    cond = {
        "b0|E": _h_cond(b[0], e, 256, 256),
        "b0|Ebase-E": _h_cond(b[0], shift, 256, 80),
        "b1|E": _h_cond(b[1], e, 256, 256),
        "b2|E": _h_cond(b[2], e, 256, 256),
        "b2|b3": _h_cond(b[2], b[3], 256, 256),
    }
    ctx_bits = H[3] + cond["b2|b3"] + cond["b1|E"] + cond["b0|E"]
    return {
        "items": n, "H": H, "H_block": [h / n for h in hblk], "cond": cond,
        "tvreg_stream_bytes": tv.tolist(), "tables": tables,
        "zstd1_stream_bytes": zs[1].tolist(), "zstd3_stream_bytes": zs[3].tolist(),
        "order0_bound_ratio": 32 / sum(H), "ctx_bound_ratio": 32 / ctx_bits,
        "tvreg_ratio": 4 * n / (int(tv.sum()) + tables),
        "zipnn_ratio": (4 * n / zipnn_stored) if zipnn_stored else None,
        "chosen": levels,
    }


# --- one case -------------------------------------------------------------------------------------


def run_case(case, args, work: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    deltas = codec_cases.load_deltas(case)
    tensors = [t for _, t in deltas]
    raw = sum(t.numel() * 4 for t in tensors)
    base_sd = load_file(str(case.base))
    out: dict[str, Any] = {"case": case.name, "description": case.spec.description,
                           "dtype": case.dtype, "params": case.info["params"],
                           "tensors": len(deltas), "raw_fp32_bytes": raw,
                           "zero_fraction": case.info["zero_fraction"],
                           "build_seconds": case.info["build_seconds"],
                           "acc_base": case.info.get("acc_base"),
                           "acc_ft": case.info.get("acc_ft")}
    t0 = time.perf_counter()
    out["tvreg"] = tvreg_registry(case, raw, deltas, work, args.repeats, args.threads, False)
    out["tvreg_exact"] = tvreg_registry(case, raw, deltas, work, args.repeats, args.threads,
                                        True)
    out["tvreg_memory"] = tvreg_memory(deltas, args.repeats, args.threads)
    out["zipnn"] = {m: zipnn_run(tensors, m, args.threads, args.repeats) for m in args.zipnn}
    best_method = min(out["zipnn"], key=lambda m: out["zipnn"][m]["stored_bytes"])
    best = out["zipnn"][best_method]
    if case.dtype != "float32":
        ft_sd = load_file(str(case.finetuned))
        names = [n for n, _ in deltas]
        low = getattr(torch, case.dtype)
        low_delta = [(ft_sd[n].float() - base_sd[n].float()).to(low).contiguous() for n in names]
        changed = sum(int((ld.float() != d).sum())
                      for ld, (_, d) in zip(low_delta, deltas, strict=True))
        ft_low = [ft_sd[n].contiguous() for n in names]
        out["low"] = {
            "dtype": case.dtype, "low_delta_changed_values": changed,
            "zipnn_low_delta": {m: zipnn_run(low_delta, m, args.threads, args.repeats)
                                for m in args.zipnn},
            "tvreg_bgzstd_low_delta_bytes": bgzstd_on(low_delta, low_delta[0].element_size()),
            "zipnn_finetuned": {m: zipnn_run(ft_low, m, args.threads, args.repeats)
                                for m in args.zipnn},
            "low_bytes": sum(t.numel() * t.element_size() for t in low_delta),
        }
        del ft_sd, low_delta, ft_low
    dense = [(n, t) for n, t in deltas if t.dim() == 2 and "embeddings" not in n]
    largest = max(dense, key=lambda nt: nt[1].numel()) if dense else \
        max(deltas, key=lambda nt: nt[1].numel())
    z_largest = zipnn_run([largest[1]], best_method, args.threads, 1)
    out["streams"] = {
        "whole": stream_report(deltas, base_sd, best["stored_bytes"]),
        "largest": {"name": largest[0], "shape": list(largest[1].shape),
                    **stream_report([largest], base_sd, z_largest["stored_bytes"])},
    }
    out["seconds"] = time.perf_counter() - t0
    return out


# --- printing -------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list], left: int = 1) -> None:
    cells = [[str(c) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join([c.ljust(w) for c, w in zip(r[:left], widths[:left], strict=True)]
                        + [c.rjust(w) for c, w in zip(r[left:], widths[left:], strict=True)]))


def _mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / MB:.0f}"


def _zbest(res: dict) -> tuple[str, dict]:
    """ZipNN's method with the smaller output (ties: the faster decode)."""
    return min(res["zipnn"].items(),
               key=lambda kv: (kv[1]["stored_bytes"], _med(kv[1]["decode_s"])))


def _zfast(res: dict) -> tuple[str, dict]:
    return min(res["zipnn"].items(), key=lambda kv: _med(kv[1]["decode_s"]))


def print_report(results: list[dict], info: list[tuple[str, str]], threads: int) -> None:
    for key, value in info:
        print(f"{key:<9} {value}")

    print("\ncases:\n")
    for r in results:
        print(f"  {r['case']}: {r['description']}")
    print("\n(raw = the fp32 delta tvreg stores: 4 bytes per parameter; accuracy on the task's "
          "test split, base -> fine-tuned; build s: a bf16 cast's excludes its source's)\n")
    _table(["case", "checkpoints", "tensors", "params", "raw MB", "zero deltas", "accuracy",
            "build s"],
           [[r["case"], r["dtype"], r["tensors"], f"{r['params']:,}",
             f"{r['raw_fp32_bytes'] / MB:.1f}", f"{100 * r['zero_fraction']:.1f}%",
             (f"{r['acc_base']:.2f}->{r['acc_ft']:.2f}" if r["acc_ft"] is not None else "-"),
             f"{r['build_seconds']:.0f}"] for r in results])

    print("\nratio = raw fp32 delta bytes / stored bytes, on the same bytes (tvreg: the catalog's "
          "raw_bytes/stored_bytes; exact: base stored apart, not counted):\n")
    rows = []
    for r in results:
        zb_name, zb = _zbest(r)
        rows.append([r["case"], f"{r['tvreg']['ratio']:.3f}", f"{r['tvreg_exact']['ratio']:.3f}",
                     *[f"{r['raw_fp32_bytes'] / r['zipnn'][m]['stored_bytes']:.3f}"
                       for m in r["zipnn"]],
                     f"{r['tvreg']['ratio'] * zb['stored_bytes'] / r['raw_fp32_bytes']:.3f}",
                     f"{r['tvreg_exact']['ratio'] * zb['stored_bytes'] / r['raw_fp32_bytes']:.3f}"])
    ms = list(results[0]["zipnn"])
    _table(["case", "tvreg", "tvreg exact", *[f"ZipNN {m}" for m in ms], "tvreg/ZipNN",
            "exact/ZipNN"], rows)

    print(f"\nencode, {threads} threads (seconds, median, and MB/s of raw fp32 delta; create = "
          "the whole reg.create(), similarities on as by default; no-sim = create(..., "
          "similarities=False); in-mem = choose_pipeline + encode only; ZipNN = compress, the "
          "faster method; 'vs ZipNN' = speed / ZipNN's speed):\n")
    rows = []
    for r in results:
        raw = r["raw_fp32_bytes"]
        zf_name, zf = min(r["zipnn"].items(), key=lambda kv: _med(kv[1]["encode_s"]))
        c, ce = _med(r["tvreg"]["create_s"]), _med(r["tvreg_exact"]["create_s"])
        cn = _med(r["tvreg"]["create_nosim_s"])
        m = _med(r["tvreg_memory"]["encode_s"])
        z = _med(zf["encode_s"])
        rows.append([r["case"], f"{c:.3f}", _mbps(raw, c), f"{cn:.3f}", f"{ce:.3f}",
                     f"{m:.3f}", _mbps(raw, m), f"{z:.3f}", f"{zf_name} {_mbps(raw, z)}",
                     f"{z / c:.2f}x", f"{z / m:.2f}x"])
    _table(["case", "create s", "MB/s", "no-sim create s", "exact create s", "tvreg in-mem s",
            "MB/s", "ZipNN s", "ZipNN MB/s", "create vs ZipNN", "in-mem vs ZipNN"], rows)

    print(f"\ndecode, {threads} threads (seconds, median; state_dict = "
          "reg.get(ref).state_dict() from a warm page cache: read + sha256 + decode; get = "
          "reg.get(ref) alone (record and manifest); tvreg in-mem = the same pipelines' "
          "decode_into on bytes in memory, into a new output per tensor (reused buf: into one "
          "buffer); floor = read + sha256 of the stored blobs alone, read only = without the "
          "sha256; ZipNN = in-memory decompress of every tensor, the faster method; 'vs ZipNN' "
          "= speed / ZipNN's speed):\n")
    rows = []
    for r in results:
        raw = r["raw_fp32_bytes"]
        zf_name, zf = _zfast(r)
        s = _med(r["tvreg"]["state_dict_s"])
        z = _med(zf["decode_s"])
        m = _med(r["tvreg_memory"]["decode_s"])
        mr = _med(r["tvreg_memory"]["decode_reuse_s"])
        rows.append([r["case"], f"{s:.3f}", _mbps(raw, s), f"{_med(r['tvreg']['get_s']):.3f}",
                     f"{m:.3f}", f"{mr:.3f}", f"{_med(r['tvreg']['floor_s']):.3f}",
                     f"{_med(r['tvreg']['floor_read_s']):.3f}",
                     f"{_med(r['tvreg_exact']['state_dict_s']):.3f}",
                     f"{z:.3f}", f"{zf_name} {_mbps(raw, z)}", f"{z / s:.2f}x", f"{z / m:.2f}x"])
    _table(["case", "state_dict s", "MB/s", "get s", "tvreg in-mem s", "reused buf s",
            "floor s", "read only s", "exact state_dict s", "ZipNN s", "ZipNN MB/s",
            "state_dict vs ZipNN", "in-mem vs ZipNN"], rows)

    lows = [r for r in results if "low" in r]
    if lows:
        print("\nbf16 checkpoints: what each coder stores (MB), and ratio against the bytes it "
              "was given / against the fp32 delta:\n")
        rows = []
        for r in lows:
            lo = r["low"]
            raw, lb = r["raw_fp32_bytes"], lo["low_bytes"]
            zb_name, zb = _zbest(r)
            zl = min(lo["zipnn_low_delta"].values(), key=lambda x: x["stored_bytes"])
            zf = min(lo["zipnn_finetuned"].values(), key=lambda x: x["stored_bytes"])
            for what, given, stored in (
                    ("tvreg (fp32 delta, what it stores)", raw, r["tvreg"]["stored_bytes"]),
                    ("tvreg exact (bitdiff of bf16 bits)", raw, r["tvreg_exact"]["stored_bytes"]),
                    ("ZipNN on the fp32 delta", raw, zb["stored_bytes"]),
                    ("ZipNN on the delta cast to bf16 (lossy)", lb, zl["stored_bytes"]),
                    ("tvreg bgzstd on the bf16 delta (in memory)", lb,
                     lo["tvreg_bgzstd_low_delta_bytes"]),
                    ("ZipNN on the bf16 fine-tuned checkpoint", lb, zf["stored_bytes"])):
                rows.append([r["case"], what, f"{given / MB:.1f}", f"{stored / MB:.2f}",
                             f"{given / stored:.3f}", f"{raw / stored:.3f}"])
            n = r["params"]
            rows.append([r["case"], f"(bf16 delta changes {lo['low_delta_changed_values']:,} of "
                         f"{n:,} values)", "", "", "", ""])
        _table(["case", "coder and bytes", "given MB", "stored MB", "ratio given",
                "ratio vs fp32 delta"], rows, left=2)

    print("\nper byte stream of the fp32 delta (j = byte of the little-endian float32; H = "
          "order-0 entropy over the whole stream, bits/byte; H/block = the same per 2^20-item "
          "block (tvreg's unit), size-weighted mean; ratios = stream bytes / stored bytes; tvreg "
          "= its chosen bgzstd segments; zstd-1/-3 on the same blocks; conditional entropies over "
          "the whole stream):\n")
    for r in results:
        for part in ("whole", "largest"):
            s = r["streams"][part]
            n = s["items"]
            title = "whole vector" if part == "whole" else \
                f"largest dense matrix {s['name']} {'x'.join(map(str, s['shape']))}"
            print(f"{r['case']}, {title}:")
            rows = []
            for j in range(4):
                rows.append([f"byte {j}", f"{s['H'][j]:.3f}", f"{8 / max(s['H'][j], 1e-9):.3f}",
                             f"{s['H_block'][j]:.3f}", f"{8 / max(s['H_block'][j], 1e-9):.3f}",
                             f"{n / s['tvreg_stream_bytes'][j]:.3f}",
                             f"{n / s['zstd1_stream_bytes'][j]:.3f}",
                             f"{n / s['zstd3_stream_bytes'][j]:.3f}",
                             f"{s['tvreg_stream_bytes'][j] / n * 8:.3f}"])
            rows.append(["total", f"{sum(s['H']):.3f}", f"{s['order0_bound_ratio']:.3f}",
                         f"{sum(s['H_block']):.3f}", f"{32 / sum(s['H_block']):.3f}",
                         f"{s['tvreg_ratio']:.3f}",
                         f"{4 * n / sum(s['zstd1_stream_bytes']):.3f}",
                         f"{4 * n / sum(s['zstd3_stream_bytes']):.3f}",
                         f"{(sum(s['tvreg_stream_bytes']) + s['tables']) / n * 8:.2f}"])
            _table(["stream", "H", "bound 8/H", "H/block", "block bound", "tvreg", "zstd-1",
                    "zstd-3", "tvreg bits/B"], rows)
            c = s["cond"]
            zr = s["zipnn_ratio"]
            print(f"  ZipNN total {zr:.3f} (tvreg/ZipNN {s['tvreg_ratio'] / zr:.3f}); "
                  f"H(b0|E) {c['b0|E']:.3f}, H(b0|Ebase-E) {c['b0|Ebase-E']:.3f}, "
                  f"H(b1|E) {c['b1|E']:.3f}, H(b2|E) {c['b2|E']:.3f}, H(b2|b3) {c['b2|b3']:.3f}; "
                  f"context-coder bound {s['ctx_bound_ratio']:.3f} vs order-0 "
                  f"{s['order0_bound_ratio']:.3f}; chosen: "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(s["chosen"].items())) + "\n")


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(codec_cases.DEFAULT_WORKDIR),
                   help="where the cases are cached (built when missing) and the JSON is written "
                        f"(default {codec_cases.DEFAULT_WORKDIR})")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs of each measure after a warm-up; medians quoted (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="T: tvreg's pools, torch and ZipNN (default: every usable CPU)")
    p.add_argument("--cases", nargs="*", default=None,
                   help=f"cases (default all: {' '.join(codec_cases.CASES)})")
    p.add_argument("--zipnn", nargs="*", default=list(ZIPNN_METHODS),
                   help="ZipNN methods (default huffman zstd)")
    args = p.parse_args(argv)
    args.threads = args.threads or _usable_cpus()

    import importlib.metadata as md

    import torch
    import zstandard

    try:
        import zipnn  # noqa: F401
    except ImportError:
        raise SystemExit("ZipNN is needed: pip install zipnn (the bench extra)") from None
    workdir = Path(args.workdir)
    started, load_start = time.perf_counter(), _loadavg()
    cases = codec_cases.build_cases(args.cases, workdir)  # cached, else built (not timed here)
    how = limit_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tvreg-codec-set-", dir=workdir))
    results = []
    try:
        for case in cases:
            print(f"measuring {case.name} ...", file=sys.stderr, flush=True)
            results.append(run_case(case, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = run_header(f"torch {torch.__version__}, zstandard {zstandard.__version__}, zipnn "
                      f"{md.version('zipnn')}, numpy {md.version('numpy')}")
    info += [("threads", how),
             ("setup", f"repeats {args.repeats} after a warm-up, medians; workdir {workdir}; "
                       f"whole benchmark {time.perf_counter() - started:.0f} s"),
             ("load", _load_line(load_start, _loadavg()))]
    print_report(results, info, args.threads)
    out = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"codec-set-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps({"info": dict(info), "args": vars(args), "results": results,
                                "deltas": {c.name: str(c.delta) for c in cases}},
                               indent=1))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
