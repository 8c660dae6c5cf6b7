"""Making versions from checkpoints (``create``), from stored versions (``recode``), and
writing one out (``export``). See :meth:`tvreg.Registry.create` for what the arguments mean."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvreg.codecs.choose import check_level
from tvreg.errors import InvalidInput
from tvreg.format.records import Metadata
from tvreg.names import validate_name
from tvreg.repo.write import (
    AfterInsert,
    CreateResult,
    VectorTarget,
    claim_version,
    finish_version,
    write_vector,
)
from tvreg.util import progress

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest
    from tvreg.repo.repo import Repo

#: the longest ``create.left_out_names`` value (a meta string holds at most 4096 characters)
LEFT_OUT_NAMES_CHARS = 1000


def filter_meta(include: str | None, exclude: str | None, left_out: list[str]
                ) -> dict[str, Any]:
    """The metadata that records a create's --include/--exclude: the patterns, how many tensors
    they left out and their sorted names (comma-separated; cut to about
    :data:`LEFT_OUT_NAMES_CHARS` characters with ", ... and N more")."""
    meta: dict[str, Any] = {"create.left_out": len(left_out)}
    if include is not None:
        meta["create.include"] = include
    if exclude is not None:
        meta["create.exclude"] = exclude
    shown: list[str] = []
    for i, n in enumerate(left_out):
        if len(", ".join([*shown, n])) > LEFT_OUT_NAMES_CHARS:
            shown.append(f"... and {len(left_out) - i} more")
            break
        shown.append(n)
    meta["create.left_out_names"] = ", ".join(shown)
    return dict(sorted(meta.items()))


@dataclass(frozen=True)
class StagedVersion:
    """A vector whose objects and manifest are stored, not yet a version: what :func:`stage`
    returns and :func:`land` makes a version of (bulk ingest stages on workers and lands on
    the client)."""

    name: str
    manifest: Manifest
    vector_id: str
    new_objects: int
    metadata: Metadata
    recipe: dict[str, Any] | None
    zero: bool  # the vector is all zeros (warned about when it lands)
    left_out: bool  # --include/--exclude left tensors out


def create(repo: Repo, name: str, base: Any, finetuned: Any = None, *,
           after_insert: AfterInsert | None = None, **options: Any) -> CreateResult:
    """Store τ = finetuned − base (or the τ of a LoRA adapter) as a new version of ``name``
    (``options``: those of :func:`stage`).

    Everything the user can get wrong is checked before the registry is touched; a failure
    later discards the staged objects and leaves the registry as it was."""
    return land(repo, stage(repo, name, base, finetuned, **options), after_insert,
                stacklevel=4)


def land(repo: Repo, staged: StagedVersion, after_insert: AfterInsert | None = None, *,
         stacklevel: int = 2) -> CreateResult:
    """Make a version of a staged vector: claim its number (or find the version that already
    holds it), index it, then ``after_insert``. A vector of zeros is warned about here
    (:func:`warn_if_zero`)."""
    warn_if_zero(staged, stacklevel)
    record, created = claim_version(repo, staged.name, staged.manifest, staged.vector_id,
                                    staged.metadata, recipe=staged.recipe)
    finish_version(repo, record, created, staged.manifest, after_insert)
    return CreateResult(record, created, staged.new_objects, staged.manifest)


def warn_if_zero(staged: StagedVersion, stacklevel: int = 2) -> None:
    """A :class:`~tvreg.errors.ZeroVectorWarning` if the staged vector is all zeros (said once
    it is written, since it is stored anyway; ``stacklevel`` as for :func:`warnings.warn`
    called where this is called)."""
    if staged.zero:
        import warnings

        from tvreg.errors import ZeroVectorWarning
        from tvreg.tensors.build import zero_vector_message

        warnings.warn(zero_vector_message(staged.left_out), ZeroVectorWarning,
                      stacklevel=stacklevel + 1)


def stage(repo: VectorTarget, name: str, base: Any, finetuned: Any = None, *,
          lora: str | os.PathLike | None = None, task: str | None = None,
          dataset: str | None = None, lr: float | None = None, steps: int | None = None,
          meta: dict[str, Any] | None = None, allow_nonfinite: bool = False,
          level: int | None = None, exact: bool = False, codec: str | None = None,
          include: str | None = None, exclude: str | None = None,
          on_progress: Callable[[int], None] | None = None) -> StagedVersion:
    """Check everything, then store the vector's objects and manifest (and, in exact mode, its
    base) in ``repo``; the version is made by :func:`land`. A failure leaves the registry as
    it was. ``repo`` may be another registry's store (a
    :class:`~tvreg.repo.target.StoreTarget`: only the objects and manifest go there, and
    making the version is the caller's), except in exact mode, which stores the base in a
    local registry."""
    from tvreg.repo.repo import Repo
    from tvreg.tensors.build import build_task_vector, plan_pair, work_total
    from tvreg.tensors.checkpoints import open_checkpoint

    repo.require_writable()
    if exact and not isinstance(repo, Repo):
        raise InvalidInput(f"exact mode stores the base with the vector: create it in a local "
                           f"registry, not in {repo.label}")
    validate_name(name)
    check_level(level)
    if (finetuned is None) == (lora is None):
        raise InvalidInput("give either a fine-tuned checkpoint or a LoRA adapter")
    if exact and lora is not None:
        raise InvalidInput("exact mode rebuilds a fine-tuned checkpoint: it does not apply "
                           "to a LoRA adapter (stored exactly as its factors anyway)")
    coder = None
    if codec is not None:
        from tvreg.tensors.lossy import LossyEncoder

        coder = LossyEncoder(codec, level)
        if exact:
            raise InvalidInput("--exact and --codec exclude each other: exact mode is "
                               "lossless")
        if lora is not None:
            raise InvalidInput("a LoRA import is stored as its factors: --codec does not "
                               "apply; import it, then `tvreg recode` it")
    if (include is not None or exclude is not None) and lora is not None:
        raise InvalidInput("--include/--exclude select tensors of a --finetuned checkpoint; "
                           "a LoRA adapter's tensors are its adapted layers")
    delta_of = adapter = None
    if lora is not None:
        from tvreg.tensors.lora import read_adapter

        adapter = read_adapter(lora)
        meta = {**adapter.summary(), **dict(meta or {})}
    Metadata(task=task, dataset=dataset, lr=lr, steps=steps, meta=dict(meta or {}))  # checks
    if include is not None or exclude is not None:
        from tvreg.tensors.build import compile_filter

        compile_filter(include, exclude)  # a bad regex is an error before anything is read
    with contextlib.ExitStack() as stack:
        cb = stack.enter_context(open_checkpoint(base, label="base"))
        cf = None
        left_out: frozenset[str] = frozenset()
        if adapter is None:
            cf = stack.enter_context(open_checkpoint(finetuned, label="finetuned"))
            plan = plan_pair(cb, cf, include, exclude)
            infos, left_out = plan.infos, plan.left_out
            if include is not None or exclude is not None:
                meta = {**filter_meta(include, exclude, sorted(left_out | set(plan.ignored))),
                        **dict(meta or {})}
        else:
            from tvreg.tensors.lora import delta_source

            infos = sorted(cb.infos(), key=lambda i: i.name)
            delta_of = delta_source(adapter, infos, allow_nonfinite=allow_nonfinite)
        if coder is not None:
            from tvreg.dtypes import is_floating, work_dtype
            from tvreg.tensors.build import finetuned_dtypes

            ft_dtypes = finetuned_dtypes(cf, infos)
            coder.check((i.name, work_dtype(i.dtype, ft_dtypes.get(i.name, i.dtype)),
                         tuple(i.shape)) for i in infos if is_floating(i.dtype))
        metadata = Metadata(task=task, dataset=dataset, lr=lr, steps=steps,
                            meta=dict(meta or {}))
        total = work_total(cb, cf, infos, left_out)
        zero: list[bool] = []
        with progress.bar(total * 4, f"create {name}") as bar:
            def tick(n: int) -> None:
                bar.update(n)
                if on_progress:
                    on_progress(n)
            manifest, vector_id, new_objects = write_vector(
                repo, lambda put: build_task_vector(cb, cf, infos, put,
                                                    allow_nonfinite=allow_nonfinite, level=level,
                                                    on_tensor=tick, delta_of=delta_of,
                                                    encode=coder.submit if coder else None,
                                                    exact=exact, left_out=left_out,
                                                    on_zero=lambda: zero.append(True)))
        if exact and isinstance(repo, Repo):  # before the version exists: a reader never
            ensure_base(repo, cb, manifest.base_hash)  # sees it without its base
    recipe = coder.recipe("create") if coder is not None else None
    return StagedVersion(name, manifest, vector_id, new_objects, metadata, recipe, bool(zero),
                         bool(left_out))


def ensure_base(repo: Repo, checkpoint: Any, base_hash: str) -> None:
    """Store the base ``checkpoint`` (of hash ``base_hash``) unless it is stored."""
    from tvreg.repo.bases import add
    from tvreg.tensors.checkpoints import InMemoryCheckpoint

    if repo.base_record(base_hash) is None:
        add(repo, checkpoint if isinstance(checkpoint, InMemoryCheckpoint) else checkpoint.path)


def recode(repo: Repo, ref: str, codec: str, *, name: str | None = None,
           level: int | None = None, after_insert: AfterInsert | None = None) -> CreateResult:
    """Store the vector ``ref`` names again with a lossy ``codec`` as a new version of ``name``
    (default: ``ref``'s name); see :meth:`tvreg.Registry.recode`."""
    from tvreg.tensors.lossy import LossyEncoder, encode_vector
    from tvreg.tensors.taskvector import TaskVector

    repo.require_writable()
    coder = LossyEncoder(codec, level)
    if name is not None:
        validate_name(name)
    record, vector_id = repo.resolve_ref(ref)
    if name is None and record is None:
        raise InvalidInput(f"{ref!r} names a vector with no version: give a name")
    name = name if name is not None else record.name  # type: ignore[union-attr]
    vec = TaskVector(repo, repo.manifest(vector_id), record, vector_id)
    coder.check((t.name, t.dtype, t.shape) for t in vec.manifest.tensors)
    metadata = record.metadata if record is not None else Metadata()
    with progress.bar(vec.manifest.raw_bytes, f"recode {vec.ref}") as bar:
        manifest, new_id, new_objects = write_vector(
            repo, lambda put: encode_vector(vec, coder, put, on_tensor=bar.update))
    recipe = coder.recipe("recode", source=vector_id,
                          source_ref=record.ref if record is not None else None)
    new, created = claim_version(repo, name, manifest, new_id, metadata, (vector_id,), recipe)
    finish_version(repo, new, created, manifest, after_insert)
    return CreateResult(new, created, new_objects, manifest)


def export(repo: Repo, ref: str, path: str | os.PathLike) -> int:
    """Write the task vector to a safetensors file, one tensor in memory at a time."""
    from tvreg.tensors.outputs import check_output_path
    from tvreg.tensors.safetensors_io import write_safetensors

    output = check_output_path(os.fspath(path), registry=repo.root)
    vec = repo.get(ref)
    specs = [(t.name, t.dtype, t.shape) for t in vec.manifest.tensors]
    metadata = {"tvreg.vector_id": vec.vector_id, "tvreg.base_hash": vec.base_hash,
                "tvreg.arch_fingerprint": vec.arch_fingerprint, "tvreg.ref": vec.ref}
    with progress.bar(vec.manifest.raw_bytes, f"export {vec.ref}") as bar:
        def stream():
            for name, t in vec.iter_tensors(prefetch=1):
                yield name, t
                bar.update(t.numel() * t.element_size())
        return write_safetensors(os.fspath(output), specs, stream(), metadata)
