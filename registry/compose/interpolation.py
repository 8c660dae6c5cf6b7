"""Geometric merges of mergekit 0.1.5: SLERP, NuSLERP, the Karcher mean and Model Stock.
Pure math on torch tensors (float32, or float64 when the inputs are), one tensor at a time.

* :func:`slerp` — spherical interpolation of two tensors, each flattened to one vector
  (mergekit ``slerp``): ``t = 0`` gives ``v0``; where the normalized vectors are (anti)parallel
  (``|cos| > 0.9995``) a linear interpolation. mergekit interpolates the *models' weights*
  (``base_model`` and one other); :mod:`tvreg.compose.merge` passes ``θ = θ_base + τ``.
* :func:`nuslerp` — mergekit ``nuslerp``: the same formula without renormalising (the result is
  ``(sin((1−t)θ)·v0 + sin(tθ)·v1)/sin θ``, lerp where ``1 − cos² ≤ 1e-16``), over the whole
  tensor (``flatten``, the default), its rows (``row_wise=False``: the last dimension) or its
  columns (``row_wise=True``); ``t = w₁/(w₀ + w₁)`` from the two weights. With a base, of the
  task vectors.
* :func:`karcher` — mergekit ``karcher``: the weighted Riemannian (Karcher) mean of the
  tensors' directions on the unit sphere (at most ``max_iter`` steps, ``tol``), scaled by the
  weighted mean of their norms; of the models' weights.
* :func:`model_stock` — Model Stock (Jang et al., 2024; mergekit ``model_stock``): the
  average of the fine-tunes pulled towards the base by ``t = k·cos/(1 + (k − 1)·cos)``, ``cos``
  the mean pairwise cosine of the task vectors (over the whole tensor, or per row with
  ``filter_wise``); ``t = 0`` where ``1 + (k − 1)·cos`` vanishes. On task vectors:
  ``t · mean(τᵢ)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _work(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """SLERP from ``v0`` (``t = 0``) to ``v1`` (``t = 1``), ``v0``'s shape."""
    dtype = _work(v0)
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    if a.numel() == 0:
        return a.reshape(v0.shape)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if float(na) > eps else torch.ones_like(na)
    nb = nb if float(nb) > eps else torch.ones_like(nb)
    dot = float(torch.dot(a / na, b / nb).clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    theta = torch.acos(torch.tensor(dot, dtype=dtype))
    sin_theta = torch.sin(theta)
    coef_a = torch.sin((1 - t) * theta) / sin_theta
    coef_b = torch.sin(t * theta) / sin_theta
    return (coef_a * a + coef_b * b).reshape(v0.shape)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, row_wise: bool = False,
            flatten: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """NuSLERP of two tensors (see the module docstring), ``v0``'s shape."""
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(a) * unit(b), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin_theta
    out = torch.where(colinear, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp_t(weights: Sequence[float]) -> float:
    """NuSLERP's ``t`` from the two weights: ``w₁/(w₀ + w₁)``, 0.5 when they cancel."""
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def karcher(tensors: Sequence[torch.Tensor], alphas: Sequence[float], *, max_iter: int = 10,
            tol: float = 1e-5) -> torch.Tensor:
    """The weighted Karcher mean of ``tensors`` (see the module docstring)."""
    if len(tensors) == 1:
        return tensors[0]
    dtype = _work(tensors[0])
    norms, units = [], []
    for x in tensors:
        norm = torch.linalg.vector_norm(x.to(dtype))
        norms.append(norm)
        units.append(torch.zeros_like(x) if float(norm) == 0.0 else (x / norm).to(x.dtype))
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    weights = [alphas[i] / total for i in valid]
    valid_units = [units[i] for i in valid]
    mean = torch.zeros_like(valid_units[0])
    for a, u in zip(weights, valid_units, strict=True):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = valid_units[0].clone() if float(mean_norm) < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(weights, valid_units, strict=True):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if float(tangent_norm) < tol:
            break
        mean = (torch.cos(tangent_norm) * mean
                + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if float(unit_norm) > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum(a * n for a, n in zip(alphas, norms, strict=True))
    return scale * mean


def model_stock(deltas: Sequence[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    """Model Stock's merged delta of two or more task vectors of one tensor."""
    shape = deltas[0].shape
    if filter_wise:
        xs = [d.unsqueeze(0) if d.dim() == 1 else d for d in deltas]
    else:
        xs = [d.reshape(-1) for d in deltas]
    cos = []
    for i, a in enumerate(xs):
        for b in xs[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    k = len(xs)
    denominator = 1 + (k - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (k * cos_theta) / safe)
    average = xs[0].clone()
    for x in xs[1:]:
        average += x
    average /= k
    return (t * average).reshape(shape)
