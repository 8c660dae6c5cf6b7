"""Key/value stores that hold a registry's objects and records (see :class:`Store`)."""

from tvreg.stores.base import MissingKey, Store
from tvreg.stores.fsspec_store import FsspecStore
from tvreg.stores.local import LocalStore

__all__ = ["Store", "LocalStore", "FsspecStore", "MissingKey"]
