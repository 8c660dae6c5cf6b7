"""Merge methods: how the operands' deltas of one tensor combine into the merged delta.

Pure math, no I/O. Every method works tensor by tensor and matches ``peft.utils.merge_utils``
(peft 0.21) operation for operand-for-operand:

* ``task_arithmetic``: ``Σ wᵢ·τᵢ``.
* ``magnitude_prune``: ``Σ wᵢ·trim(τᵢ)``, where ``trim`` keeps the top ``density`` fraction of
  entries by ``|x|`` (peft ``magnitude_prune``).
* ``ties`` (Yadav et al., 2023): trim every τᵢ, elect a sign per entry from the *unweighted*
  trimmed τᵢ (``total``: the sign of ``Σ trim(τᵢ)``; ``frequency``: the sign of
  ``Σ sign(trim(τᵢ))``; a tie elects +), then the disjoint mean ``Σ_agree wᵢ·trim(τᵢ) /
  max(1, #agree)``, where an operand agrees at an entry if its trimmed value there is nonzero and
  has the elected sign (peft ``ties``; the weights enter after the election and the count is not
  weighted, exactly as peft).
* ``dare_linear`` / ``dare_ties`` (Yu et al., 2024): drop each entry of τᵢ with probability
  ``1 - density`` and rescale the kept ones by ``1/density``, then sum as task arithmetic or
  combine as TIES without the magnitude trim (peft ``dare_linear`` / ``dare_ties``).

As in peft, ``density >= 1`` means no trimming/dropping at all, and the per-tensor trim keeps
exactly ``k = int(density·numel)`` entries (``k = 0`` keeps none); of the entries tied at the
cut, those at the lowest flat positions (peft's ``torch.topk`` picks among them by its own
order; :mod:`tvreg.compose.merge_kernels` says why and how the kernels run).

Differences from peft, on purpose:

* Arithmetic is in float32, or float64 if any delta is float64 (peft computes in the inputs'
  dtype); the result has that dtype.
* DARE's drop masks do not use the global RNG: the mask of operand ``i`` of tensor ``name`` is
  drawn by ``torch.bernoulli`` from a private ``torch.Generator`` seeded with the first 63 bits of
  ``sha256(f"tvreg-dare\\0{seed}\\0{name}\\0{i}")`` (:func:`dare_mask`). A merge therefore does
  not depend on the order tensors are visited in, on the thread, or on anything else drawn from
  the RNG, and the global RNG is left untouched. The mask is drawn at float32 probability for
  every dtype, so it depends only on ``(seed, name, i, shape, density)``.
* ``trim="global"`` (as the TIES paper's code, which trims the flattened vector): the cut is one
  magnitude per operand over the *whole* vector, computed by :class:`MagnitudeQuantile` and
  passed to :func:`merge_tensor` as ``thresholds``. An entry is kept iff ``float32(|x|) >= t``,
  so entries tied with the k-th largest magnitude are all kept (a vector may keep a few more than
  ``k``; not exactly-k, which would need a tie-break across tensors). ``t = +inf`` (``k = 0``)
  keeps nothing. For a vector that is a single tensor without ties at the cut, global and
  per-tensor trims agree.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tvreg.compose.consensus import TALL_MASK_LAMBDA, consensus
from tvreg.compose.consensus import K as CONSENSUS_K
from tvreg.compose.interpolation import karcher, model_stock, nuslerp, nuslerp_t, slerp
from tvreg.compose.merge_kernels import (
    KEEP_ALL,
    Keep,
    magnitude_keep,
    merge_flat,
    threshold_keep,
    trim_flat,
)
from tvreg.compose.sparsify import EPSILON, GAMMA, band_keep, della_mask
from tvreg.compose.spectral import SPECTRAL_METHODS, iso_c, iso_cts, mean, tsv
from tvreg.errors import InvalidInput, NonFiniteValues

METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "tsv", "iso_c",
           "iso_cts", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "slerp",
           "nuslerp", "karcher", "model_stock", "consensus")
TRIMS = ("tensor", "global")
MAJORITY_SIGNS = ("total", "frequency")
RULES = ("peft", "mergekit")

_BAND_METHODS = frozenset({"breadcrumbs", "breadcrumbs_ties"})
_DELLA_METHODS = frozenset({"della", "della_linear"})
#: mergekit's generalized task arithmetic only (no peft counterpart): rule=mergekit always
_MERGEKIT_ONLY = _BAND_METHODS | _DELLA_METHODS
_DENSITY_METHODS = frozenset({"ties", "dare_linear", "dare_ties", "magnitude_prune"}) \
    | _MERGEKIT_ONLY
_MAGNITUDE_METHODS = frozenset({"ties", "magnitude_prune"})  # trimmed by magnitude
_RANDOM_METHODS = frozenset({"dare_linear", "dare_ties"}) | _DELLA_METHODS  # seeded drops
_SIGN_METHODS = frozenset({"ties", "dare_ties", "breadcrumbs_ties", "della"})
_SPECTRAL_METHODS = frozenset(SPECTRAL_METHODS)
#: the methods that interpolate the models' weights: they need the base's weights
WEIGHT_SPACE_METHODS = frozenset({"slerp", "karcher"})
#: methods of their own formulas (not a rule of trimmed sums)
_OWN_METHODS = _SPECTRAL_METHODS | WEIGHT_SPACE_METHODS | {"nuslerp", "model_stock",
                                                           "consensus"}
#: Iso-CTS's default share of the directions kept common (the paper's and fusion_bench's)
COMMON_FRACTION = 0.8
#: mergekit's defaults of normalize and rescale (rule=mergekit)
_NORMALIZE_DEFAULT = frozenset({"ties", "della"})
_RESCALE_DEFAULT = frozenset({"dare_linear", "dare_ties", "della", "della_linear"})

#: method-specific parameters: (methods, default, kind); kind "unit" is a number in [0, 1],
#: "nonneg" a number >= 0, "count" an integer >= 0 (>= 1 for max_iter), "bool" true/false,
#: "real" any finite number; a default of None leaves it None (slerp's t: per tensor from a
#: recipe, else the composition requires it)
_EXTRA: dict[str, tuple[frozenset[str], Any, str]] = {
    "gamma": (_BAND_METHODS, GAMMA, "unit"),
    "epsilon": (_DELLA_METHODS, EPSILON, "nonneg"),
    "t": (frozenset({"slerp"}), None, "real"),
    "k": (frozenset({"consensus"}), CONSENSUS_K, "count"),
    "tall_mask_lambda": (frozenset({"consensus"}), TALL_MASK_LAMBDA, "nonneg"),
    "filter_wise": (frozenset({"model_stock"}), False, "bool"),
    "nuslerp_flatten": (frozenset({"nuslerp"}), True, "bool"),
    "nuslerp_row_wise": (frozenset({"nuslerp"}), False, "bool"),
    "max_iter": (frozenset({"karcher"}), 10, "count"),
    "tol": (frozenset({"karcher"}), 1e-5, "nonneg"),
}


def _checked(key: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidInput(f"{key} must be true or false, not {value!r}")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (
                1 if key == "max_iter" else 0):
            raise InvalidInput(f"{key} must be an integer >= {1 if key == 'max_iter' else 0}, "
                               f"not {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)):
        raise InvalidInput(f"{key} must be a finite number, not {value!r}")
    v = float(value)
    if kind == "unit" and not (0.0 <= v <= 1.0):
        raise InvalidInput(f"{key} must be in [0, 1], got {value!r}")
    if kind == "nonneg" and v < 0:
        raise InvalidInput(f"{key} must be >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class MergeParams:
    """A merge method and its parameters. Invalid combinations raise :class:`InvalidInput`.

    Parameters that have no meaning for the method (``density`` for ``task_arithmetic``, a
    non-default ``seed`` outside the seeded drops (``dare_*``, ``della*``), ``trim="global"``
    outside ``ties`` and ``magnitude_prune``, ``majority_sign="frequency"`` outside the
    sign-electing methods, ``gamma`` outside breadcrumbs, ...) are refused rather than silently
    ignored, so a recipe never records a setting that did nothing.
    """

    method: str = "task_arithmetic"
    density: float | None = None
    seed: int = 0
    trim: str = "tensor"
    majority_sign: str = "total"
    #: ``"peft"`` (the rules above) or ``"mergekit"`` (mergekit 0.1.5's generalized task
    #: arithmetic, see :func:`merge_tensor`); None: the method's own (mergekit for
    #: breadcrumbs* and della*, which have no other, peft for the rest). ``normalize`` and
    #: ``rescale`` mean something only with ``rule="mergekit"`` (None: mergekit's default)
    rule: str | None = None
    normalize: bool | None = None
    rescale: bool | None = None
    #: ``iso_cts`` only: the share of each matrix's directions kept common (None: 0.8)
    common_fraction: float | None = None
    #: breadcrumbs*: the share of the largest magnitudes dropped as outliers (None: 0.01)
    gamma: float | None = None
    #: della*: the half-width of the keep probabilities around ``density`` (None: 0.15)
    epsilon: float | None = None
    #: slerp: the interpolation point (0: the first model, 1: the second; required)
    t: float | None = None
    #: consensus: the least number of tasks' TALL masks that keep an entry (None: 2)
    k: int | None = None
    #: consensus: the TALL masks' λ (None: 0.6)
    tall_mask_lambda: float | None = None
    #: model_stock: one interpolation ratio per row instead of per tensor (None: false)
    filter_wise: bool | None = None
    #: nuslerp: over the whole tensor (None: true), else per row or (row_wise) per column
    nuslerp_flatten: bool | None = None
    nuslerp_row_wise: bool | None = None
    #: karcher: the iteration's bounds (None: 10 steps, 1e-5)
    max_iter: int | None = None
    tol: float | None = None

    def __post_init__(self) -> None:
        m = self.method
        if m not in METHODS:
            raise InvalidInput(f"unknown merge method {m!r}; known: {', '.join(METHODS)}")
        if self.rule is None:
            object.__setattr__(self, "rule", "mergekit" if m in _MERGEKIT_ONLY else "peft")
        if self.rule not in RULES:
            raise InvalidInput(f"unknown merge rule {self.rule!r}; known: {', '.join(RULES)}")
        if m in _MERGEKIT_ONLY and self.rule != "mergekit":
            raise InvalidInput(f"{m} is mergekit's method (rule=mergekit); it has no peft rule")
        if m in _OWN_METHODS and self.rule != "peft":
            source = "fusion_bench" if m in _SPECTRAL_METHODS or m == "consensus" else "mergekit"
            raise InvalidInput(f"{m} has no rule to choose (it follows {source}'s formula); "
                               "leave rule at its default")
        if self.rule == "peft" and (self.normalize is not None or self.rescale is not None):
            raise InvalidInput("normalize and rescale have a meaning only with rule=mergekit")
        if self.rule == "mergekit":
            if self.trim != "tensor":
                raise InvalidInput("rule=mergekit trims tensor by tensor (trim=tensor)")
            for key in ("normalize", "rescale"):
                value = getattr(self, key)
                if value is None:
                    value = m in (_NORMALIZE_DEFAULT if key == "normalize" else _RESCALE_DEFAULT)
                if not isinstance(value, bool):
                    raise InvalidInput(f"{key} must be true or false, not {value!r}")
                object.__setattr__(self, key, value)
        c = self.common_fraction
        if m == "iso_cts":
            c = COMMON_FRACTION if c is None else c
            if isinstance(c, bool) or not isinstance(c, numbers.Real) or not (0.0 <= c <= 1.0):
                raise InvalidInput(f"common_fraction must be a number in [0, 1], not {c!r}")
            object.__setattr__(self, "common_fraction", float(c))
        elif c is not None:
            raise InvalidInput(f"common_fraction has no meaning for {m} (only for iso_cts)")
        for key, (methods, default, kind) in _EXTRA.items():
            value = getattr(self, key)
            if m not in methods:
                if value is not None:
                    raise InvalidInput(f"{key} has no meaning for {m} (only for "
                                       f"{', '.join(sorted(methods))})")
                continue
            if value is None:
                if default is None:  # slerp's t: given per tensor by a recipe, or required
                    continue         # by the composition (Composition checks)
                value = default
            object.__setattr__(self, key, _checked(key, value, kind))
        d = self.density
        if m in _DENSITY_METHODS:
            if d is None and self.rule == "mergekit":
                d = 1.0  # mergekit's default density
            if d is None:
                raise InvalidInput(f"{m} needs a density in (0, 1] (the fraction of entries kept)")
            if isinstance(d, bool) or not isinstance(d, numbers.Real):
                raise InvalidInput(f"density must be a number in (0, 1], not {d!r}")
            if not (0.0 < float(d) <= 1.0):  # also refuses NaN
                raise InvalidInput(f"density must be in (0, 1], got {d!r}")
            object.__setattr__(self, "density", float(d))
            if m in _DELLA_METHODS:
                check_della(self.density, self.epsilon)
        elif d is not None:
            raise InvalidInput(f"density has no meaning for {m}; leave it out")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise InvalidInput(f"seed must be an integer, not {s!r}")
        object.__setattr__(self, "seed", int(s))
        if self.seed != 0 and m not in _RANDOM_METHODS:
            raise InvalidInput(f"seed has no meaning for {m} (only for "
                               f"{', '.join(sorted(_RANDOM_METHODS))})")
        if self.trim not in TRIMS:
            raise InvalidInput(f"unknown trim {self.trim!r}; known: {', '.join(TRIMS)}")
        if self.trim != "tensor" and m not in _MAGNITUDE_METHODS:
            raise InvalidInput(f"trim={self.trim} has no meaning for {m} "
                               "(only for ties, magnitude_prune)")
        if self.majority_sign not in MAJORITY_SIGNS:
            raise InvalidInput(f"unknown majority_sign {self.majority_sign!r}; "
                               f"known: {', '.join(MAJORITY_SIGNS)}")
        if self.majority_sign != "total" and m not in _SIGN_METHODS:
            raise InvalidInput(f"majority_sign={self.majority_sign} has no meaning for {m} "
                               f"(only for {', '.join(sorted(_SIGN_METHODS))})")

    @property
    def weight_space(self) -> bool:
        """Whether the method interpolates the models' weights (it needs the base's)."""
        return self.method in WEIGHT_SPACE_METHODS

    def to_json(self) -> dict[str, Any]:
        """The method and the parameters that mean something for it (for recipes)."""
        out: dict[str, Any] = {"method": self.method}
        if self.method in _DENSITY_METHODS:
            out["density"] = self.density
        if self.method in _RANDOM_METHODS:
            out["seed"] = self.seed
        if self.method in _MAGNITUDE_METHODS:
            out["trim"] = self.trim
        if self.method in _SIGN_METHODS:
            out["majority_sign"] = self.majority_sign
        if self.method == "iso_cts":
            out["common_fraction"] = self.common_fraction
        for key, (methods, _, _) in _EXTRA.items():
            if self.method in methods:
                out[key] = getattr(self, key)
        if self.rule != "peft":  # absent at the default: recipes of before stay byte-identical
            out.update(rule=self.rule, normalize=self.normalize, rescale=self.rescale)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MergeParams:
        """Inverse of :meth:`to_json`."""
        if not isinstance(doc, Mapping):
            raise InvalidInput(f"merge parameters must be an object, not {type(doc).__name__}")
        unknown = sorted(set(doc) - {"method", "density", "seed", "trim", "majority_sign",
                                     "rule", "normalize", "rescale", "common_fraction",
                                     *_EXTRA})
        if unknown:
            raise InvalidInput(f"unknown merge parameter(s): {', '.join(unknown)}")
        return cls(**dict(doc))


def operand_setting_keys(method: str) -> tuple[str, ...]:
    """The parameters of ``method`` that may differ per operand and per tensor (mergekit's
    per-model parameters): ``weight`` always, ``density`` where the method has one,
    breadcrumbs' ``gamma``, DELLA's ``epsilon``."""
    if method not in METHODS:
        raise InvalidInput(f"unknown merge method {method!r}; known: {', '.join(METHODS)}")
    keys = ["weight"]
    if method in _DENSITY_METHODS:
        keys.append("density")
    if method in _BAND_METHODS:
        keys.append("gamma")
    if method in _DELLA_METHODS:
        keys.append("epsilon")
    return tuple(keys)


def check_della(density: float, epsilon: float | None) -> None:
    """mergekit's rule for DELLA: below density 1, ``density ± epsilon`` inside (0, 1)."""
    eps = EPSILON if epsilon is None else epsilon
    if density < 1 and (density + eps >= 1 or density - eps <= 0):
        raise InvalidInput(f"della: density ± epsilon must lie in (0, 1) (density {density:g}, "
                           f"epsilon {eps:g})")


