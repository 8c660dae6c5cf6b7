"""An expression resolved against a registry: ``0.5*a + b - c@2`` -> a :class:`Composition`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvreg.compose.composition import Composition, Operand
from tvreg.compose.expr import ExpressionError, canonical, linear_terms, runs
from tvreg.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo


def merge_params(method: str, params: dict[str, Any]) -> Any:
    """:class:`~tvreg.compose.merge.MergeParams` of ``method`` and keyword ``params`` (None
    values left out: the defaults), an unknown keyword refused by name."""
    import dataclasses

    from tvreg.compose.merge import MergeParams

    known = {f.name for f in dataclasses.fields(MergeParams)} - {"method"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInput(f"unknown merge parameter(s) {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known))}")
    return MergeParams(method=method, **{k: v for k, v in params.items() if v is not None})


def resolve(repo: Repo, expression: str, *, method: str = "task_arithmetic", lam: float = 1.0,
            include: str | None = None, exclude: str | None = None,
            allow_base_mismatch: bool = False, device: Any = None,
            **params: Any) -> Composition:
    """A composition of the stored vectors ``expression`` names; see
    :meth:`tvreg.Registry.resolve`. ``params`` are the method's (:class:`MergeParams`'s
    fields). No tensor is read here."""
    merged = merge_params(method, params)
    terms = linear_terms(expression)
    unspaced = runs(expression)
    for run in unspaced:  # `sent-topic` must never silently mean sent - topic
        if repo.names_a_vector(run.name):
            raise ExpressionError(
                f"{run.text!r} is a stored vector but reads as {run.spaced}: quote it "
                f"(\"{run.text}\") to mean the vector, or write {run.spaced} with spaces to "
                f"mean the difference", expression, run.column)
    operands = []
    for t in terms:
        try:
            operands.append(Operand(t.ref, t.coef, repo.get(t.ref)))
        except NotFound as e:
            whole = next((r for r in unspaced if t.ref in r.parts), None)
            if whole is None:
                raise
            raise NotFound(f"{e} (it is part of {whole.text!r}, read as {whole.spaced}; "
                           f"if {whole.text!r} is one name, quote it: \"{whole.text}\")"
                           ) from None
    return Composition(repo, canonical(terms), operands, merged, lam=lam, include=include,
                       exclude=exclude, allow_base_mismatch=allow_base_mismatch, device=device)
