"""Shared fixtures: a real fine-tuned toy zoo (safetensors files) and fresh registries."""

from __future__ import annotations

import os
import pathlib

import pytest

import tvreg
from tvreg.testing import make_toy_zoo


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test touches ~/.tvreg or shows progress bars; lock waits stay short."""
    monkeypatch.setenv("TVREG_HOME", str(tmp_path / "default-registry"))
    monkeypatch.setenv("TVREG_NO_PROGRESS", "1")
    monkeypatch.setenv("TVREG_LOCK_TIMEOUT", os.environ.get("TVREG_TEST_LOCK_TIMEOUT", "60"))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """Base + three fine-tuned checkpoints of a small real model (fine-tuned for 20 steps)."""
    return make_toy_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def zoo_bf16(tmp_path_factory):
    return make_toy_zoo(tmp_path_factory.mktemp("zoo-bf16"), dtype=__import__("torch").bfloat16)


@pytest.fixture
def reg_path(tmp_path) -> pathlib.Path:
    return tmp_path / "registry"


@pytest.fixture
def reg(reg_path):
    with tvreg.open(reg_path) as r:
        yield r


@pytest.fixture
def filled(reg, zoo):
    """A registry holding sentiment@1, topic@1 and toxicity@1."""
    for task, path in zoo.finetuned.items():
        reg.create(task, zoo.base, path, **zoo.meta[task])
    return reg
