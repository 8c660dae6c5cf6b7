"""``tvreg serve`` in a subprocess (a real uvicorn on loopback), for the web tests, the
benchmark and the screenshot script: started with ``--port 0``, its address read from the line
it prints; and the Chromium settings they drive it with."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
#: what Chromium needs on a machine with a closed network and as root (no sandbox)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


class Server:
    """A running ``tvreg serve``: its ``url`` (with ``?token=…`` when it printed one), the
    address without the token (``base``), and its output so far."""

    def __init__(self, proc: subprocess.Popen, url: str, lines: queue.Queue) -> None:
        self.proc = proc
        self.url = url
        self.base = url.split("?", 1)[0].rstrip("/")
        self._lines = lines
        self._seen: list[str] = []

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        while True:
            try:
                self._seen.append(self._lines.get_nowait())
            except queue.Empty:
                return "".join(self._seen)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """Its output once ``text`` is in it (stdout and stderr arrive in either order)."""
        deadline = time.monotonic() + timeout
        while text not in self.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.output()

    def get(self, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` of a request (an error status is returned, not raised)."""
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@contextlib.contextmanager
def tvreg_serve(registry: str | os.PathLike, *args: str, env: dict[str, str] | None = None,
                registry_options: tuple[str, ...] = (), timeout: float = 60.0
                ) -> Iterator[Server]:
    """Start ``tvreg --registry REGISTRY serve --port 0 ARGS…``; yield once it listens; stop it
    (SIGTERM, then SIGKILL) after."""
    cmd = [sys.executable, "-m", "tvreg.cli", "--registry", str(registry)]
    for option in registry_options:
        cmd += ["--registry-option", option]
    cmd += ["serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TVREG_NO_PROGRESS": "1", **(env or {})})
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    url = None
    deadline = time.monotonic() + timeout
    try:
        while url is None:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    time.sleep(0.2)  # what it printed last may still be on its way
                    if lines.empty():
                        raise RuntimeError(f"tvreg serve exited {proc.returncode}: "
                                           f"{''.join(seen)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tvreg serve did not start: {''.join(seen)}") from None
                continue
            seen.append(line)
            if line.startswith("tvreg serve: http"):
                url = line.split(": ", 1)[1].strip()
        server = Server(proc, url, lines)
        for line in seen:
            lines.put(line)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
