"""``push --with-base`` and ``pull --with-base``: the stored bases of the versions moved, with
their names, under the rules of vectors (docs/format.md §9.2, §9.3): objects first (blobs, then
the manifest), each checked against its hash, then the base record, then the names. A base
record on the other side means its objects are there (they went before it), so nothing of it is
sent again. Every base is found (and checked) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tvreg.errors import CorruptObject, FormatError, InvalidInput, NotFound
from tvreg.format.bases import BaseName, BaseRecord, base_key
from tvreg.format.records import utc_now
from tvreg.storage.documents import base_name_keys, or_none, read_base, read_base_name, read_many
from tvreg.util.listings import listing

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.format.records import VersionRecord
    from tvreg.repo.repo import Repo
    from tvreg.stores import Store

SHOW = 3  # users of a base named in a message


@dataclass
class BaseTransfer:
    """What to copy: the bases the other side lacks (record and manifest each), and the names
    of every base of the versions."""

    records: dict[str, BaseRecord] = field(default_factory=dict)   # base hash -> record
    manifests: dict[str, Manifest] = field(default_factory=dict)  # manifest id -> manifest
    names: list[BaseName] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)                   # every base of the versions
    problems: list[str] = field(default_factory=list)               # pull: damaged names there

    def blob_ids(self) -> set[str]:
        return {b for m in self.manifests.values() for b in m.blob_ids()}


def _bases_of(records: list[VersionRecord]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.base_hash, []).append(r.ref)
    return out


def _there(store: Store, hashes: list[str]) -> dict[str, BaseRecord | None]:
    read = or_none(lambda key: read_base(store, key))  # damaged there: it holds the key anyway
    keys = [base_key(h) for h in hashes]
    found = dict(zip(hashes, read_many(read, keys), strict=True))
    for h, key in zip(hashes, keys, strict=True):
        if found[h] is None and store.exists(key):  # damaged: never overwritten; skip it
            found[h] = False  # type: ignore[assignment]
    return found


# --- push -------------------------------------------------------------------------------------


def plan_push(reg: Repo, records: list[VersionRecord], store: Store, *,
              exact_only: bool = False) -> BaseTransfer:
    """The bases of ``records`` to send: every one must be stored here (else InvalidInput,
    before anything is sent); those the remote already has are left out."""
    from tvreg.repo.bases import names_of

    users = _bases_of(records)
    found = {h: reg.base_record(h) for h in sorted(users)}
    ours = {h: rec for h, rec in found.items() if rec is not None}
    missing = [h for h, rec in found.items() if rec is None]
    if missing:
        h = missing[0]
        raise InvalidInput(f"no stored base for {h[:12]}… (the base of {listing(users[h], SHOW)})"
                           + (f" and {len(missing) - 1} other base(s)" if len(missing) > 1 else "")
                           + (": exact-mode versions are read with their base; run `tvreg base "
                              "add P` first" if exact_only else
                              ": run `tvreg base add P` first, or push without --with-base"))
    plan = BaseTransfer(hashes=set(users))
    there = _there(store, sorted(users))
    for h, rec in ours.items():
        if there[h] is None:
            plan.records[h] = rec
            plan.manifests[rec.manifest] = reg.base_manifest(rec, fresh=True)
    plan.names = [BaseName(n, h, "") for n, h in sorted(names_of(reg).items()) if h in users]
    return plan


def push_records(store: Store, plan: BaseTransfer) -> tuple[int, int]:
    """After the objects: the base records (exclusive create), then the names that differ
    there. Returns (records written, names written)."""
    sent = sum(store.write_new(r.key, r.to_bytes()) for r in plan.records.values())
    read = or_none(lambda key: read_base_name(store, key))
    named = 0
    for name, current in zip(plan.names, read_many(read, [n.key for n in plan.names]), strict=True):
        if current is not None and current.base_hash == name.base_hash:
            continue
        store.write(name.key, BaseName(name.name, name.base_hash, utc_now()).to_bytes())
        named += 1
    return sent, named


# --- pull -------------------------------------------------------------------------------------


def plan_pull(reg: Repo, src: Store, records: list[VersionRecord],
              remote: str, *, exact_only: bool = False) -> BaseTransfer:
    """The bases of ``records`` to fetch from ``src``: those not stored here, each of which
    the remote must hold (else NotFound, before anything is written); their manifests are
    filled in by the caller (fetched and checked with the vectors')."""
    users = _bases_of(records)
    plan = BaseTransfer(hashes=set(users))
    wanted = [h for h in sorted(users) if reg.base_record(h) is None]
    for h in wanted:
        try:
            rec = read_base(src, base_key(h))
        except (FormatError, CorruptObject) as e:
            raise CorruptObject(f"remote {remote}: {e}") from None
        except NotFound:
            raise NotFound(f"remote {remote} has no stored base {h[:12]}… (the base of "
                           f"{listing(users[h], SHOW)}): "
                           + ("exact-mode versions are read with their base; push it there "
                              "with `tvreg push --with-base`" if exact_only else
                              "pull without --with-base, or push it there with `tvreg push "
                              "--with-base`")) from None
        plan.records[h] = rec
    from tvreg.storage.documents import readable

    damaged: list[str] = []  # a damaged name is not pulled, and is reported
    names = readable(base_name_keys(src), lambda key: read_base_name(src, key), damaged,
                     keyed=False)
    plan.names = [n for n in names if n.base_hash in plan.hashes]
    plan.problems += [f"remote {remote}: {p} (not pulled)" for p in damaged]
    return plan


def check_manifests(plan: BaseTransfer, manifests: dict[str, Manifest], remote: str) -> None:
    """Every fetched base manifest is what its record says (hashes, sizes)."""
    for rec in plan.records.values():
        if not rec.describes(manifests[rec.manifest]):
            raise CorruptObject(f"remote {remote}: {rec.key} does not match its manifest "
                                f"{rec.manifest[:12]} (base hash, architecture or sizes differ)")
        plan.manifests[rec.manifest] = manifests[rec.manifest]


def pull_records(reg: Repo, plan: BaseTransfer) -> tuple[int, int]:
    """After the objects: the base records here (exclusive create) and the catalog, then the
    names (moved here like tags). Returns (bases added, names set)."""
    from tvreg.repo.bases import _index, set_name

    added = [r for r in plan.records.values() if reg.store.write_new(r.key, r.to_bytes())]
    if added:
        _index(reg, added, {r.base_hash: plan.manifests[r.manifest] for r in added})
    named = sum(set_name(reg, n.name, n.base_hash)[1] != n.base_hash for n in plan.names)
    return len(added), named
