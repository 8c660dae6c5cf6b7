#!/usr/bin/env python3
"""Lossy codecs on a real fine-tuned delta: size, speed, error, and what they do to the model.

Builds a real base and fine-tune (``tvreg.testing.toy``: Adam steps of pre-training, then of
fine-tuning on one task), takes the fp32 delta τ of every floating tensor, and for the lossless
default and each ``--codec`` spec, in the same process on the same tensors:

- encodes the whole vector the way ``tvreg create --codec`` does (``LossyEncoder.submit`` on a
  ``TensorEncoder`` with ``--threads`` workers, blobs kept in memory: the codec, the lossless
  steps after it, the decode that proves each entry and hashes it, the error sums), and decodes
  every tensor with ``decode_tensor`` on one thread (the read path of ``TaskVector``);
- reports the stored ratio (raw fp32 bytes / stored bytes), encode and decode MB/s (raw bytes /
  the fastest of ``--repeats`` wall times, as bench_codecs.py: on a shared machine slower runs
  measure the neighbours), the recorded error (``rel_l2`` = ‖τ̂ − τ‖/‖τ‖,
  ``cosine`` to τ), and the accuracy of base + τ̂ on ``--eval`` held-out examples of the task,
  next to base + τ (lossless) and the base alone. ``gain kept`` is
  (acc(base+τ̂) − acc(base)) / (acc(base+τ) − acc(base)). zstd-3 and ZipNN (if installed) run
  on the same deltas in the same process, as references (lossless: the lossless accuracy).

``--per-tensor SPEC`` also prints, for that spec, the accuracy when only one tensor is stored
with it and every other tensor is exact: which tensors the codec hurts.

Sizes in MB = 10**6 bytes.

    python benchmarks/bench_lossy.py                  # width 1024 (8.5M params), sentiment
    python benchmarks/bench_lossy.py --task topic --finetune-steps 60
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

os.environ.setdefault("TVREG_NO_PROGRESS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import _g, _load_line, _loadavg, run_header  # noqa: E402

MB = 1_000_000
DEFAULT_SPECS = ("bf16", "fp16", "int8", "topk:density=0.25", "topk:density=0.1",
                 "topk:density=0.01", "ternary:density=0.25", "ternary:density=0.1",
                 "svd:rank=4", "svd:energy=0.5", "svd:energy=0.9")


def _build(width: int, pretrain_steps: int, finetune_steps: int, lr: float, task: str):
    from tvreg.testing import toy

    t0 = time.perf_counter()
    # num_threads=None: all cores for the setup; the checkpoints are real (Adam on real
    # gradients) but not bit-identical across machines, which this benchmark does not need
    base = toy.pretrain(width=width, steps=pretrain_steps, num_threads=None)
    ft = toy.finetune(base, task, steps=finetune_steps, lr=lr, num_threads=None)
    return base, ft, time.perf_counter() - t0


def _encode(spec: str | None, deltas: dict, threads: int):
    """(entries, blobs, error) of one encoding of every delta."""
    from tvreg.codecs import choose_pipeline
    from tvreg.tensors.encoding import TensorEncoder
    from tvreg.tensors.lossy import LossyEncoder

    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        blobs[oid] = data
        return oid

    coder = LossyEncoder(spec) if spec else None
    with TensorEncoder(put, workers=threads) as encoder:
        if coder is not None:
            coder.check((n, "float32", tuple(t.shape)) for n, t in deltas.items())
        futures = [coder.submit(encoder, n, t, "float32") if coder is not None
                   else encoder.submit(n, t, "float32", choose_pipeline(t, 4))
                   for n, t in deltas.items()]
        entries = [f.result() for f in futures]
    error = coder.error() if coder is not None else {"rel_l2": 0.0, "cosine": 1.0}
    return entries, blobs, error


def _case(spec: str | None, deltas: dict, raw: int, args, base_sd: dict, model, base_acc: float,
          exact_acc: float | None) -> dict:
    import torch

    from tvreg.tensors.encoding import decode_tensor
    from tvreg.testing import toy

    enc_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        entries, blobs, error = _encode(spec, deltas, args.threads)
        enc_times.append(time.perf_counter() - t0)
    dec_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        decoded = {e.name: decode_tensor(e, blobs.__getitem__) for e in entries}
        dec_times.append(time.perf_counter() - t0)
    for e in entries:  # what was stored is what the manifest says
        if hashlib.sha256(decoded[e.name].numpy().tobytes()).hexdigest() != e.sha256:
            raise SystemExit(f"{spec}: {e.name} does not decode to its sha256")
    if spec is None and any(not torch.equal(decoded[n], t) for n, t in deltas.items()):
        raise SystemExit("lossless round trip differs")
    model.load_state_dict({n: base_sd[n] + decoded[n] if n in decoded else base_sd[n]
                           for n in base_sd})
    acc = toy.accuracy(model, args.task, n=args.eval, num_threads=None)
    stored = sum(e.stored_nbytes for e in entries)
    lossy = sum(not e.codecs.lossless or (e.codecs.codecs[0].name == "lowrank" and bool(spec))
                for e in entries)
    per_tensor = {}
    if spec in args.per_tensor:
        for name in deltas:
            model.load_state_dict({n: base_sd[n] + (decoded[n] if n == name else deltas[n])
                                   if n in deltas else base_sd[n] for n in base_sd})
            per_tensor[name] = toy.accuracy(model, args.task, n=args.eval, num_threads=None)
    return {"codec": spec or "lossless (default)", "ratio": raw / stored, "per_tensor": per_tensor,
            "enc": raw / min(enc_times) / MB,
            "dec": raw / min(dec_times) / MB,
            "rel_l2": error["rel_l2"], "cosine": error["cosine"], "acc": acc,
            "rel_acc": acc / exact_acc if exact_acc else 1.0,
            "kept": (acc - base_acc) / ((exact_acc or acc) - base_acc),
            "tensors": f"{lossy}/{len(entries)}"}


def _references(deltas: dict, raw: int, repeats: int, exact_acc: float, base_acc: float
                ) -> list[dict]:
    """zstd-3 and ZipNN (if installed) on the same deltas, one thread, timed as in
    bench_codecs.py (fastest run): lossless, so their accuracy is the lossless vector's."""
    from bench_codecs import _zipnn_case, _zstd_case

    tensors = list(deltas.items())
    found = [_zstd_case(tensors, repeats)]
    for method in ("huffman", "zstd"):
        row = _zipnn_case(method, tensors, repeats)
        if row is None:
            break
        found.append(row)
    return [{"codec": r["codec"], "tensors": "0/" + str(len(tensors)), "ratio": raw / r["stored"],
             "enc": raw / r["enc"] / MB, "dec": raw / r["dec"] / MB, "rel_l2": 0.0,
             "cosine": 1.0, "acc": exact_acc, "rel_acc": 1.0, "kept": 1.0, "per_tensor": {}}
            for r in found]


