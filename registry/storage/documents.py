"""Version records and tags as documents in any store (a local registry or a remote).

Reading checks a document's seal and that it sits at the key it names; claiming a version number
is an exclusive create, so two writers never hold the same ``NAME@N`` and nothing is overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from tvreg.digest import is_hex_digest
from tvreg.errors import CorruptObject, FormatError, InvalidInput, TvregError
from tvreg.format.bases import BASES, NAMES, BaseName, BaseRecord
from tvreg.format.records import TagRecord, VersionRecord, record_key

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.stores import Store

T = TypeVar("T")
K = TypeVar("K")


def read_keyed(store: Store, key: str, cls: Any, what: str) -> Any:
    """The document of class ``cls`` (sealed, with a ``key`` property) at ``key``, which must
    be the key its content names (a copy under another key is refused)."""
    doc = cls.from_bytes(store.read(key), key)
    if doc.key != key:
        raise FormatError(f"{key}: {what} names {doc.key}")
    return doc


def read_record(store: Store, key: str) -> VersionRecord:
    return read_keyed(store, key, VersionRecord, "record")


def read_tag(store: Store, key: str) -> TagRecord:
    return read_keyed(store, key, TagRecord, "tag")


def or_none(read: Callable[[str], T]) -> Callable[[str], T | None]:
    """``read``, but None for a document that is missing or does not read (damaged)."""
    from tvreg.stores import MissingKey

    def safe(key: str) -> T | None:
        try:
            return read(key)
        except (FormatError, CorruptObject, MissingKey):
            return None
    return safe


def parse_record_key(key: str) -> tuple[str, int]:
    """``refs/NAME/N.json`` -> ``(NAME, N)`` (a key :func:`record_keys` listed)."""
    return key[len("refs/"):key.rindex("/")], int(key.rsplit("/", 1)[1][:-len(".json")])


def documents_of(store: Store, folder: str) -> list[str]:
    """Keys of the ``*.json`` files directly in ``folder`` (not in sub-folders, which hold the
    documents of longer names such as ``NAME/sub``)."""
    prefix = folder + "/"
    try:
        keys = list(store.list(folder))
    except InvalidInput:  # not a valid key: no such documents
        return []
    return sorted(k for k in keys if "/" not in k[len(prefix):] and k.endswith(".json"))


def json_keys(store: Store, prefix: str) -> list[str]:
    """Keys of every ``*.json`` file under ``prefix`` (sub-folders too), sorted."""
    return sorted(k for k in store.list(prefix) if k.endswith(".json"))


def record_keys(store: Store, name: str | None = None) -> list[str]:
    """Keys of the version records of ``name`` (default: of every name)."""
    if name is None:
        keys = json_keys(store, "refs")
    else:
        keys = documents_of(store, f"refs/{name}")
    return sorted(k for k in keys if k.rsplit("/", 1)[1][:-5].isdigit())


def tag_keys(store: Store, name: str | None = None) -> list[str]:
    """Keys of the tags of ``name`` (default: of every name)."""
    if name is None:
        return json_keys(store, "tags")
    return documents_of(store, f"tags/{name}")


def read_many(read: Callable[[K], T], keys: Iterable[K], *, workers: int = 16) -> list[T]:
    """``read`` over ``keys`` on a thread pool (remote reads are round trips), in key order."""
    keys = list(keys)
    if len(keys) <= 1 or workers <= 1:
        return [read(k) for k in keys]
    with ThreadPoolExecutor(min(workers, len(keys)), thread_name_prefix="tvreg-read") as pool:
        return list(pool.map(read, keys))


def versions_in(store: Store, name: str, *, skip_damaged: bool = False) -> dict[int, VersionRecord]:
    """The versions of ``name`` in ``store`` by number. With ``skip_damaged`` a record that does
    not read is left out (it still holds its number: :func:`claim` never writes over it)."""
    out: dict[int, VersionRecord] = {}
    for key in record_keys(store, name):
        try:
            rec = read_record(store, key)
        except (FormatError, CorruptObject):
            if not skip_damaged:
                raise
            continue
        out[rec.version] = rec
    return out


def claim(store: Store, rec: VersionRecord, known: dict[int, VersionRecord],
          taken: Set[int] = frozenset()) -> tuple[VersionRecord, bool]:
    """Store ``rec`` (its content, metadata and creation time) as a version of its name.

    ``known`` holds the versions of the name already in ``store`` that could have ``rec``'s
    content (kept up to date), ``taken`` the numbers of the others. A version with the same
    content is reused: ``(that record, False)``. Otherwise ``rec``'s own number is tried, then
    the next free one, each by exclusive create: ``(the new record, True)``.
    """
    for _, r in sorted(known.items()):
        if r.same_content(rec):
            return r, False
    number = rec.version
    while True:
        if number in known or number in taken:
            number = max(max(known, default=0), max(taken, default=0)) + 1
            continue
        new = VersionRecord(rec.name, number, rec.vector_id, rec.base_hash, rec.arch_fingerprint,
                            rec.metadata, rec.created_at, rec.parents, rec.recipe)
        if store.write_new(record_key(rec.name, number), new.to_bytes()):
            known[number] = new
            return new, True
        try:  # taken (by another writer, or a damaged record): learn what is there, go on
            theirs = read_record(store, record_key(rec.name, number))
        except (FormatError, CorruptObject):
            number += 1
            continue
        known[number] = theirs
        if theirs.same_content(rec):
            return theirs, False



def readable(keys: list[str], read: Callable[[str], Any], problems: list[str], *,
             keyed: bool = True) -> list:
    """The documents at ``keys`` that ``read`` accepts (read in parallel: a remote's reads are
    round trips); the others go to ``problems`` as ``KEY: reason`` (``reason`` alone when not
    ``keyed``: the errors of :func:`read_keyed` name the key already)."""
    def attempt(key: str) -> Any:
        try:
            return read(key)
        except TvregError as e:
            return e

    out = []
    for key, got in zip(keys, read_many(attempt, keys), strict=True):
        if isinstance(got, TvregError):
            problems.append(f"{key}: {got}" if keyed else str(got))
        else:
            out.append(got)
    return out


# --- base records and base names (format/bases.py) in a store ---------------------------------


def read_base(store: Store, key: str) -> BaseRecord:
    return read_keyed(store, key, BaseRecord, "base record")


def read_base_name(store: Store, key: str) -> BaseName:
    return read_keyed(store, key, BaseName, "base name")


def base_keys(store: Store) -> list[str]:
    """Keys of the base records in ``store`` (the ``bases/HASH.json`` files); a store that
    cannot list them (HTTP, listed through its index, which holds versions and tags) has none."""
    return [k for k in documents_of(store, BASES) if is_hex_digest(k[len(BASES) + 1:-5])]


def base_name_keys(store: Store) -> list[str]:
    """Keys of the base names in ``store``; a store that cannot list them (HTTP) has none."""
    try:
        return sorted(k for k in store.list(NAMES) if k.endswith(".json"))
    except InvalidInput:
        return []
