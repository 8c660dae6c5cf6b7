"""gc of a remote (``tvreg gc --remote NAME``) and the remote locks that make it safe
(docs/format.md §11.2).

Objects are content addressed, so a push that finds an object already on the remote does not
send it and will name it in a record. A gc that deleted that object between the push's listing
and its record would lose data, however old the object is. So both take a lock on the remote, a
file under ``locks/``:

* a push creates ``locks/push-UUID.json`` (shared: pushes do not exclude one another) before it
  reads anything there, rewrites it every :data:`REFRESH_SECONDS` while it runs, and deletes it
  when it ends (failed or not);
* a gc creates ``locks/gc-UUID.json``, then lists ``locks/``: if any other lock is fresh, it
  deletes its own and refuses. A push that finds a fresh gc lock after creating its own deletes
  its own and tries again with backoff for up to ``$TVREG_LOCK_TIMEOUT`` seconds, then fails.

Both create, then check, so of two parties that race, at least one sees the other and backs off
(both may). A lock is stale, and ignored (gc removes it), when its holder has not rewritten it
for :data:`STALE_SECONDS`, or when it was taken on this machine (same host name, boot and PID
namespace) by a process that no longer exists. Under its lock a gc knows that no tvreg push is
in flight: an object that no version record or base record names (through its manifest) is an
orphan. It still keeps objects younger than its grace period, for clients that take no lock.

A push that may leave orphans (it sends objects) notes so in the local registry first
(``remote-state/NAME/push-UUID.json``, listing the objects it is about to send) and removes the
note when it succeeds. A later successful push that finds notes of earlier pushes runs a gc of
the objects they list, without waiting: if other parties hold the remote, the notes stay for the
next push.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tvreg.errors import FormatError, InvalidInput, RemoteBusy, TvregError
from tvreg.storage.objects import ObjectDB

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.remote.config import Remote
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store

LOCKS = "locks"
#: a lock not rewritten for this long is stale (its holder is gone)
STALE_SECONDS = 1800.0
#: how often a holder rewrites its lock
REFRESH_SECONDS = 300.0
#: the local folder of the notes of pushes that may have left orphans, one folder per remote
STATE = "remote-state"


# --- who holds a lock ----------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux, clock ticks since boot), None if it does not
    exist; with the PID it names one process, whatever PIDs are reused."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _machine() -> dict:
    """Where this process runs: host name, boot id and PID namespace (empty where unknown)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return {"host": socket.gethostname(), "boot": _read_text("/proc/sys/kernel/random/boot_id"),
            "pidns": pidns}


def _holder(kind: str) -> dict:
    from tvreg import __version__

    return {"kind": kind, **_machine(), "pid": os.getpid(),
            "start": _start_time(os.getpid()) or "", "time": time.time(),
            "tvreg": __version__}


@dataclass
class Lock:
    """A lock file on a remote (push or gc): who holds it, since when, and whether it is stale."""

    key: str
    kind: str           # "push" or "gc"
    doc: dict
    stale: bool

    @property
    def who(self) -> str:
        host, pid = self.doc.get("host"), self.doc.get("pid")
        return f"{host} PID {pid}" if host and pid else "unknown holder"


def _dead_here(doc: dict) -> bool:
    """Whether the lock was taken in this PID namespace of this boot of this machine by a
    process that no longer runs (elsewhere nothing can be known: not dead)."""
    here = _machine()
    if not (here["boot"] and here["pidns"]):
        return False
    if any(doc.get(k) != here[k] for k in ("host", "boot", "pidns")):
        return False
    pid = doc.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = _start_time(pid)
    if started is None:
        return True
    recorded = doc.get("start")  # another process that got the same PID: the holder is gone
    return bool(recorded) and started != recorded


def read_locks(store: Store, now: float | None = None) -> list[Lock]:
    """Every lock on the remote, each judged fresh or stale. A lock that does not parse (a
    write cut short) is judged by the time the store gives it."""
    now = time.time() if now is None else now
    out = []
    for key in sorted(store.list(LOCKS)):
        name = key.rsplit("/", 1)[-1]
        kind = name.split("-", 1)[0]
        if kind not in ("push", "gc") or not name.endswith(".json"):
            continue
        try:
            doc = json.loads(store.read(key))
            if not isinstance(doc, dict) or not isinstance(doc.get("time"), (int, float)):
                raise ValueError
            stale = now - doc["time"] > STALE_SECONDS or _dead_here(doc)
        except (ValueError, TvregError):
            try:
                doc, stale = {}, now - store.mtime(key) > STALE_SECONDS
            except TvregError:
                continue  # gone meanwhile
        out.append(Lock(key, kind, doc, stale))
    return out