def run(args: argparse.Namespace) -> None:
    import torch

    from tvreg.testing import toy

    started, load_start = time.perf_counter(), _loadavg()
    base_model, ft_model, setup = _build(args.width, args.pretrain_steps, args.finetune_steps,
                                         args.lr, args.task)
    base_sd = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    ft_sd = ft_model.state_dict()
    deltas = {n: (ft_sd[n].float() - t.float()).contiguous() for n, t in sorted(base_sd.items())
              if t.is_floating_point()}
    raw = sum(t.numel() * 4 for t in deltas.values())
    base_acc = toy.accuracy(base_model, args.task, n=args.eval, num_threads=None)
    torch.set_num_threads(args.threads)
    model = toy.ToyClassifier(args.width).eval()
    rows = [_case(None, deltas, raw, args, base_sd, model, base_acc, None)]
    exact_acc = rows[0]["acc"]
    rows += _references(deltas, raw, args.repeats, exact_acc, base_acc)
    for spec in args.codec:
        rows.append(_case(spec, deltas, raw, args, base_sd, model, base_acc, exact_acc))

    info = run_header(f"torch {torch.__version__}, numpy {__import__('numpy').__version__}")
    info += [
        ("delta", f"toy width {args.width} ({toy.param_count(args.width):,} params), "
                  f"{len(deltas)} floating tensors, {_g(raw / MB)} MB fp32; {args.pretrain_steps} "
                  f"pre-training + {args.finetune_steps} fine-tuning Adam steps on {args.task} "
                  f"(lr {args.lr:g}), built in {setup:.0f} s"),
        ("accuracy", f"{args.eval} held-out {args.task} examples: base {base_acc:.4f}, "
                     f"base + τ (lossless) {exact_acc:.4f}"),
        ("setup", f"repeats {args.repeats}, encode on {args.threads} thread(s), decode on one; "
                  f"whole benchmark {time.perf_counter() - started:.0f} s"),
        ("load", _load_line(load_start, _loadavg())),
    ]
    for key, value in info:
        print(f"{key:<9} {value}")
    print()
    header = ("codec", "lossy tensors", "ratio", "encode MB/s", "decode MB/s", "rel L2",
              "cosine", "accuracy", "vs lossless", "gain kept")
    body = [(r["codec"], r["tensors"], f"{r['ratio']:.2f}", f"{r['enc']:.0f}", f"{r['dec']:.0f}",
             f"{r['rel_l2']:.3g}", f"{r['cosine']:.6f}", f"{r['acc']:.4f}",
             f"{r['rel_acc']:.3f}", f"{r['kept']:.3f}") for r in rows]
    widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
    for r in [header] + body:
        print("  ".join([str(r[0]).ljust(widths[0])]
                        + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]))
    for r in rows:
        if r["per_tensor"]:
            print(f"\n{r['codec']} on one tensor at a time (the others exact): accuracy")
            width = max(map(len, r["per_tensor"]))
            for name, acc in r["per_tensor"].items():
                print(f"  {name.ljust(width)}  {acc:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width", type=int, default=1024, help="toy model width (params ~ 8*width^2)")
    p.add_argument("--task", default="sentiment", help="toy task fine-tuned on and evaluated")
    p.add_argument("--pretrain-steps", type=int, default=10)
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--eval", type=int, default=4000, help="held-out examples for accuracy")
    p.add_argument("--repeats", type=int, default=3, help="timed encodes and decodes per codec")
    p.add_argument("--threads", type=int, default=1, help="encoder workers (and torch threads)")
    p.add_argument("--codec", action="append", metavar="SPEC",
                   help=f"a --codec spec, repeatable (default: {', '.join(DEFAULT_SPECS)})")
    p.add_argument("--per-tensor", action="append", default=[], metavar="SPEC",
                   help="for this spec (one of --codec), also the accuracy with only one tensor "
                        "stored with it, per tensor (repeatable)")
    args = p.parse_args(argv)
    args.codec = args.codec or list(DEFAULT_SPECS)
    if min(args.repeats, args.width, args.threads, args.eval) < 1:
        p.error("--repeats, --width, --threads and --eval must be positive")
    from tvreg.codecs.spec import parse
    from tvreg.errors import InvalidInput

    try:
        args.codec = [str(parse(spec)) for spec in args.codec]
        args.per_tensor = [str(parse(spec)) for spec in args.per_tensor]
    except InvalidInput as e:
        p.error(str(e))
    run(args)


if __name__ == "__main__":
    main()
