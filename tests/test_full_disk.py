"""A full disk during `tvreg create` (issue 14, item 13), on real small tmpfs mounts.

Needs root (mount -t tmpfs); skipped with the reason otherwise. CI runs as root."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import snapshot
from safetensors.numpy import save_file


@pytest.fixture
def ckpts(tmp_path):
    rng = np.random.default_rng(0)
    base = {"w": np.zeros((64, 64), np.float32)}
    small = {"w": rng.standard_normal((64, 64)).astype(np.float32)}  # ~16 KB
    big_base = {f"t{i}": np.zeros((256, 256), np.float32) for i in range(16)}
    big = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in big_base.items()}  # 4 MB
    paths = {}
    for name, sd in {"base": base, "small": small, "big_base": big_base, "big": big}.items():
        paths[name] = str(tmp_path / f"{name}.safetensors")
        save_file(sd, paths[name])
    return paths


def tvreg(registry, *args):
    env = {**os.environ, "TVREG_HOME": str(registry)}
    return subprocess.run([sys.executable, "-m", "tvreg.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _check_error(r, registry):
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert str(registry) in err and "no space left" in err.lower(), err
    assert "stage-" not in err and "Errno" not in err, err


def test_full_disk_create_into_new_registry_leaves_no_folder(small_disk, ckpts):
    disk = small_disk("1m")
    registry = disk / "reg"
    r = tvreg(registry, "create", "big", "--base", ckpts["big_base"], "--finetuned", ckpts["big"])
    _check_error(r, registry)
    assert not registry.exists(), sorted(p.name for p in registry.rglob("*"))
    assert os.listdir(disk) == []


def test_full_disk_create_into_existing_registry_leaves_it_as_it_was(small_disk, ckpts):
    disk = small_disk("3m")
    registry = disk / "reg"
    r = tvreg(registry, "create", "small", "--base", ckpts["base"], "--finetuned", ckpts["small"])
    assert r.returncode == 0, r.stderr
    before = snapshot(registry)
    r = tvreg(registry, "create", "big", "--base", ckpts["big_base"], "--finetuned", ckpts["big"])
    _check_error(r, registry)
    after = snapshot(registry)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    assert after == before
    r = tvreg(registry, "ls")
    assert r.returncode == 0 and "small" in r.stdout and "big" not in r.stdout, r.stdout
    r = tvreg(registry, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    r = tvreg(registry, "gc", "--dry-run", "--grace", "0")
    assert r.returncode == 0, r.stderr
    assert snapshot(registry) == before


def test_full_remote_push_names_remote_and_url(small_disk, ckpts, tmp_path):
    disk = small_disk("1m")
    registry = tmp_path / "reg"
    r = tvreg(registry, "create", "big", "--base", ckpts["big_base"], "--finetuned", ckpts["big"])
    assert r.returncode == 0, r.stderr
    url = str(disk / "remote")
    r = tvreg(registry, "remote", "add", "team", url)
    assert r.returncode == 0, r.stderr
    r = tvreg(registry, "push", "team")
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "team" in err and url in err and "full" in err, err
    assert "Errno" not in err and ".tmp-" not in err, err
