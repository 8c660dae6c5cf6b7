"""Another registry's store as the target of a write: :class:`StoreTarget`.

:func:`~tvreg.repo.write.write_vector` and :func:`~tvreg.repo.create.stage` store a vector's
objects and manifest in a :class:`~tvreg.repo.write.VectorTarget`: a local registry (a
:class:`~tvreg.repo.repo.Repo`), or a :class:`StoreTarget`, any store with the registry layout
(a remote: ``tvreg ingest --to REMOTE`` stages straight into it). Only objects go there; making
versions of them is the caller's (for a remote, :mod:`tvreg.remote.ingest`, as push does).

A ``StoreTarget`` is opened by a callable (``open_store``, e.g. a remote's ``store`` method),
which is all that is pickled: a Dask task that receives one opens the store on its worker. The
store is opened on first use, so a copy that is only passed around opens nothing.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvreg.errors import ReadOnlyRegistry
from tvreg.storage.objects import ObjectDB

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.stores import Store


class StoreTarget:
    """The store ``open_store()`` opens, as where :func:`~tvreg.repo.create.stage` writes a
    vector's objects and manifest. ``label`` names it in messages; ``key`` says which store it
    is (two targets of one key are the same store: a worker process keeps one open per key)."""

    #: a store with the registry layout needs no init
    exists = True
    #: others may name its objects without checking them again (a push lists ``objects/``,
    #: then writes records): a failed write leaves its objects there for gc, never deletes them
    keeps_failed_objects = True

    def __init__(self, open_store: Callable[[], Store], label: str, key: str) -> None:
        self.open_store, self.label, self.key = open_store, label, key
        self._store: Store | None = None
        self._objects: ObjectDB | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"<StoreTarget {self.label}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoreTarget, (self.open_store, self.label, self.key))

    @property
    def store(self) -> Store:
        """The store (opened on first use)."""
        with self._mutex:
            if self._store is None:
                self._store = self.open_store()
                self._objects = ObjectDB(self._store)
            return self._store

    @property
    def objects(self) -> ObjectDB:
        """The store's content-addressed objects."""
        self.store  # noqa: B018 - opens it
        assert self._objects is not None
        return self._objects

    @property
    def root(self) -> str:
        """Where it is, for messages (its label: it has no local folder)."""
        return self.label

    @property
    def scratch(self) -> str:
        """Where writes stage their objects before they go to the store: the system's temp
        folder (the store has no local scratch folder)."""
        return tempfile.gettempdir()

    def require_writable(self) -> None:
        """:class:`ReadOnlyRegistry` if the store cannot be written (HTTP)."""
        if not self.store.writable:
            raise ReadOnlyRegistry(f"{self.label} is read-only")

    def init(self) -> bool:
        """Nothing to create: False."""
        return False
