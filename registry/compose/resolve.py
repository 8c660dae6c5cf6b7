"""An expression resolved against a registry: ``0.5*a + b - c@2`` -> a :class:`Composition`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvreg.compose.composition import Composition, Operand
from tvreg.compose.expr import ExpressionError, canonical, linear_terms, runs
from tvreg.errors import NotFound

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo


def resolve(repo: Repo, expression: str, *, method: str = "task_arithmetic",
            density: float | None = None, seed: int = 0, trim: str = "tensor",
            majority_sign: str = "total", lam: float = 1.0, include: str | None = None,
            exclude: str | None = None, allow_base_mismatch: bool = False,
            common_fraction: float | None = None, device: Any = None) -> Composition:
    """A composition of the stored vectors ``expression`` names; see
    :meth:`tvreg.Registry.resolve`. No tensor is read here."""
    from tvreg.compose.merge import MergeParams

    params = MergeParams(method=method, density=density, seed=seed, trim=trim,
                         majority_sign=majority_sign, common_fraction=common_fraction)
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
    return Composition(repo, canonical(terms), operands, params, lam=lam, include=include,
                       exclude=exclude, allow_base_mismatch=allow_base_mismatch, device=device)
