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
    monkeypatch.setenv("TVREG_CACHE", str(tmp_path / "default-cache"))
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
def run(reg_path):
    """``run(*args, code=0)``: the CLI on the registry at ``reg_path`` (click's CliRunner),
    asserting its exit code; returns the result (stdout and stderr apart)."""
    from click.testing import CliRunner

    from tvreg.cli.main import cli

    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, ["--registry", str(reg_path), *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result

    return invoke


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback: moto's server (started once), for s3fs."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def serve_http():
    """``serve_http(folder) -> URL``: a real HTTP server (the standard library's) on loopback
    serving ``folder`` read-only, stopped after the test."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def serve(folder) -> str:
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size) -> folder``: a real tmpfs of ``size`` (e.g. ``"1m"``) mounted under
    ``tmp_path``, unmounted after the test; the test is skipped where mounting is not allowed
    (it needs root; CI runs as root)."""
    import subprocess

    mounts = []

    def make(size: str):
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)
