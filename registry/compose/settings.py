"""Per-operand and per-tensor merge settings: values that vary by operand, over the layers and
by tensor name, as mergekit 0.1.5 lets a config give them (``config.evaluate_setting``).

A *setting* is one of

* a number: the value everywhere;
* a list of numbers: a gradient over the layers, interpolated linearly at the tensor's layer
  position ``t`` in [0, 1] (:func:`layer_positions`): ``[0.2, 0.8]`` is 0.2 in the first layer,
  0.8 in the last, 0.5 half way;
* ``{filter, value}`` conditions (one, or a list tried in order): the first whose ``filter`` is
  absent, ``*`` or a substring of the tensor's name gives the value (itself a setting).

:class:`TensorParams` holds one settings mapping per operand (``weight``, ``density``,
breadcrumbs' ``gamma``, DELLA's ``epsilon``) and a top-level one (the same keys, and slerp's
``t``); an operand's own setting comes first, then the top level's, then the method's default.
A recipe keeps both as ``parameters`` (``{"models": [...], "parameters": {...}}``), so a saved
composition is rebuilt with the same values. Every value every tensor needs is evaluated by
:meth:`TensorParams.bind` before any tensor is read, so a bad value is refused up front.

Used by mergekit recipes (:mod:`.mergekit`) and by ``Registry.resolve(...,
operand_params=...)`` (:func:`python_tensor_params`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tvreg.compose.merge import check_della
from tvreg.compose.sparsify import EPSILON, GAMMA
from tvreg.errors import InvalidInput
from tvreg.names import LAYER

__all__ = ["TensorParams", "density_fallback", "evaluate_setting", "is_setting",
           "layer_positions", "python_tensor_params", "scaled_setting", "stand_in_density"]

#: the keys a setting may be given for (per operand; ``t`` at the top level only)
SETTING_KEYS = ("weight", "density", "gamma", "epsilon", "t")


def is_setting(value: Any) -> bool:
    """Whether ``value`` varies over tensors (a list or a ``{filter, value}`` mapping), as
    opposed to a plain number."""
    return isinstance(value, (list, tuple, Mapping))


def evaluate_setting(name: str, setting: Any, t: float) -> Any:
    """mergekit ``config.evaluate_setting`` for numbers: a scalar; a list of numbers
    interpolated at ``t`` in [0, 1]; ``{filter, value}`` conditions (one or a list), the first
    whose ``filter`` is absent, ``*`` or a substring of ``name``. None if nothing applies."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, bool) or isinstance(setting, (int, float)):
        return setting
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            if not isinstance(cond, Mapping) or "value" not in cond \
                    or set(cond) - {"filter", "value"}:
                raise InvalidInput(f"a parameter list holds numbers or {{filter, value}} "
                                   f"conditions, not {cond!r}")
            f = cond.get("filter")
            if f is None or f == "*" or (name and str(f) in name):
                return evaluate_setting(name, cond["value"], t)
        return None
    raise InvalidInput(f"unsupported parameter value {setting!r}")


def scaled_setting(setting: Any, factor: float) -> Any:
    """``setting`` with every value multiplied by ``factor`` (an expression's coefficient on a
    per-tensor weight: evaluating the scaled setting gives ``factor`` times the value)."""
    if factor == 1.0:
        return setting
    if isinstance(setting, Mapping):
        if "value" not in setting:
            raise InvalidInput(f"a condition needs a value: {dict(setting)!r}")
        return {**setting, "value": scaled_setting(setting["value"], factor)}
    if isinstance(setting, (list, tuple)):
        return [scaled_setting(e, factor) for e in setting]
    if isinstance(setting, bool) or not isinstance(setting, numbers.Real):
        raise InvalidInput(f"unsupported parameter value {setting!r}")
    return float(setting) * factor


def layer_positions(names: Sequence[str]) -> dict[str, float]:
    """mergekit's ``t`` per tensor: ``i / (n - 1)`` in layer ``i`` of ``n`` (1 if ``n == 1``),
    0 outside the layers (embeddings, final norm, head: mergekit's pre and post weights)."""
    layers = {int(m.group(1)) for n in names if (m := LAYER.search(n))}
    count = max(layers) + 1 if layers else 0
    out = {}
    for n in names:
        m = LAYER.search(n)
        if m is None:
            out[n] = 0.0
        else:
            out[n] = int(m.group(1)) / (count - 1) if count > 1 else 1.0
    return out


