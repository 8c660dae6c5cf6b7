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
Iso-CTS time for a 30522-row embedding). For a matrix at least twice as long as wide (the
word embedding: most of the time), the top singular triplets and the polar factors come from
the float64 Gram matrix of its short side (``eigh`` of n × n) instead of an SVD of the long
matrix, where that is accurate: the singular values divided by are above ``_GRAM_COND`` of the
largest (then within ~1e-8 of the SVD's values); elsewhere the SVD of the matrix as given, the
same computation as fusion_bench's, whose arbitrary choices among rounding-level directions
it then shares. Other tensors (1-D, or 2-D with a zero dimension) are averaged, as the papers
do, by :func:`mean`.
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


#: the Gram route is taken only where it is accurate: the smallest singular value it divides by
#: above this share of the largest (its relative error is then below ~1e-16 / 1e-8 = 1e-8)
_GRAM_COND = 1e-4


def _gram_eigh(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of ``xᵀx`` in float64 (x tall: m ≥ n)."""
    x64 = x.double()
    lam, w = torch.linalg.eigh(x64.T @ x64)
    return lam.flip(0), w.flip(1)


def _top_svd(x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``r`` singular triplets of ``x``. For a matrix at least twice as long as wide,
    from the float64 Gram matrix of its short side (``eigh`` of n × n: 1.6x faster than the SVD
    of a 30522 × 384 embedding, equal within 1e-6 where well conditioned); the SVD where the
    r-th singular value is below ``_GRAM_COND`` of the first (the Gram route would divide by
    rounding noise) and for squarer matrices."""
    m, n = x.shape
    tall = x if m >= n else x.T
    if r > 0 and tall.shape[0] >= 2 * tall.shape[1]:
        lam, w = _gram_eigh(tall)
        sig = lam.clamp(min=0).sqrt()
        if bool(torch.isfinite(sig).all()) and float(sig[r - 1]) > _GRAM_COND * float(sig[0]):
            v = w[:, :r]
            u = ((tall.double() @ v) / sig[:r]).to(x.dtype)
            s, vt = sig[:r].to(x.dtype), v.T.to(x.dtype)
            return (u, s, vt) if m >= n else (vt.T, s, u.T)
    # the SVD of x as given (not of its transpose): where singular values are at rounding
    # level their vectors are arbitrary, and only the same computation gives the same ones
    u, s, vh = _svd(x)
    return u[:, :r], s[:r], vh[:r, :]


def _polar(x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The orthogonal (semi-orthogonal) matrix nearest to ``x``: ``U Vᵀ`` of its SVD. With
    ``k`` (``x`` at least as tall as wide), of its first ``k`` columns, the rest zeros: the
    polar factor of a matrix whose other columns are zero, where those meet zero singular
    values. From the float64 Gram matrix where ``x`` is twice as tall as wide and well
    conditioned (``x (xᵀx)^(-1/2)``), else from the SVD."""
    m, n = x.shape
    if m < n:
        assert k is None
        return _polar(x.T).T
    k = n if k is None else k
    part = x[:, :k]
    if m >= 2 * k and k > 0:
        lam, w = _gram_eigh(part)
        if bool(torch.isfinite(lam).all()) and float(lam[-1]) > _GRAM_COND ** 2 * float(lam[0]):
            inv = (w * lam.rsqrt()) @ w.T  # (xᵀx)^(-1/2)
            out = (part.double() @ inv).to(x.dtype)
            return out if k == n else torch.cat([out, out.new_zeros((m, n - k))], dim=1)
    u, _, vh = _svd(part)
    out = u @ vh
    return out if k == n else torch.cat([out, out.new_zeros((m, n - k))], dim=1)


def tsv(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """TSV-M of the task matrices ``ts`` (one shape, m × n)."""
    m, n = ts[0].shape
    p = min(m, n)
    r = int(p * (1 / len(ts)))  # fusion_bench's sv_reduction = 1/T (int(384 · (1/3)) = 127)
    sum_u = ts[0].new_zeros((m, p))
    sum_s = ts[0].new_zeros((p,))
    sum_vh = ts[0].new_zeros((p, n))
    for i, t in enumerate(ts):
        u, s, vh = _top_svd(t, r)
        sum_u[:, i * r:(i + 1) * r] = u
        sum_s[i * r:(i + 1) * r] = s
        sum_vh[i * r:(i + 1) * r, :] = vh
        del u, s, vh
    used = r * len(ts)  # the columns after it are zero, as their singular values
    return (_polar(sum_u, used) * sum_s) @ _polar(sum_vh.T, used).T


def iso_c(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C of the task matrices ``ts``."""
    k = len(ts)
    total = (_sum(ts) / k) * k  # fusion_bench's rounding: the mean, scaled back
    m, n = total.shape
    tall = total if m >= n else total.T
    if tall.shape[0] >= 2 * tall.shape[1]:  # mean(σ)·U Vᵀ from the Gram matrix, as _polar
        lam, w = _gram_eigh(tall)
        if bool(torch.isfinite(lam).all()) and float(lam[-1]) > _GRAM_COND ** 2 * float(lam[0]):
            out = (tall.double() @ ((w * lam.rsqrt()) @ w.T)) * lam.sqrt().mean()
            return (out if m >= n else out.T).to(total.dtype)
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
    common_u, common_s, common_vh = _top_svd(_sum(ts), common)
    comb_u = ts[0].new_zeros((m, p))
    comb_s = ts[0].new_zeros((p,))
    comb_vh = ts[0].new_zeros((p, n))
    for i, t in enumerate(ts):
        specific = t - common_u @ (common_u.T @ t)
        u, s, vh = _top_svd(specific, per_task)
        comb_u[:, i * per_task:(i + 1) * per_task] = u
        comb_s[i * per_task:(i + 1) * per_task] = s
        comb_vh[i * per_task:(i + 1) * per_task, :] = vh
        del specific, u, s, vh
    at = k * per_task
    comb_u[:, at:at + common] = common_u
    comb_s[at:at + common] = common_s
    comb_vh[at:at + common, :] = common_vh
    return (_polar(comb_u) * comb_s.mean()) @ _polar(comb_vh.T).T