class _Held:
    """A lock this process created; rewritten every :data:`REFRESH_SECONDS` until released."""

    def __init__(self, store: Store, kind: str) -> None:
        self.store, self.kind = store, kind
        self.key = f"{LOCKS}/{kind}-{uuid.uuid4().hex}.json"
        self._doc = _holder(kind)
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._released = False
        store.write_new(self.key, self._bytes())
        self._thread = threading.Thread(target=self._refresh, daemon=True,
                                        name=f"tvreg-{kind}-lock")
        self._thread.start()

    def _bytes(self) -> bytes:
        return json.dumps(self._doc, sort_keys=True).encode() + b"\n"

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            with self._mutex:
                if self._released:
                    return
                self._doc["time"] = time.time()
                with contextlib.suppress(Exception):  # the next rewrite may succeed
                    self.store.write(self.key, self._bytes())

    def others(self) -> list[Lock]:
        return [lk for lk in read_locks(self.store) if lk.key != self.key]

    def release(self) -> None:
        """Delete the lock (best effort: a lock left behind goes stale)."""
        self._stop.set()
        with self._mutex:
            if self._released:
                return
            self._released = True
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.store.delete(self.key)


@contextlib.contextmanager
def push_lock(store: Store, timeout: float, label: str) -> Iterator[None]:
    """Hold a push lock on the remote; waits (backoff, up to ``timeout`` seconds) while a
    fresh gc lock is there, then raises :class:`RemoteBusy`."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        held = _Held(store, "push")
        try:
            gcs = [lk for lk in held.others() if lk.kind == "gc" and not lk.stale]
        except BaseException:
            held.release()
            raise
        if not gcs:
            break
        held.release()
        if time.monotonic() >= deadline:
            raise RemoteBusy(f"{label}: a gc of it ({gcs[0].who}) held its lock for "
                             f"{timeout:g}s; nothing was pushed: push again later, or raise "
                             "$TVREG_LOCK_TIMEOUT")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    try:
        yield
    finally:
        held.release()


@contextlib.contextmanager
def gc_lock(store: Store, label: str) -> Iterator[list[Lock]]:
    """Hold the gc lock of the remote; raises :class:`RemoteBusy` at once if any other fresh
    lock is there. Yields the stale locks found (the caller may remove them)."""
    held = _Held(store, "gc")
    try:
        others = held.others()
        fresh = [lk for lk in others if not lk.stale]
        if fresh:
            what = (f"a push to {label} is in progress" if fresh[0].kind == "push"
                    else f"another gc of {label} is in progress")
            raise RemoteBusy(f"{what} ({fresh[0].who}); run gc again later")
        yield [lk for lk in others if lk.stale]
    finally:
        held.release()


# --- what a remote references --------------------------------------------------------------------


def reachable(store: Store) -> set[str]:
    """Ids of every manifest that a version record or a base record of the remote names, and
    of their blobs. A record or manifest that does not read refuses gc (its blobs cannot be
    named)."""
    from tvreg.errors import CorruptObject
    from tvreg.format.manifest import Manifest
    from tvreg.storage.documents import base_keys, read_base, read_many, read_record, record_keys

    objects = ObjectDB(store)
    keep: set[str] = set()
    try:
        manifests = {rec.vector_id for rec in read_many(lambda k: read_record(store, k),
                                                        record_keys(store))}
        manifests |= {rec.manifest for rec in read_many(lambda k: read_base(store, k),
                                                        base_keys(store))}
    except FormatError as e:
        raise FormatError(f"gc refused: {store}: {e}") from None

    def blobs(vid: str) -> set[str]:
        try:
            return Manifest.from_bytes(objects.get(vid)).blob_ids()
        except (CorruptObject, FormatError):
            raise FormatError(f"gc refused: {store}: manifest {vid} is missing or corrupted "
                              "(a record there names it); nothing was deleted") from None

    for ids in read_many(blobs, sorted(manifests)):
        keep |= ids
    return keep | manifests


# --- gc ------------------------------------------------------------------------------------------


@dataclass
class RemoteGcReport:
    """What a gc of a remote deleted (or would delete), kept, and cleaned up."""

    remote: str
    url: str
    deleted_objects: int = 0
    deleted_bytes: int = 0
    kept_recent: int = 0
    stale_locks_removed: int = 0
    temp_files_removed: int = 0
    dry_run: bool = False
    deleted: list[str] = field(default_factory=list, repr=False)
    kept: list[str] = field(default_factory=list, repr=False)  # unreferenced, too recent

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        del out["deleted"], out["kept"]
        return out


def writable_store(remote: Remote) -> Store:
    if not remote.writable:
        raise InvalidInput(f"remote {remote.name} ({remote.url}) is read-only: "
                           f"{remote.protocol} remotes cannot be garbage-collected")
    return remote.store()


def gc_remote(remote: Remote, *, grace_seconds: float, dry_run: bool = False,
              only: Iterable[str] | None = None) -> RemoteGcReport:
    """Delete the remote's objects that nothing there references and that are older than
    ``grace_seconds`` (with ``only``: just those of these ids), its stale locks and the temp
    files of interrupted writes. Raises :class:`RemoteBusy` while another party holds a fresh
    lock there. ``dry_run`` takes no lock and changes nothing."""
    store = writable_store(remote)
    rep = RemoteGcReport(remote.name, remote.url, dry_run=dry_run)
    with (gc_lock(store, f"remote {remote.name} ({remote.url})") if not dry_run
          else _stale_only(store)) as stale:
        keep = reachable(store)
        objects = ObjectDB(store)
        ids = set(objects.ids())
        if only is not None:
            ids &= set(only)
        now = time.time()
        for oid in sorted(ids - keep):
            try:
                size, age = objects.size(oid), now - objects.mtime(oid)
            except TvregError:
                continue  # gone meanwhile
            if age < grace_seconds:
                rep.kept_recent += 1
                rep.kept.append(oid)
                continue
            rep.deleted_objects += 1
            rep.deleted_bytes += size
            rep.deleted.append(oid)
            if not dry_run:
                objects.delete(oid)
        for lk in stale:
            rep.stale_locks_removed += 1
            if not dry_run:
                store.delete(lk.key)
        if only is None:
            rep.temp_files_removed = store.clean_temporary(grace_seconds, dry_run)
    return rep


@contextlib.contextmanager
def _stale_only(store: Store) -> Iterator[list[Lock]]:
    yield [lk for lk in read_locks(store) if lk.stale]


# --- notes of pushes that may have left orphans (in the local registry) --------------------------


def _notes_folder(remote_name: str) -> str:
    return f"{STATE}/{remote_name}"


class PushNote:
    """The local note of one push to ``remote_name``: written before its first object is sent,
    removed when it succeeds."""

    def __init__(self, reg: Repo, remote_name: str) -> None:
        self.reg, self.remote_name = reg, remote_name
        self.key = f"{_notes_folder(remote_name)}/push-{uuid.uuid4().hex}.json"
        self.written = False

    def write(self, oids: Iterable[str]) -> None:
        doc = {"remote": self.remote_name, "time": time.time(), "objects": sorted(oids)}
        self.reg.store.write(self.key, json.dumps(doc).encode() + b"\n")
        self.written = True

    def remove(self) -> None:
        if self.written:
            self.reg.store.delete(self.key)
            self.written = False


def notes(reg: Repo, remote_name: str) -> dict[str, set[str]]:
    """The notes left by pushes to ``remote_name`` that did not succeed: key -> object ids (a
    note that does not read names nothing; it is removed with the others)."""
    out: dict[str, set[str]] = {}
    for key in reg.store.list(_notes_folder(remote_name)):
        try:
            doc = json.loads(reg.store.read(key))
            out[key] = {o for o in doc.get("objects", []) if isinstance(o, str)}
        except (ValueError, AttributeError, TvregError):
            out[key] = set()
    return out


def forget(reg: Repo, remote_name: str) -> None:
    """Remove every note of ``remote_name`` (the remote was removed from the config)."""
    for key in list(reg.store.list(_notes_folder(remote_name))):
        reg.store.delete(key)


def collect_after_push(reg: Repo, remote: Remote) -> tuple[RemoteGcReport | None, str]:
    """After a successful push: if earlier pushes left notes, delete the orphans they list
    (unreferenced, any age: they are this registry's own) and the notes. Returns the report
    (None if nothing was tried or the remote was busy) and, for a failure other than a busy
    remote, one line saying why the notes stay."""
    pending = notes(reg, remote.name)
    if not pending:
        return None, ""
    try:
        rep = gc_remote(remote, grace_seconds=0.0,
                        only=set().union(*pending.values()))
    except RemoteBusy:
        return None, ""  # others are pushing: next time
    except (TvregError, OSError) as e:
        return None, " ".join(str(e).split())[:300] or type(e).__name__
    for key in pending:
        reg.store.delete(key)
    return rep, ""


def collect(reg: Repo, remote: Remote, *, grace_seconds: float,
            dry_run: bool = False) -> RemoteGcReport:
    """``tvreg gc --remote``: :func:`gc_remote`, then (unless ``dry_run``) the notes of failed
    pushes to it are done with, unless they list an orphan that was younger than the grace
    (the next push deletes it)."""
    pending = notes(reg, remote.name)
    rep = gc_remote(remote, grace_seconds=grace_seconds, dry_run=dry_run)
    if not dry_run:
        kept = set(rep.kept)
        for key, oids in pending.items():
            if not oids & kept:
                reg.store.delete(key)
    return rep