@dataclass
class TensorParams:
    """Per-tensor, per-operand settings: weight and density (and breadcrumbs' gamma, DELLA's
    epsilon) per operand, an operand's own value first, then the top-level one, as mergekit
    resolves them; slerp's ``t`` per tensor (top-level)."""

    models: list[dict[str, Any]]
    top: dict[str, Any]
    #: the density of an operand that no setting gives one (None: see ``density_required``)
    density_default: float | None
    positions: dict[str, float] = field(default_factory=dict)
    #: the weight of a model that gives none (None: every model needs one)
    weight_default: float | None = None
    #: the per-model keys beyond weight and density the method reads (gamma, epsilon)
    extra_keys: tuple[str, ...] = ()
    #: the method needs a density and there is no default: every operand must get one from a
    #: setting (else ``density_default`` None means the method has no density)
    density_required: bool = False
    #: what to call operand i in messages (default ``models[i]``, a config's own words)
    labels: list[str] | None = None

    @property
    def density_varies(self) -> bool:
        """Whether any operand has a density of its own or the top-level one is a setting."""
        return any("density" in m for m in self.models) or is_setting(self.top.get("density"))

    def _label(self, i: int) -> str:
        return self.labels[i] if self.labels else f"models[{i}]"

    def _value(self, i: int | None, key: str, name: str) -> Any:
        t = self.positions.get(name, 0.0)
        scopes = (self.top,) if i is None else (self.models[i], self.top)
        for scope in scopes:
            if key in scope:
                value = evaluate_setting(name, scope[key], t)
                if value is not None:
                    return float(value)
        return None

    def __call__(self, name: str) -> tuple[list[float], list[float] | None]:
        weights, densities = [], []
        for i in range(len(self.models)):
            w = self._value(i, "weight", name)
            if w is None:
                w = self.weight_default
            if w is None:
                raise InvalidInput(f"{self._label(i)} has no weight for tensor {name!r}")
            weights.append(w)
            d = self._value(i, "density", name)
            if d is None and self.density_required and self.density_default is None:
                raise InvalidInput(f"{self._label(i)} has no density for tensor {name!r} "
                                   "(give a density, or one for every operand)")
            densities.append(self.density_default if d is None else d)
        if self.density_default is None and not self.density_required:
            return weights, None
        return weights, [1.0 if d is None else d for d in densities]

    def extras(self, name: str) -> dict[str, Any]:
        """``merge_tensor``'s other per-tensor arguments: ``gammas``, ``epsilons`` (one per
        model, None where no model or top-level setting gives one: the method's default) and
        slerp's ``t``."""
        out: dict[str, Any] = {}
        for key in self.extra_keys:
            values = [self._value(i, key, name) for i in range(len(self.models))]
            if any(v is not None for v in values):
                default = {"gamma": GAMMA, "epsilon": EPSILON}[key]
                out[key + "s"] = [default if v is None else v for v in values]
        if "t" in self.top:
            t = self._value(None, "t", name)
            if t is None:
                raise InvalidInput(f"parameters.t gives no value for tensor {name!r}")
            out["t"] = t
        return out

    def check(self, names: list[str]) -> None:
        """Every value every tensor needs, evaluated before anything is read."""
        for n in names:
            weights, densities = self(n)
            if not all(math.isfinite(w) for w in weights):
                raise InvalidInput(f"weights must be finite (tensor {n!r}: {weights})")
            if densities is not None and any(not (0.0 < d <= 1.0) for d in densities):
                raise InvalidInput(f"density must be in (0, 1] (tensor {n!r}: {densities})")
            extras = self.extras(n)
            for g in extras.get("gammas", []):
                if not (0.0 <= g <= 1.0):
                    raise InvalidInput(f"gamma must be in [0, 1] (tensor {n!r}: {g})")
            if "epsilon" in self.extra_keys:
                for i, e in enumerate(extras.get("epsilons", [EPSILON] * len(self.models))):
                    if e < 0:
                        raise InvalidInput(f"epsilon must be >= 0 (tensor {n!r}: {e})")
                    check_della(densities[i] if densities else 1.0, e)

    def bind(self, all_names: Sequence[str], composed: list[str]) -> None:
        """Set each tensor's layer position from the names of the whole architecture
        (``all_names``) and check every value the ``composed`` tensors need."""
        self.positions = layer_positions(all_names)
        self.check(composed)

    def to_json(self) -> dict[str, Any]:
        """The settings as the recipe keeps them."""
        return {"models": self.models, "parameters": self.top}


def stand_in_density(top_density: Any, per_operand: bool) -> Any:
    """The density ``MergeParams`` gets: 1, a stand-in, where the densities vary (a top-level
    setting, or densities given per operand and none at the top level: the per-tensor
    settings decide); else the top-level number, or None."""
    if is_setting(top_density) or (top_density is None and per_operand):
        return 1.0
    return top_density


