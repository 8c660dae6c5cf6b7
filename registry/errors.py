"""Typed exceptions. Every error tvreg raises on purpose derives from :class:`TvregError`.

Each class carries the CLI exit code it maps to: 2 for bad input (the user can fix the command),
1 for a failure of the registry or its environment (corruption, a lock held too long, I/O).
Messages are one line and, where there is one, say the fix.
"""

from __future__ import annotations


class TvregError(Exception):
    """Base of every tvreg error."""

    exit_code = 1


# --- bad input (exit 2) -----------------------------------------------------------------------


class InvalidInput(TvregError):
    """The request itself is malformed: a bad name, ref, option or metadata value."""

    exit_code = 2


class InvalidName(InvalidInput):
    """A vector or tag name that breaks the naming rules."""


class InvalidRef(InvalidInput):
    """A ref string that cannot be parsed."""


class NotFound(InvalidInput):
    """A ref, name, tag or object that does not exist."""


class BaseNotStored(NotFound):
    """A base that is named (``tvreg base name``) but whose weights are not stored."""


class AmbiguousRef(InvalidInput):
    """An id prefix that matches more than one vector."""


class CheckpointError(InvalidInput):
    """A checkpoint that is missing, unreadable, or only loadable by unpickling."""


class IncompatibleCheckpoints(InvalidInput):
    """Base and fine-tuned checkpoints whose tensor names, shapes or dtypes differ."""


class NonFiniteValues(InvalidInput):
    """A task vector with NaN or Inf values (allowed only on request)."""


class ReadOnlyRegistry(InvalidInput):
    """A write on a registry opened read-only (a remote opened by URL)."""


class SQLError(InvalidInput):
    """A query that fails, or that tries to write through the read-only SQL interface."""


# --- failures (exit 1) ------------------------------------------------------------------------


class CorruptObject(TvregError):
    """Stored bytes whose hash does not match their name or manifest. Never returned."""


class FormatError(TvregError):
    """A stored JSON document (manifest, record, config) that does not follow the format."""


class RegistryBusy(TvregError):
    """Another process held a lock of the registry for longer than ``$TVREG_LOCK_TIMEOUT``: the
    catalog's (:class:`CatalogBusy`) or the gc lock (a gc deleting, or writes recording
    versions; docs/format.md §11)."""


class CatalogBusy(RegistryBusy):
    """Another process held the catalog's write lock for longer than the timeout."""


class RemoteBusy(RegistryBusy):
    """Another party held a lock on a remote (docs/format.md §9.4): a push while
    ``gc --remote`` runs (gc refuses at once), or a gc for longer than a push waits."""


class RemoteError(TvregError):
    """A remote's backend failed: unreachable endpoint, access denied, missing bucket…"""


class RegistryError(TvregError):
    """Any other failure of the registry (unexpected state on disk)."""


# --- warnings -----------------------------------------------------------------------------------


class ZeroVectorWarning(UserWarning):
    """A fine-tuned checkpoint equal to its base: the task vector is all zeros. It is still
    stored, but that is almost always the wrong file."""
