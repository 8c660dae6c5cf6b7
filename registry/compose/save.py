"""A composition stored as a version (``save_composition``), and λ picked by a search over a
grid (``search_coefficients``; its parts, ``base_state`` and ``scaled``, are also
``compare_methods``'s)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tvreg.codecs.choose import check_level
from tvreg.compose.composition import Composition, scale_grid, search
from tvreg.compose.resolve import resolve
from tvreg.errors import IncompatibleCheckpoints
from tvreg.format.manifest import Manifest
from tvreg.format.records import Metadata
from tvreg.names import validate_name
from tvreg.repo.bases import open_base
from tvreg.repo.write import AfterInsert, CreateResult, store_version
from tvreg.util.listings import listing

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo


def save_composition(repo: Repo, name: str, comp: Composition, *, task: str | None = None,
                     dataset: str | None = None, meta: dict[str, Any] | None = None,
                     level: int | None = None, after_insert: AfterInsert | None = None
                     ) -> CreateResult:
    """Store ``comp`` as a version of ``name``; its record keeps the recipe and the operands
    as parents (see :meth:`tvreg.Registry.save_composition`)."""
    import torch

    from tvreg.codecs import choose_pipeline
    from tvreg.tensors.encoding import TensorEncoder

    repo.require_writable()
    comp.check_ready()
    validate_name(name)
    check_level(level)
    metadata = Metadata(task=task, dataset=dataset, meta=dict(meta or {}))
    merged = comp.names()

    def produce(put: Callable[[bytes], str]) -> Manifest:
        futures = []
        with TensorEncoder(put) as encoder:
            tensors = comp.iter_tensors()
            for entry in comp.manifest.tensors:
                if merged and merged[0] == entry.name:
                    merged.pop(0)
                    _, t = next(tensors)
                else:  # left out by --include/--exclude: an unchanged (zero) delta
                    t = torch.zeros(entry.shape, dtype=torch.float32)
                futures.append(encoder.submit(entry.name, t, entry.source_dtype,
                                              choose_pipeline(t, t.element_size(), level=level)))
            entries = tuple(f.result() for f in futures)
        return Manifest(comp.base_hash, comp.arch_fingerprint, entries, comp.manifest.skipped)

    return store_version(repo, name, produce, metadata, tuple(comp.parents), comp.recipe,
                         after_insert)


def base_state(repo: Repo, base: Any, comp: Composition) -> dict:
    """The base's tensors as a state dict: ``base`` is a checkpoint path, a stored base's name
    or hash prefix, None (the stored base of ``comp``'s vectors), a state dict (kept as given,
    not copied) or a ``torch.nn.Module``. Every tensor ``comp`` merges must be in it with its
    shape (:class:`IncompatibleCheckpoints` otherwise, before any merge): a tensor missing
    from the base would otherwise be left out of every evaluated model without a word."""
    from tvreg.tensors.checkpoints import is_in_memory

    if base is not None and not isinstance(base, (str, os.PathLike)) and is_in_memory(base):
        base_sd = dict(base) if isinstance(base, Mapping) else dict(base.state_dict())
    else:
        with open_base(repo, base, comp.base_hash) as ck:
            base_sd = {n: ck.tensor(n) for n in ck.names()}
    check_fits(base_sd, comp)
    return base_sd


def check_fits(base_sd: dict, comp: Composition) -> None:
    """:class:`IncompatibleCheckpoints` unless every tensor ``comp`` merges is in ``base_sd``
    with its shape."""
    missing = [e.name for e in comp.entries if e.name not in base_sd]
    wrong = [f"{e.name} ({list(base_sd[e.name].shape)} in the base vs {list(e.shape)})"
             for e in comp.entries
             if e.name in base_sd and tuple(base_sd[e.name].shape) != tuple(e.shape)]
    if missing or wrong:
        parts = ([f"{len(missing)} tensor(s) missing: {listing(missing)}"] if missing else []) \
            + ([f"{len(wrong)} of another shape: {listing(wrong)}"] if wrong else [])
        raise IncompatibleCheckpoints("the base does not fit the vectors: " + "; ".join(parts))


def scaled(base_sd: dict, merged: dict) -> Callable[[float], dict]:
    """``make(λ)``: θ_base + λ·merged as a new state dict (summed in the merged tensors'
    dtype, cast back to the base's, as apply does); tensors not merged are the base's own."""
    def make(lam: float) -> dict:
        return {n: (t.to(merged[n].dtype) + lam * merged[n]).to(t.dtype) if n in merged else t
                for n, t in base_sd.items()}
    return make


def search_coefficients(repo: Repo, expression: str, evaluate: Callable[[dict], float],
                        grid: Any, *, base: Any = None, **params: Any) -> dict[str, Any]:
    """For each λ in ``grid``, θ_base + λ·merged scored by ``evaluate``; see
    :meth:`tvreg.Registry.search_coefficients`. The merged vector is computed once."""
    grid = scale_grid(grid)
    comp = resolve(repo, expression, **params)
    base_sd = base_state(repo, base, comp)
    return search(scaled(base_sd, comp.state_dict()), evaluate, grid)