def density_fallback(has_density: bool, rule: str | None, top_density: Any
                     ) -> tuple[float | None, bool]:
    """``(density_default, density_required)`` of a :class:`TensorParams`: the density of an
    operand that no setting gives one. mergekit's rule falls back to the top-level number, else
    its default 1; tvreg's (peft's) rules have no default: the top-level number, else every
    tensor of every operand must get one from a setting."""
    if not has_density:
        return None, False
    number = None if is_setting(top_density) or top_density is None else float(top_density)
    if rule == "mergekit":
        return (1.0 if number is None else number), False
    return number, True


def python_tensor_params(method_keys: Sequence[str], refs: list[str], coefs: list[float],
                         top: Mapping[str, Any], operand_params: Mapping[Any, Any] | None,
                         *, density_default: float | None, density_required: bool,
                         extra_keys: tuple[str, ...]) -> TensorParams | None:
    """The :class:`TensorParams` of ``Registry.resolve(..., operand_params=...)``, or None
    where every value is one number for all tensors (the plain composition, whose recipe stays
    as before).

    ``method_keys`` are the keys the method reads per operand (``weight`` always); ``top``
    holds the top-level values of those keys and of ``t`` (numbers or settings);
    ``operand_params`` maps an operand (its ref as written in the expression, or its 0-based
    position) to its settings. An operand's ``weight`` multiplies its coefficient in the
    expression (default 1): the recipe keeps the product.
    """
    per_op: list[dict[str, Any]] = [{} for _ in refs]
    if operand_params is not None:
        if not isinstance(operand_params, Mapping):
            raise InvalidInput("operand_params must map operands (refs or positions) to "
                               f"settings, not {type(operand_params).__name__}")
        for key, settings in operand_params.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise InvalidInput(f"operand_params key {key!r}: a ref of the expression or "
                                   "an operand's position")
            if isinstance(key, int):
                if not 0 <= key < len(refs):
                    raise InvalidInput(f"operand_params[{key}]: the expression has "
                                       f"{len(refs)} operand(s)")
                i = key
            elif key in refs:
                i = refs.index(key)
            else:
                raise InvalidInput(f"operand_params names {key!r}, which is not an operand of "
                                   f"the expression (operands: {', '.join(refs)})")
            if per_op[i]:
                raise InvalidInput(f"operand_params gives operand {refs[i]!r} twice")
            if not isinstance(settings, Mapping):
                raise InvalidInput(f"operand_params[{key!r}] must be a mapping of settings "
                                   f"({', '.join(method_keys)}), not {settings!r}")
            unknown = sorted(set(settings) - set(method_keys))
            if unknown:
                raise InvalidInput(f"operand_params[{key!r}]: {', '.join(unknown)} cannot be "
                                   f"given per operand here (the method reads "
                                   f"{', '.join(method_keys)})")
            per_op[i] = {k: _checked_setting(f"operand_params[{key!r}].{k}", v)
                         for k, v in settings.items() if v is not None}
    top = {k: _checked_setting(k, v) for k, v in top.items() if v is not None}
    if not any(per_op) and not any(is_setting(v) for v in top.values()):
        return None
    models = []
    for settings, coef in zip(per_op, coefs, strict=True):
        settings = dict(settings)
        settings["weight"] = scaled_setting(settings.get("weight", 1.0), coef)
        models.append(settings)
    return TensorParams(models, dict(top), density_default, weight_default=None,
                        extra_keys=extra_keys, density_required=density_required,
                        labels=[f"operand {r!r}" for r in refs])


def _checked_setting(where: str, value: Any) -> Any:
    """``value`` if it is a number or a well-formed setting (lists and conditions of
    numbers), else :class:`InvalidInput` naming ``where``."""
    if isinstance(value, bool):
        raise InvalidInput(f"{where} must be a number or a setting, not {value!r}")
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise InvalidInput(f"{where} must be finite, not {value!r}")
        return value
    if isinstance(value, Mapping):
        if "value" not in value or set(value) - {"filter", "value"}:
            raise InvalidInput(f"{where}: a condition is {{filter, value}}, not {dict(value)!r}")
        f = value.get("filter")
        if f is not None and not isinstance(f, str):
            raise InvalidInput(f"{where}: a filter is a substring of tensor names, not {f!r}")
        return {**value, "value": _checked_setting(where, value["value"])}
    if isinstance(value, (list, tuple)):
        if not value:
            raise InvalidInput(f"{where} is an empty list")
        numeric = [isinstance(e, numbers.Real) and not isinstance(e, bool) for e in value]
        if any(numeric) and not all(numeric):
            raise InvalidInput(f"{where}: a list holds numbers (a gradient over the layers) or "
                               "{filter, value} conditions, not both")
        return [_checked_setting(where, e) for e in value]
    raise InvalidInput(f"{where} must be a number, a list of numbers (over the layers) or "
                       f"{{filter, value}} conditions, not {value!r}")
