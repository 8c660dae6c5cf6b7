"""LocalStore: the shared store contract plus what only a local directory can show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tvreg.stores import LocalStore
from tvreg.stores.local import TMP_PREFIX
from tvreg.testing.store import StoreContract, temp_name_for


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(tmp_path / "store")

    def plant_temp_file(self, store, folder):
        path = temp_name_for(store.root, folder, TMP_PREFIX + "interrupted")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"half a value")
        hidden_dir = temp_name_for(store.root, folder, ".hidden-dir")
        os.makedirs(hidden_dir, exist_ok=True)
        with open(os.path.join(hidden_dir, "inner"), "wb") as f:
            f.write(b"x")


class TestLocalStoreWithoutFsync(TestLocalStore):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(tmp_path / "store", fsync=False)


# --- local-only behaviour ---------------------------------------------------------------------


def _all_files(root) -> list[str]:
    out = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(out)


def test_keys_map_to_plain_files(tmp_path):
    """A key is a file at the same relative path, holding exactly the value (so `sha256sum
    objects/ab/cdef…` checks a blob)."""
    store = LocalStore(tmp_path)
    store.write("objects/ab/cdef", b"blob")
    store.write_new("refs/x/1.json", b"{}")
    assert (tmp_path / "objects" / "ab" / "cdef").read_bytes() == b"blob"
    assert (tmp_path / "refs" / "x" / "1.json").read_bytes() == b"{}"


def test_no_temp_files_left_behind(tmp_path):
    store = LocalStore(tmp_path)
    store.write("a/k", b"1")
    store.write("a/k", b"2")
    assert store.write_new("a/n", b"3") is True
    assert store.write_new("a/n", b"4") is False
    src = tmp_path.parent / f"{tmp_path.name}-src"
    src.write_bytes(b"5")
    assert store.write_file("a/f", str(src)) is True
    src.write_bytes(b"6")
    assert store.write_file("a/f", str(src)) is False
    # failed writes clean up too: a value that is not bytes, and a key that is a folder
    with pytest.raises(TypeError):
        store.write("a/bad", 12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.write_new("a/bad", 12345)  # type: ignore[arg-type]
    store.write("d/child", b"x")
    with pytest.raises(OSError):
        store.write("d", b"replace a folder?")
    assert _all_files(tmp_path) == ["a/f", "a/k", "a/n", "d/child"]
    assert store.read("a/k") == b"2" and store.read("a/n") == b"3" and store.read("a/f") == b"5"


def test_concurrent_write_new_from_threads_has_one_winner(tmp_path):
    store = LocalStore(tmp_path)
    n = 8
    for round_ in range(5):
        key = f"refs/race/{round_}.json"
        barrier = threading.Barrier(n)
        results: dict[int, bool] = {}
        errors: list[BaseException] = []

        def claim(i: int) -> None:
            try:
                barrier.wait()
                results[i] = store.write_new(key, f"writer {i}".encode())
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        winners = [i for i, won in results.items() if won]
        assert len(results) == n and len(winners) == 1
        assert store.read(key) == f"writer {winners[0]}".encode()
    assert _all_files(tmp_path) == [f"refs/race/{r}.json" for r in range(5)]


def test_concurrent_write_is_atomic_for_readers(tmp_path):
    """While two threads replace a key over and over, a reader only ever sees a whole value."""
    store = LocalStore(tmp_path, fsync=False)
    values = [b"a" * 300_000, b"b" * 200_000]
    store.write("k", values[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def writer(v: bytes) -> None:
        while not stop.is_set():
            store.write("k", v)

    threads = [threading.Thread(target=writer, args=(v,)) for v in values]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            seen.append(store.read("k"))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(s in values for s in seen)
    assert _all_files(tmp_path) == ["k"]


_RACER = textwrap.dedent("""
    import json, os, sys, time
    from tvreg.stores import LocalStore
    root, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = LocalStore(root)
    open(os.path.join(root, "..", f"ready-{me}"), "w").close()
    go = os.path.join(root, "..", "go")
    deadline = time.time() + 60
    while not os.path.exists(go):
        if time.time() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    won = [store.write_new(f"refs/race/{i}.json", me.encode()) for i in range(n)]
    print(json.dumps(won))
""")


def test_write_new_race_between_processes_has_one_winner(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(root), me, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in ("p0", "p1")]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready-{me}").exists() for me in ("p0", "p1")):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.time() < deadline, "racers did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    won = [json.loads(out) for out, _err in outs]
    store = LocalStore(root)
    for i in range(n):
        assert won[0][i] != won[1][i], f"key {i}: both or neither won"
        winner = "p0" if won[0][i] else "p1"
        assert store.read(f"refs/race/{i}.json") == winner.encode()
    assert _all_files(root) == sorted(f"refs/race/{i}.json" for i in range(n))
