"""Key/value stores that hold a registry's objects and records (see :class:`Store`)."""

from .base import MissingKey, Store
from .fsspec_store import FsspecStore
from .local import LocalStore

__all__ = ["Store", "LocalStore", "FsspecStore", "MissingKey"]
