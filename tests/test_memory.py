"""Bounded memory (docs/reliability.md §5), at CI sizes: each test pins one cause of memory use
that grew with a checkpoint's or a vector's size, found by ``benchmarks/bench_memory.py``
(which runs create, push, pull, apply and export of a 3 GB vector under a 1.5 GB cap)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from tvreg.codecs import choose_pipeline
from tvreg.similarity import compute as similarity
from tvreg.tensors.encoding import TensorEncoder

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")


def _sparse_safetensors(path, nbytes: int) -> None:
    """A valid safetensors file of one float32 tensor of ``nbytes`` zeros, as a sparse file."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4],
                               "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)


def test_a_checkpoint_is_opened_and_a_delta_checked_within_a_small_data_limit(tmp_path):
    """Under RLIMIT_DATA = what the process uses + 200 MB: opening a 4 GB checkpoint costs
    nothing (the safetensors library maps the whole file private and writable just to validate
    it, which counts its size against the limit), and checking a 128 MB delta for NaN/Inf
    makes no float64 copy of it (torch's sum(dtype=float64) made one twice its size)."""
    big = tmp_path / "big.safetensors"
    _sparse_safetensors(big, 4 << 30)
    script = textwrap.dedent(f"""
        import resource, torch
        from tvreg.tensors.build import _check_finite
        from tvreg.tensors.checkpoints import open_checkpoint
        data = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                    if l.startswith("VmData:"))
        cap = data + (200 << 20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        with open_checkpoint({str(big)!r}) as ck:
            assert ck.info("w").numel == 1 << 30
        x = torch.ones(32 << 20)            # 128 MB
        _check_finite("x", x)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_an_encoded_delta_is_freed_without_the_garbage_collector(tmp_path):
    """The encoder's bookkeeping made a reference cycle through each delta (a done-callback
    holding it, kept by its futures), so deltas lived until a cyclic collection, which counts
    objects, not bytes: create's memory grew with the number of tensors."""
    blobs = {}
    gate = threading.Event()  # the chunks are stored only once submit() has returned, so the
    # bookkeeping waits on running futures (as it does for large tensors)

    def put(data: bytes) -> str:
        assert gate.wait(30)
        blobs[len(blobs)] = data
        return f"{len(blobs):064x}"

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with TensorEncoder(put, chunk_bytes=1 << 16, workers=2) as encoder:
            pointers = set()
            for i in range(3):
                delta = torch.full((1 << 16,), float(i))
                pointers.add(delta.data_ptr())
                future = encoder.submit(f"t{i}", delta, "float32", choose_pipeline(delta, 4))
                del delta
                gate.set()
                assert future.result().chunks
                gate.clear()
            # no tensor object (the encoder keeps a detached view) still holds their memory
            alive = [o for o in gc.get_objects()
                     if type(o) is torch.Tensor and o.data_ptr() in pointers]
            assert alive == []
    finally:
        if was_enabled:
            gc.enable()


def test_similarity_statistics_decode_a_bounded_number_of_bytes_ahead(reg, zoo, monkeypatch):
    """The statistics pass decoded one tensor ahead per worker (8 on 8 cores), whatever their
    size; now at most AHEAD_BYTES of them (at least the next one)."""
    result = reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], similarities=False)
    entries = list(result.manifest.tensors)
    assert len(entries) > 3
    decoding, worst = [0], [0]
    real = reg.load_tensor

    def counted(entry, out=None):
        decoding[0] += 1
        worst[0] = max(worst[0], decoding[0])
        return real(entry, out)

    monkeypatch.setattr(reg, "load_tensor", counted)
    monkeypatch.setattr(similarity, "AHEAD_BYTES", 1)  # every tensor is "too big" to queue two
    for _, tensor in similarity._decoded(reg, entries):
        decoding[0] -= 1  # handed over: no longer ahead
        del tensor
    assert worst[0] <= 2  # the one handed over and the next one
    monkeypatch.setattr(similarity, "AHEAD_BYTES", 1 << 30)
    stats = similarity.vector_stats(reg, result.record.vector_id)
    assert stats.n_params == result.manifest.n_params
