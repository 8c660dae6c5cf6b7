"""Bulk ingest: many versions from a list, resumable (``tvreg ingest LIST.jsonl``).

The list is JSON Lines, one object a line (docs/cli.md, ``ingest``)::

    {"name": "sentiment", "base": "base.safetensors", "finetuned": "ft/sentiment.safetensors",
     "task": "sentiment", "dataset": "imdb", "lr": 2e-5, "steps": 150, "meta": {"seed": 0}}

``name`` and ``base`` are required, and exactly one of ``finetuned`` and ``lora`` (a PEFT
adapter folder); ``task``, ``dataset``, ``lr``, ``steps`` and ``meta`` are optional, as for
``tvreg create``. Paths are local (a URL is refused); a relative one is relative to the list's
folder. Every line is checked before anything is read or written: a bad line is one
:class:`~tvreg.errors.InvalidInput` naming its line, and the registry is untouched.

Each item's version records ``ingest.key`` in its metadata: the sha256 of the item's canonical
JSON (its fields as given, before paths are resolved). A rerun skips every item whose key a
version of its name already holds, so an interrupted or partly failed ingest is finished by
running it again; an item that failed is tried again. (The key is the line, not the files'
contents: a checkpoint rewritten at the same path needs a changed line, e.g. a ``meta`` field.)

Work is split as :func:`~tvreg.repo.create.stage` and :func:`~tvreg.repo.create.land`: the
engine's workers read the checkpoints and store each vector's objects and manifest in
parallel, and the calling thread makes the versions one at a time, in list order for the items
that finished, so the results are those of ``create`` run item by item (the same vector ids).
Similarities of the new versions are computed once at the end, in one pass per base, instead
of one pass per insert.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput, TvregError
from tvreg.names import validate_name
from tvreg.util import progress

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.records import VersionRecord
    from tvreg.repo.create import StagedVersion
    from tvreg.repo.repo import Repo
    from tvreg.repo.write import CreateResult, VectorTarget

#: the fields an item may have
FIELDS = ("name", "base", "finetuned", "lora", "task", "dataset", "lr", "steps", "meta")
#: the metadata key that records an item's key
KEY_META = "ingest.key"
ENGINES = ("local", "dask")


@dataclass(frozen=True)
class IngestItem:
    """One line of an ingest list: ``fields`` as given; ``base``, ``finetuned`` and ``lora``
    resolved against the list's folder."""

    line: int
    fields: dict[str, Any]
    base: str
    finetuned: str | None
    lora: str | None

    @property
    def name(self) -> str:
        """The version's name."""
        return str(self.fields["name"])

    @property
    def key(self) -> str:
        """sha256 of the item's canonical JSON (sorted keys, no spaces)."""
        text = json.dumps(self.fields, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def create_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~tvreg.repo.create.stage` for this item."""
        f = self.fields
        return {"lora": self.lora, "task": f.get("task"), "dataset": f.get("dataset"),
                "lr": f.get("lr"), "steps": f.get("steps"),
                "meta": {**dict(f.get("meta") or {}), KEY_META: self.key}}


@dataclass
class IngestResult:
    """What an ingest did, item by item (``outcomes[i]`` for the list's item ``i``: ``"created"``,
    ``"unchanged"`` (a version already held this content and metadata), ``"skipped"`` (landed
    by an earlier run) or ``"failed"``)."""

    items: list[IngestItem]
    outcomes: list[str] = field(default_factory=list)
    refs: list[str | None] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # line -> one-line error
    new_objects: int = 0
    created: list[VersionRecord] = field(default_factory=list)  # the new versions, in order

    def count(self, outcome: str) -> int:
        """How many items ended with ``outcome``."""
        return self.outcomes.count(outcome)

    def to_json(self) -> dict[str, Any]:
        """The counts and each item's line, name, outcome, ref and error (``tvreg ingest
        --json``)."""
        return {"created": self.count("created"), "unchanged": self.count("unchanged"),
                "skipped": self.count("skipped"), "failed": self.count("failed"),
                "new_objects": self.new_objects,
                "items": [{"line": it.line, "name": it.name, "outcome": o, "ref": r,
                           "error": self.errors.get(it.line)}
                          for it, o, r in zip(self.items, self.outcomes, self.refs,
                                              strict=True)]}


def read_list(path: str | os.PathLike) -> list[IngestItem]:
    """The items of the JSON Lines file at ``path`` (blank lines ignored); InvalidInput naming
    the first bad line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read ingest list {path}: {e}") from None
    folder = os.path.dirname(os.path.abspath(path))
    items: list[IngestItem] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{where}: not JSON ({e.msg})") from None
        item = parse_item(value, number, folder, where)
        if item.key in seen:
            raise InvalidInput(f"{where}: the same item as line {seen[item.key]}")
        seen[item.key] = number
        items.append(item)
    if not items:
        raise InvalidInput(f"ingest list {path} has no items")
    return items


def parse_item(value: Any, line: int, folder: str, where: str) -> IngestItem:
    """One item from its decoded JSON; InvalidInput starting with ``where``."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: an item is a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"{where}: unknown field {unknown[0]!r} (fields: "
                           f"{', '.join(FIELDS)})")
    for required in ("name", "base"):
        if not isinstance(value.get(required), str) or not value[required]:
            raise InvalidInput(f"{where}: {required!r} is required, a non-empty string")
    try:
        validate_name(value["name"])
    except TvregError as e:
        raise InvalidInput(f"{where}: {e}") from None
    if (value.get("finetuned") is None) == (value.get("lora") is None):
        raise InvalidInput(f"{where}: give exactly one of 'finetuned' and 'lora'")
    for key in ("finetuned", "lora", "task", "dataset"):
        if value.get(key) is not None and (not isinstance(value[key], str) or not value[key]):
            raise InvalidInput(f"{where}: {key!r} must be a non-empty string")
    lr = value.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                           or not math.isfinite(lr)):
        raise InvalidInput(f"{where}: 'lr' must be a finite number")
    steps = value.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
        raise InvalidInput(f"{where}: 'steps' must be an integer")
    if value.get("meta") is not None:
        meta = value["meta"]
        if not isinstance(meta, dict):
            raise InvalidInput(f"{where}: 'meta' must be a JSON object")
        if KEY_META in meta:
            raise InvalidInput(f"{where}: 'meta' may not set {KEY_META!r} (ingest sets it)")
    from tvreg.format.records import Metadata

    try:  # the checks create makes on metadata, before anything is read
        Metadata(task=value.get("task"), dataset=value.get("dataset"), lr=lr, steps=steps,
                 meta=dict(value.get("meta") or {}))
    except TvregError as e:
        raise InvalidInput(f"{where}: {e}") from None

    for key in ("base", "finetuned", "lora"):
        if isinstance(value.get(key), str) and "://" in value[key]:
            raise InvalidInput(f"{where}: {key!r} is a URL; checkpoints and adapters are read "
                               "from local paths (a folder the workers share)")

    def resolved(p: str | None) -> str | None:
        return None if p is None else os.path.join(folder, p)  # an absolute p stays itself

    return IngestItem(line, dict(value), str(resolved(value["base"])),
                      resolved(value.get("finetuned")), resolved(value.get("lora")))


def landed_keys(repo: Repo, names: Iterable[str]) -> dict[str, str]:
    """The ``ingest.key`` values the versions of ``names`` hold, each with the first version
    that holds it (``NAME@N``)."""
    names = sorted(set(names))
    if not repo.exists or not names:
        return {}
    key = f"json_extract_string(meta, '$.\"{KEY_META}\"')"
    with repo.catalog.reader() as con:
        rows = con.execute(
            f"SELECT {key}, name, min(version) FROM versions "
            f"WHERE name IN (SELECT unnest(?)) AND {key} IS NOT NULL "
            f"GROUP BY {key}, name", [names]).fetchall()
    return {k: f"{name}@{version}" for k, name, version in rows}


def landed_in(records: Iterable[VersionRecord]) -> dict[str, str]:
    """The ``ingest.key`` values ``records`` hold (a remote's, read there), each with the first
    version that holds it (``NAME@N``)."""
    out: dict[str, tuple[int, str]] = {}
    for r in records:
        key = r.metadata.meta.get(KEY_META)
        if isinstance(key, str) and (key not in out or r.version < out[key][0]):
            out[key] = (r.version, r.ref)
    return {k: ref for k, (_, ref) in out.items()}


def check_options(engine: str, workers: int | None, scheduler: str | None) -> None:
    """InvalidInput for an unknown engine, a bad worker count, or a scheduler without dask."""
    if engine not in ENGINES:
        raise InvalidInput(f"unknown engine {engine!r} (engines: {', '.join(ENGINES)})")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InvalidInput(f"bad worker count {workers!r} (an integer >= 1)")
    if scheduler is not None and engine != "dask":
        raise InvalidInput("a scheduler address is for --engine dask")


def open_executor(engine: str, workers: int | None, scheduler: str | None) -> Any:
    """The engine's executor (``submit(fn, target, *args)``, a context manager): a
    :class:`LocalExecutor`, or a Dask one (:func:`tvreg.repo.ingest_dask.executor`: InvalidInput
    without the extra, or for a scheduler that cannot be reached)."""
    if engine == "dask":
        from tvreg.repo import ingest_dask

        return ingest_dask.executor(scheduler, workers)
    return LocalExecutor(workers)


def begin(items: list[IngestItem], done: dict[str, str],
          on_item: Callable[[IngestItem, str], None] | None = None
          ) -> tuple[IngestResult, list[int]]:
    """The result with the items ``done`` holds (key -> ref) marked skipped, and the indices
    of the others, to stage."""
    result = IngestResult(items, ["skipped" if it.key in done else "" for it in items],
                          [done.get(it.key) for it in items])
    if on_item:
        for it in items:
            if it.key in done:
                on_item(it, "skipped")
    return result, [i for i, it in enumerate(items) if it.key not in done]


def ingest(repo: Repo, items: list[IngestItem], *, engine: str = "local",
           workers: int | None = None, scheduler: str | None = None, level: int | None = None,
           on_item: Callable[[IngestItem, str], None] | None = None) -> IngestResult:
    """Create a version for each item not landed before (see the module's docstring).

    Items are staged by the ``engine``: ``"local"``, on ``workers`` threads of this process
    (default: the CPU count, at most 8); ``"dask"``, as tasks of a Dask cluster
    (:mod:`tvreg.repo.ingest_dask`: the one at ``scheduler``, else a ``LocalCluster`` of
    ``workers`` processes, default 2), whose workers must see the registry's folder and the
    checkpoints at the same paths. Staged vectors are landed here, in list order; a failed
    item is recorded in the result (its one-line error) and the others go on.
    ``on_item(item, outcome)`` is called as each item ends. Similarities are left to the
    caller (:meth:`tvreg.Registry.ingest` computes them for the new versions). Into a remote:
    :func:`tvreg.remote.ingest.ingest`, with the same pieces."""
    from tvreg.repo.create import land

    check_options(engine, workers, scheduler)
    repo.require_writable()
    result, todo = begin(items, landed_keys(repo, (it.name for it in items)), on_item)
    if not todo:
        return result
    executor = open_executor(engine, workers, scheduler)  # checked before the registry is made
    if not repo.exists:  # made once, before the workers (each would otherwise race to)
        repo.init()
    with executor:
        stage_and_land(repo, items, todo, executor, level, result, on_item,
                       lambda staged: land(repo, staged))
    return result


def stage_and_land(target: VectorTarget, items: list[IngestItem], todo: list[int],
                   executor: Any, level: int | None, result: IngestResult,
                   on_item: Callable[[IngestItem, str], None] | None,
                   land: Callable[[StagedVersion], CreateResult]) -> None:
    """Stage ``items[i]`` for each ``i`` of ``todo`` into ``target`` on the ``executor``, and
    make each a version with ``land`` here, in list order, as each is staged; an item's
    failure (staging or landing) goes into ``result`` and the others go on."""
    futures = {i: executor.submit(stage_item, target, items[i], level) for i in todo}
    for i in todo:  # landed in list order, as each is staged
        it = items[i]
        try:
            res = land(futures.pop(i).result())
        except Exception as e:  # noqa: BLE001 - one item's failure, reported; others go on
            result.outcomes[i] = "failed"
            result.errors[it.line] = (str(e) if isinstance(e, TvregError)
                                      else f"{type(e).__name__}: {e}")
        else:
            result.outcomes[i] = "created" if res.created else "unchanged"
            result.refs[i] = res.record.ref
            result.new_objects += res.new_objects
            if res.created:
                result.created.append(res.record)
        if on_item:
            on_item(it, result.outcomes[i])


def stage_item(target: VectorTarget, item: IngestItem, level: int | None) -> StagedVersion:
    """Stage one item's vector in ``target`` (a registry, or a remote's store: what every
    engine's workers run), quietly: the caller draws one bar for the whole list."""
    from tvreg.repo.create import stage

    with progress.quiet():
        return stage(target, item.name, item.base, item.finetuned, level=level,
                     **item.create_options())


class LocalExecutor:
    """The ``local`` engine: items staged on a thread pool of this process."""

    def __init__(self, workers: int | None) -> None:
        from tvreg.tensors.encoding import default_workers

        self.pool = ThreadPoolExecutor(workers or default_workers(),
                                       thread_name_prefix="tvreg-ingest")

    def submit(self, fn: Callable[..., Any], target: VectorTarget, *args: Any) -> Future:
        """A future of ``fn(target, *args)``."""
        return self.pool.submit(fn, target, *args)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        # interrupted: items not started are not started (a rerun does them)
        self.pool.shutdown(wait=True, cancel_futures=True)
