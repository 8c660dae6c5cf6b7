"""Spectral merges of one 2-D tensor: TSV-M, Iso-C and Iso-CTS. Pure math on torch tensors.

The operands are the task matrices τᵢ (already scaled by their coefficients); every function
returns the merged matrix (λ is applied by the composition). The formulas are those of the
papers as implemented by fusion_bench 0.2.33, and tests/test_spectral.py checks them against
its functions on the same matrices:

* :func:`tsv` — Task Singular Vectors merge (Gargiulo et al., CVPR 2025;
  ``TSVM_utils.compute_and_sum_svd_mem_reduction``): per task the top
  ``r = int(p · (1/T))`` singular triplets (``p = min(m, n)``, ``T`` tasks) placed side by side
  in ``U`` (m × p), ``s`` and ``Vᵀ`` (p × n); ``U`` and ``Vᵀ`` replaced by their nearest
  orthogonal matrices (``polar(X) = Uₓ Vₓᵀ`` of their SVDs); the result ``polar(U)·diag(s)·
  polar(Vᵀ)``.
* :func:`iso_c` — Iso-C (Marczak et al., ICML 2025; ``iso_utils.iso_c``): the SVD of
  ``Σ τᵢ`` with every singular value replaced by their mean: ``mean(σ) · U Vᵀ``.
* :func:`iso_cts` — Iso-CTS (``iso_utils.iso_cts``): the top ``c`` singular directions of
  ``Σ τᵢ`` (``c`` from ``common_fraction``, rounded so that the rest divides among the tasks)
  and, per task, the top ``(p − c)/T`` directions of τᵢ with the common subspace projected out;
  both bases orthogonalised (polar), all singular values replaced by their mean.

Where the arithmetic differs from fusion_bench's, it is the same value evaluated in fewer
operations: ``U·diag(s)·V`` as ``(U * s) @ V``; the projection ``U_c U_cᵀ W`` as
``U_c (U_cᵀ W)`` (fusion_bench forms the m × m matrix ``U_c U_cᵀ``: 3.7 GB and most of its
Iso-CTS time for a 30522-row embedding). Other tensors (1-D, or 2-D with a zero dimension) are
averaged, as the papers do, by :func:`mean`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tvreg.errors import InvalidInput

SPECTRAL_METHODS = ("tsv", "iso_c", "iso_cts")


def mean(ts: Sequence[torch.Tensor], *, running: bool = True) -> torch.Tensor:
    """The operands' mean: fusion_bench's running mean ``m += (τᵢ − m)/(i + 1)`` (TSV-M,
    Iso-CTS), or ``Σ τᵢ / T`` (Iso-C, ``running=False``)."""
    if not running:
        return _sum(ts) / len(ts)
    out = ts[0].clone()
    for i, t in enumerate(ts[1:], start=1):
        out += (t - out) / (i + 1)
    return out


def _sum(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    out = ts[0] + 0  # Python's sum(): 0 + τ₀ + τ₁ + …
    for t in ts[1:]:
        out = out + t
    return out


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return u, s, vh


def _polar(x: torch.Tensor) -> torch.Tensor:
    """The orthogonal (semi-orthogonal) matrix nearest to ``x``: ``U Vᵀ`` of its SVD."""
    u, _, vh = _svd(x)
    return u @ vh


def tsv(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """TSV-M of the task matrices ``ts`` (one shape, m × n)."""
    m, n = ts[0].shape
    p = min(m, n)
    r = int(p * (1 / len(ts)))  # fusion_bench's sv_reduction = 1/T (int(384 · (1/3)) = 127)
    sum_u = ts[0].new_zeros((m, p))
    sum_s = ts[0].new_zeros((p,))
    sum_vh = ts[0].new_zeros((p, n))
    for i, t in enumerate(ts):
        u, s, vh = _svd(t)
        sum_u[:, i * r:(i + 1) * r] = u[:, :r]
        sum_s[i * r:(i + 1) * r] = s[:r]
        sum_vh[i * r:(i + 1) * r, :] = vh[:r, :]
        del u, s, vh
    return (_polar(sum_u) * sum_s) @ _polar(sum_vh)


def iso_c(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C of the task matrices ``ts``."""
    k = len(ts)
    total = (_sum(ts) / k) * k  # fusion_bench's rounding: the mean, scaled back
    u, s, vh = _svd(total)
    del total
    return (u * s.mean()) @ vh


def iso_cts(ts: Sequence[torch.Tensor], common_fraction: float) -> torch.Tensor:
    """Iso-CTS of the task matrices ``ts`` with ``common_fraction`` of the directions common."""
    m, n = ts[0].shape
    p, k = min(m, n), len(ts)
    common = int(p * common_fraction)
    specific_total = round((p - common) / k) * k  # the task-specific part divides by k
    common = p - specific_total
    if common < 0:  # more tasks than directions: fusion_bench would slice garbage
        raise InvalidInput(f"iso_cts: a {m}x{n} matrix has {p} singular directions, too few "
                           f"for {k} tasks with common_fraction {common_fraction}")
    per_task = int((p - common) / k)
    u, s, vh = _svd(_sum(ts))
    common_u, common_s, common_vh = u[:, :common], s[:common], vh[:common, :]
    del u, s, vh
    comb_u = ts[0].new_zeros((m, p))
    comb_s = ts[0].new_zeros((p,))
    comb_vh = ts[0].new_zeros((p, n))
    for i, t in enumerate(ts):
        specific = t - common_u @ (common_u.T @ t)
        u, s, vh = _svd(specific)
        comb_u[:, i * per_task:(i + 1) * per_task] = u[:, :per_task]
        comb_s[i * per_task:(i + 1) * per_task] = s[:per_task]
        comb_vh[i * per_task:(i + 1) * per_task, :] = vh[:per_task, :]
        del specific, u, s, vh
    at = k * per_task
    comb_u[:, at:at + common] = common_u
    comb_s[at:at + common] = common_s
    comb_vh[at:at + common, :] = common_vh
    return (_polar(comb_u) * comb_s.mean()) @ _polar(comb_vh)
