"""benchmarks/bench_gpu.py runs end to end (on the CPU here, on CUDA where there is one) and
checks its own results against the host computation, so the GPU check cannot rot unseen."""

from __future__ import annotations

import pathlib
import sys

import torch

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_gpu_small_run(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = bench_gpu.run(bench_gpu.argparse.Namespace(
        device=device, k=3, model="toy", width=48, repeats=2, workdir=str(tmp_path / "w"),
        keep=False))
    out = capsys.readouterr().out
    labels = [r["label"] for r in results]
    assert labels[0].startswith("plain")
    assert "vector.state_dict(device)" in labels
    assert any("apply_to" in label for label in labels)
    assert all(len(r["times"]) == 2 and r["median"] > 0 for r in results)
    assert "results agree with the host computation" in out
    assert f"device    {device}" in out
    assert not (tmp_path / "w").exists()  # removed unless --keep
    sys.modules.pop("bench_gpu", None)