def needs_thresholds(params: MergeParams) -> bool:
    """Whether :func:`merge_tensor` needs per-operand global ``thresholds`` for ``params``."""
    return (params.trim == "global" and params.method in _MAGNITUDE_METHODS
            and params.density is not None and params.density < 1.0)


# --- helpers ----------------------------------------------------------------------------------


def operand_seed(kind: str, seed: int, name: str, index: int) -> int:
    """The 63-bit seed of a random drop (``kind``: ``dare`` or ``della``) for operand
    ``index`` of tensor ``name``: the first 63 bits of
    ``sha256(f"tvreg-{kind}\\0{seed}\\0{name}\\0{index}")``."""
    digest = hashlib.sha256(f"tvreg-{kind}\0{seed}\0{name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def operand_generator(kind: str, seed: int, name: str, index: int) -> torch.Generator:
    """A CPU generator seeded with :func:`operand_seed`."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(operand_seed(kind, seed, name, index))
    return gen


def dare_seed(seed: int, name: str, index: int) -> int:
    """The 63-bit seed of DARE's drop mask for operand ``index`` of tensor ``name``."""
    return operand_seed("dare", seed, name, index)


def dare_mask(seed: int, name: str, index: int, shape: Sequence[int] | torch.Size,
              density: float) -> torch.Tensor:
    """DARE's keep mask (float32 zeros and ones, 1 with probability ``density``)."""
    return torch.bernoulli(torch.full(tuple(shape), float(density), dtype=torch.float32),
                           generator=operand_generator("dare", seed, name, index))


def _compute_dtype(deltas: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(d.dtype == torch.float64 for d in deltas) else torch.float32


def _flat(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's entries as a flat numpy array (no copy when it is contiguous)."""
    return t.detach().contiguous().numpy().reshape(-1)


def _mergekit_keep(t: torch.Tensor, density: float) -> Keep:
    """mergekit ``sparsify.magnitude``'s trim: ``max(1, int(density·numel))`` entries, their
    magnitudes compared as float32."""
    if density >= 1:
        return KEEP_ALL
    return magnitude_keep(_flat(t), max(1, int(density * t.numel())), as32=True)


def _mergekit_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit ``sparsify.magnitude`` of one tensor (a new tensor)."""
    if t.numel() == 0:
        return torch.zeros_like(t)
    return torch.from_numpy(trim_flat(_flat(t), _mergekit_keep(t, density))).reshape(t.shape)


def _l1_rescaled(t: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mergekit ``rescaled_masked_tensor(..., RescaleNorm.l1)``: back to the L1 norm of ``t``."""
    before, after = t.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _mergekit_operands(params: MergeParams, ts: list[torch.Tensor], densities: list[float],
                       name: str, gammas: list[float], epsilons: list[float]
                       ) -> tuple[list[np.ndarray], list[Keep]]:
    """mergekit 0.1.5 ``GeneralizedTaskArithmeticMerge``'s sparsification of each delta:
    magnitude for ties, a Bernoulli drop for dare_*, the band for breadcrumbs*, the ranked drop
    for della* (the random masks are tvreg's seeded ones, :func:`operand_generator`, not
    mergekit's global RNG), L1-rescaled when ``rescale``."""
    flats, keeps = [], []
    method = params.method
    for i, (t, d) in enumerate(zip(ts, densities, strict=True)):
        keep = KEEP_ALL
        if d < 1 and (method in _MAGNITUDE_METHODS or method in _BAND_METHODS):
            keep = _mergekit_keep(t, d) if method in _MAGNITUDE_METHODS \
                else band_keep(_flat(t), d, gammas[i])
            if params.rescale:  # needs the whole trimmed tensor's L1 norm first
                kept = torch.from_numpy(trim_flat(_flat(t), keep)).reshape(t.shape)
                t, keep = _l1_rescaled(t, kept), KEEP_ALL
        elif d < 1 and method in _RANDOM_METHODS:
            if method in _DELLA_METHODS:
                check_della(d, epsilons[i])
                mask = della_mask(t, d, epsilons[i], operand_generator("della", params.seed,
                                                                       name, i))
            else:
                mask = dare_mask(params.seed, name, i, t.shape, d)
            t = t * mask.to(t.dtype)
            if params.rescale:
                t = _l1_rescaled(ts[i], t)
        flats.append(_flat(t))
        keeps.append(keep)
    return flats, keeps


def merge_tensor(params: MergeParams, deltas: Sequence[torch.Tensor], weights: Sequence[float],
                 *, name: str = "", thresholds: Sequence[float] | None = None,
                 densities: Sequence[float] | None = None,
                 gammas: Sequence[float] | None = None, epsilons: Sequence[float] | None = None,
                 t: float | None = None, base: torch.Tensor | None = None,
                 device: Any = None) -> torch.Tensor:
    """The merged delta of one tensor: ``deltas[i]`` is operand ``i``'s delta, ``weights[i]`` its
    coefficient. ``name`` seeds DARE's masks (with ``params.seed`` and the operand index);
    ``thresholds`` (one per operand, from :class:`MagnitudeQuantile`) are needed iff
    :func:`needs_thresholds`. ``densities`` (one per operand) replace ``params.density`` operand
    by operand (mergekit's per-model ``density``; with either rule, not with a global trim),
    and so do ``gammas`` and ``epsilons``
    (breadcrumbs', DELLA's); ``t`` replaces ``params.t`` for this tensor (a slerp whose ``t``
    varies over layers). ``base`` is the base model's tensor, needed by the methods that
    interpolate weights (:data:`WEIGHT_SPACE_METHODS`: they merge ``θᵢ = base + τᵢ`` and return
    the result minus ``base``). ``device`` is where the spectral methods compute (their SVDs;
    the result is then on it); None: the host, every core. Returns a new float32 tensor
    (float64 if any delta is float64).
    """
    compute = torch.device(device) if device is not None else None
    if compute is not None and compute.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {compute}: no CUDA GPU here (torch.cuda.is_available() "
                           "is false)")
    if not isinstance(params, MergeParams):
        raise InvalidInput(f"params must be MergeParams, not {type(params).__name__}")
    deltas = list(deltas)
    weights = [float(w) for w in weights]
    if not deltas:
        raise InvalidInput(f"nothing to merge for tensor {name!r}: no operands")
    if len(weights) != len(deltas):
        raise InvalidInput(f"{len(deltas)} deltas but {len(weights)} weights for tensor {name!r}")
    shape = deltas[0].shape
    for i, d in enumerate(deltas):
        if not isinstance(d, torch.Tensor) or not d.is_floating_point():
            raise InvalidInput(f"operand {i} of tensor {name!r} is not a floating-point tensor")
        if d.shape != shape:
            raise InvalidInput(f"operand {i} of tensor {name!r} has shape {list(d.shape)}, "
                               f"operand 0 has {list(shape)}")
    if not all(math.isfinite(w) for w in weights):
        raise InvalidInput(f"non-finite weight in {weights} for tensor {name!r}")
    global_trim = needs_thresholds(params)
    cuts: list[float] = []  # the thresholds as floats, when global_trim
    if global_trim:
        if thresholds is None:
            raise InvalidInput("trim=global needs one threshold per operand (MagnitudeQuantile)")
        cuts = [float(x) for x in thresholds]
        if len(cuts) != len(deltas):
            raise InvalidInput(f"{len(deltas)} deltas but {len(cuts)} thresholds")
        if any(math.isnan(x) for x in cuts):
            raise InvalidInput("a global-trim threshold is NaN")
    elif thresholds is not None and params.trim != "global":
        raise InvalidInput(f"thresholds given, but trim={params.trim} for {params.method}")

    dtype = _compute_dtype(deltas)
    device = deltas[0].device  # the kernels run on the host (merge_kernels.py)
    ts = [d.detach().to("cpu", dtype) for d in deltas]
    method, density = params.method, params.density
    per_operand = [float(x) for x in densities] if densities is not None else None
    if per_operand is not None and (len(per_operand) != len(ts) or any(
            not (0.0 < x <= 1.0) for x in per_operand)):
        raise InvalidInput(f"densities must be one per operand, each in (0, 1]: {per_operand}")
    gam = _per_operand("gammas", gammas, len(ts), params.gamma, 0.0, 1.0)
    eps = _per_operand("epsilons", epsilons, len(ts), params.epsilon, 0.0, math.inf)
    if params.rule == "mergekit":
        flats, keeps = _mergekit_operands(
            params, ts, per_operand or [density if density is not None else 1.0] * len(ts), name,
            gam, eps)
        combine = "mergekit_sign" if method in _SIGN_METHODS else "mergekit_sum"
        out = merge_flat(flats, keeps, weights, combine=combine,
                         majority=params.majority_sign, normalize=bool(params.normalize))
        return torch.from_numpy(out).reshape(shape).to(device)
    if gammas is not None or epsilons is not None:  # breadcrumbs*, della*: rule=mergekit
        raise InvalidInput("per-operand gammas and epsilons need rule=mergekit")
    if per_operand is not None and (method not in _DENSITY_METHODS or global_trim):
        raise InvalidInput(f"per-operand densities have no meaning for {method}"
                           + (" with trim=global (one cut per vector)" if global_trim else ""))
    if method in _SPECTRAL_METHODS:
        if compute is not None:  # the SVDs on that device (CUDA: pinned, non-blocking copies)
            return _spectral(params, [_to_compute(x, compute) for x in ts], weights)
        return _spectral(params, ts, weights).to(device)
    if method in _OWN_METHODS:
        if t is not None:
            _checked("t", t, "real")
        if params.weight_space:
            if base is None:
                raise InvalidInput(f"{method} interpolates the models' weights: it needs the "
                                   f"base model's tensor {name!r}")
            if tuple(base.shape) != tuple(shape):
                raise InvalidInput(f"the base's tensor {name!r} has shape {list(base.shape)}, "
                                   f"the operands {list(shape)}")
            base = base.detach().to("cpu", dtype)
        with torch.no_grad():
            return _geometric(params, ts, weights, base, t, name).to(device)

    flats = [_flat(x) for x in ts]
    keeps = [KEEP_ALL] * len(ts)  # task arithmetic, and density >= 1 (peft: no trim, no rescale)
    # one density per operand (a recipe's or operand_params'), else params.density for all
    dens: list[float | None] = list(per_operand) if per_operand else [density] * len(ts)
    if method != "task_arithmetic" and method in _MAGNITUDE_METHODS and global_trim:
        if density is not None and density < 1.0:
            keeps = [threshold_keep(c) for c in cuts]
    elif method != "task_arithmetic":
        for i, share in enumerate(dens):
            if share is None or share >= 1.0:
                continue
            if method in _MAGNITUDE_METHODS:  # peft magnitude_based_pruning: int(density·numel)
                keeps[i] = magnitude_keep(flats[i], int(share * flats[i].size), as32=False)
            else:  # dare_*: peft random_pruning(..., rescale=True)
                mask = dare_mask(params.seed, name, i, shape, share).to(dtype)
                flats[i] = _flat(ts[i] * mask / share)
    combine = "ties" if method in _SIGN_METHODS else "sum"
    out = merge_flat(flats, keeps, weights, combine=combine, majority=params.majority_sign)
    return torch.from_numpy(out).reshape(shape).to(device)


def _per_operand(key: str, values: Sequence[float] | None, count: int, default: float | None,
                 low: float, high: float) -> list[float]:
    if values is None:
        return [default if default is not None else 0.0] * count
    out = [float(x) for x in values]
    if len(out) != count or any(not (low <= x <= high) for x in out):
        raise InvalidInput(f"{key} must be one per operand, each in [{low:g}, {high:g}]: {out}")
    return out


def operand_count_problem(method: str, count: int) -> str | None:
    """Why ``count`` operands do not suit ``method`` (None when they do)."""
    if method == "slerp" and count not in (1, 2):
        return ("slerp interpolates between two models: give two vectors (or one, to "
                f"interpolate from the base towards it), not {count}")
    if method == "nuslerp" and count != 2:
        return f"nuslerp interpolates between two vectors, not {count}"
    if method == "model_stock" and count < 2:
        return f"model_stock needs at least two fine-tunes of one task, not {count}"
    return None


def _geometric(params: MergeParams, ts: list[torch.Tensor], weights: list[float],
               base: torch.Tensor | None, t: float | None, name: str) -> torch.Tensor:
    """slerp, nuslerp, karcher, model_stock, consensus (interpolation.py, consensus.py)."""
    method = params.method
    problem = operand_count_problem(method, len(ts))
    if problem:
        raise InvalidInput(f"{problem} (tensor {name!r})")
    if method == "nuslerp":  # the weights are the interpolation's, not scales of τ
        assert params.nuslerp_row_wise is not None and params.nuslerp_flatten is not None
        return nuslerp(nuslerp_t(weights), ts[0], ts[1], row_wise=params.nuslerp_row_wise,
                       flatten=params.nuslerp_flatten)
    scaled = [x * w if w != 1.0 else x for x, w in zip(ts, weights, strict=True)]
    if method == "model_stock":
        return model_stock(scaled, filter_wise=bool(params.filter_wise))
    if method == "consensus":
        assert params.k is not None and params.tall_mask_lambda is not None
        return consensus(scaled, k=params.k, tall_mask_lambda=params.tall_mask_lambda)
    assert base is not None
    models = [base + x for x in scaled]
    if method == "slerp":
        point = params.t if t is None else float(t)
        assert point is not None
        ends = [base] + models if len(models) == 1 else models
        return slerp(point, ends[0], ends[1]) - base
    assert params.max_iter is not None and params.tol is not None
    return karcher(models, [1.0 / len(models)] * len(models), max_iter=params.max_iter,
                   tol=params.tol) - base


def _to_compute(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _spectral(params: MergeParams, ts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """TSV-M, Iso-C, Iso-CTS (spectral.py) of the weighted deltas; tensors that are not
    matrices averaged, as the papers do."""
    scaled = [t * w if w != 1.0 else t for t, w in zip(ts, weights, strict=True)]
    if scaled[0].dim() != 2 or 0 in scaled[0].shape:
        return mean(scaled, running=params.method != "iso_c")
    with torch.no_grad():
        if params.method == "tsv":
            return tsv(scaled)
        if params.method == "iso_c":
            return iso_c(scaled)
        assert params.common_fraction is not None
        return iso_cts(scaled, params.common_fraction)


# --- global trim ------------------------------------------------------------------------------

_CHUNK = 1 << 22
_INF_BITS = 0x7F800000


class MagnitudeQuantile:
    """The exact k-th largest ``|x|`` over many tensors, in two streaming passes.

    ``k = int(density·total)`` (as peft's per-tensor trim). Pass 1 sees every tensor and counts
    the high 16 bits of the float32 bit pattern of ``|x|`` (for non-negative floats the pattern
    ordered as an unsigned integer orders the values); pass 2 sees every tensor again and counts
    the low 16 bits of the entries that fall in the bucket holding the k-th largest. State is two
    65536-bin histograms, whatever the number of entries. Magnitudes are ranked as float32
    (bf16/fp16 exactly, float64 rounded to float32; :func:`merge_tensor` compares the same way).
    ``-0.0`` counts as ``0``. NaN and ±Inf raise :class:`NonFiniteValues`: the cut of a vector
    with non-finite entries is not defined.
    """

    def __init__(self, density: float, total: int) -> None:
        if isinstance(density, bool) or not isinstance(density, numbers.Real) \
                or not (0.0 < float(density) <= 1.0):
            raise InvalidInput(f"density must be in (0, 1], got {density!r}")
        if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 0:
            raise InvalidInput(f"total must be a non-negative integer, got {total!r}")
        self.density: float = float(density)
        self.total: int = int(total)
        self.k: int = int(self.density * self.total)
        self._high: torch.Tensor = torch.zeros(65536, dtype=torch.int64)
        self._low: torch.Tensor = torch.zeros(65536, dtype=torch.int64)
        self._seen1: int = 0
        self._seen2: int = 0
        self._bucket: int | None = None  # high 16 bits of the k-th largest
        self._rank: int = 0              # its rank (1-based, from the top) inside the bucket

    @staticmethod
    def _bits(t: torch.Tensor) -> Iterator[torch.Tensor]:
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.numel() == 0):
            raise InvalidInput("MagnitudeQuantile needs floating-point tensors")
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            bits = flat[start:start + _CHUNK].to("cpu", torch.float32).abs().view(torch.int32)
            if bool((bits >= _INF_BITS).any()):
                raise NonFiniteValues("global trim needs finite values; this vector has NaN or Inf")
            yield bits

    def pass1(self, t: torch.Tensor) -> None:
        """Count one tensor's magnitudes by their high 16 bits (every tensor, once)."""
        if self._bucket is not None:
            raise InvalidInput("pass1 after pass2 has started")
        for bits in self._bits(t):
            self._high += torch.bincount(bits >> 16, minlength=65536)
            self._seen1 += bits.numel()

    def _select(self) -> None:
        if self._seen1 != self.total:
            raise InvalidInput(f"pass1 saw {self._seen1} values, expected total={self.total}")
        above = torch.flip(self._high, dims=[0]).cumsum(0)  # above[j]: count with high >= 65535-j
        j = int(torch.searchsorted(above, torch.tensor([self.k]), right=False)[0])
        self._bucket = 65535 - j
        self._rank = self.k - (int(above[j - 1]) if j > 0 else 0)

    def pass2(self, t: torch.Tensor) -> None:
        """Count the low 16 bits of the entries in the selected bucket (every tensor, once more)."""
        if self.k == 0:
            self._seen2 += t.numel()
            return
        if self._bucket is None:
            self._select()
        for bits in self._bits(t):
            inside = bits[(bits >> 16) == self._bucket]
            if inside.numel():
                self._low += torch.bincount(inside & 0xFFFF, minlength=65536)
            self._seen2 += bits.numel()

    def threshold(self) -> float:
        """The k-th largest ``|x|`` as a float32 value (``+inf`` if ``k == 0``: keep nothing)."""
        if self.k == 0:
            return math.inf
        if self._bucket is None or self._seen2 != self.total:
            raise InvalidInput(f"threshold needs both passes over all {self.total} values "
                               f"(pass2 saw {self._seen2})")
        above = torch.flip(self._low, dims=[0]).cumsum(0)
        j = int(torch.searchsorted(above, torch.tensor([self._rank]), right=False)[0])
        bits = (self._bucket << 16) | (65535 - j)
        return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0])
