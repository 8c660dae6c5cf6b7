"""A composition stored as a version (``save_composition``), and λ picked by a search over a
grid (``search_coefficients``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvreg.codecs.choose import check_level
from tvreg.compose.composition import Composition, scale_grid, search
from tvreg.compose.resolve import resolve
from tvreg.format.manifest import Manifest
from tvreg.format.records import Metadata
from tvreg.names import validate_name
from tvreg.repo.bases import open_base
from tvreg.repo.write import AfterInsert, CreateResult, store_version

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


def search_coefficients(repo: Repo, expression: str, evaluate: Callable[[dict], float],
                        grid: Any, *, base: Any = None, **params: Any) -> dict[str, Any]:
    """For each λ in ``grid``, θ_base + λ·merged scored by ``evaluate``; see
    :meth:`tvreg.Registry.search_coefficients`. The merged vector is computed once."""
    grid = scale_grid(grid)
    comp = resolve(repo, expression, **params)
    merged = comp.state_dict()
    if base is None or isinstance(base, (str, os.PathLike)):
        with open_base(repo, base, comp.base_hash) as ck:
            base_sd = {n: ck.tensor(n) for n in ck.names()}
    else:
        base_sd = dict(base)

    def make(lam: float) -> dict:
        return {n: (t.to(merged[n].dtype) + lam * merged[n]).to(t.dtype) if n in merged else t
                for n, t in base_sd.items()}

    return search(make, evaluate, grid)
