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


def split_settings(method: str, params: dict[str, Any], operand_params: Any = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` as ``(scalars for MergeParams, top-level settings)``: the values the method
    may vary per tensor (``density``, ``gamma``, ``epsilon``, ``t``) go to the settings, and,
    where they are numbers, to MergeParams too. Where the density varies (a list, a ``{filter,
    value}`` mapping, or densities per operand and none for all), MergeParams gets a stand-in
    density of 1 and the settings decide."""
    from collections.abc import Mapping

    from tvreg.compose.merge import operand_setting_keys
    from tvreg.compose.settings import is_setting, stand_in_density

    keys = [k for k in operand_setting_keys(method) if k != "weight"]
    if method == "slerp":
        keys.append("t")
    scalars, top = dict(params), {}
    for key in keys:
        value = params.get(key)
        if value is None:
            continue
        top[key] = value
        if is_setting(value):
            scalars[key] = None  # the method's default; the settings decide (density: below)
    for key, value in params.items():
        if key not in top and is_setting(value):
            raise InvalidInput(f"{key} cannot vary over tensors for {method} (per-tensor "
                               f"values: {', '.join(keys) or 'none'})")
    if "density" in keys:
        scalars["density"] = stand_in_density(params.get("density"), isinstance(
            operand_params, Mapping) and any(isinstance(v, Mapping) and v.get("density")
                                             is not None for v in operand_params.values()))
    return scalars, top


def resolve(repo: Repo, expression: str, *, method: str = "task_arithmetic", lam: float = 1.0,
            include: str | None = None, exclude: str | None = None,
            allow_base_mismatch: bool = False, device: Any = None,
            operand_params: Any = None, **params: Any) -> Composition:
    """A composition of the stored vectors ``expression`` names; see
    :meth:`tvreg.Registry.resolve`. ``params`` are the method's (:class:`MergeParams`'s
    fields; ``density``, ``gamma``, ``epsilon`` and ``t`` may also be settings that vary over
    the layers and tensor names, :mod:`.settings`); ``operand_params`` maps an operand (its ref
    as written, or its position) to its own settings. No tensor is read here."""
    from tvreg.compose.merge import operand_setting_keys
    from tvreg.compose.settings import density_fallback, python_tensor_params

    scalars, top = split_settings(method, params, operand_params)
    merged = merge_params(method, scalars)
    terms = linear_terms(expression)
    unspaced = runs(expression)
    for run in unspaced:  # `sent-topic` must never silently mean sent - topic
        if repo.names_a_vector(run.name):
            raise ExpressionError(
                f"{run.text!r} is a stored vector but reads as {run.spaced}: quote it "
                f"(\"{run.text}\") to mean the vector, or write {run.spaced} with spaces to "
                f"mean the difference", expression, run.column)
    keys = operand_setting_keys(method)
    default, required = density_fallback("density" in keys, merged.rule, top.get("density"))
    tensor_params = python_tensor_params(
        keys, [t.ref for t in terms], [t.coef for t in terms], top, operand_params,
        density_default=default, density_required=required,
        extra_keys=tuple(k for k in ("epsilon", "gamma") if k in keys))
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
    comp = Composition(repo, canonical(terms), operands, merged, lam=lam, include=include,
                       exclude=exclude, allow_base_mismatch=allow_base_mismatch, device=device,
                       tensor_params=tensor_params)
    if tensor_params is not None:
        tensor_params.bind([e.name for e in comp.manifest.tensors], comp.names())
    return comp
