"""The sparsifications of mergekit 0.1.5 beyond the magnitude trim and DARE's drop: Model
Breadcrumbs' band (``magnitude_outliers``) and DELLA's magnitude-ranked drop
(``della_magprune``). Pure math, no I/O; :mod:`tvreg.compose.merge` combines the results.

* :func:`band_keep` — breadcrumbs (Davari & Belilovsky, 2023): of ``n`` entries keep
  ``target = int(density·n)``: drop the ``n_top = int(gamma·n)`` largest magnitudes (outliers)
  and the smallest, i.e. keep the ranks ``[n_bot, n_bot + target)`` of the ascending order of
  ``|x|`` (as float32), ``n_bot = max(0, n − target − n_top)`` (mergekit shrinks the outlier
  cut when the density leaves too little). Ties: the ascending order is a *stable* sort, tied
  magnitudes ordered by flat position (mergekit's ``torch.sort`` is unstable, so a band equals
  it up to the entries tied at one of its two cuts).
* :func:`della_keep_probabilities` and :func:`della_mask` — DELLA (Deep et al., 2024): along
  dimension 1 (a 1-D tensor is one row) the entries are ranked by magnitude, ascending, from 1
  (a stable sort, ties by position), and kept with probability ``(density − ε) + r·2ε`` where
  ``r = (rank − 1)/(count − 1)`` (a row of one entry: ``r = 0.5``, where mergekit divides by
  zero), drawn by ``torch.bernoulli`` from a private generator seeded as DARE's masks
  (:func:`tvreg.compose.merge.operand_seed`). mergekit then rescales the kept entries to the
  L1 norm of the delta (``rescale``, on by default), not by ``1/p`` as the paper does.
"""

from __future__ import annotations

import numpy as np
import torch

from tvreg.compose.merge_kernels import KEEP_ALL, KEEP_NONE, Keep

#: mergekit's defaults
GAMMA = 0.01
EPSILON = 0.15


def band_keep(flat: np.ndarray, density: float, gamma: float) -> Keep:
    """Breadcrumbs' band of ``flat`` (see the module docstring) as a :class:`Keep`."""
    n = flat.size
    if density >= 1:
        return KEEP_ALL
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    if target <= 0:
        return KEEP_NONE
    mag = np.abs(flat)
    if mag.dtype != np.float32:
        mag = mag.astype(np.float32)
    lo, hi = n_bot, n_bot + target - 1  # the first and last kept ascending ranks
    part = mag.copy()
    part.partition([lo, hi] if lo != hi else lo)
    v_lo, v_hi = part[lo], part[hi]
    del part
    mask = np.greater(mag, v_lo)
    mask &= np.less(mag, v_hi)
    below_lo = int(np.count_nonzero(mag < v_lo))
    tied_lo = np.flatnonzero(mag == v_lo)  # ranks below_lo .. below_lo + len - 1, by position
    if v_lo == v_hi:
        mask[tied_lo[lo - below_lo:hi + 1 - below_lo]] = True
    else:
        mask[tied_lo[lo - below_lo:]] = True
        below_hi = int(np.count_nonzero(mag < v_hi))
        tied_hi = np.flatnonzero(mag == v_hi)
        mask[tied_hi[:hi + 1 - below_hi]] = True
    return Keep("mask", mask=mask)


def della_keep_probabilities(t: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """The probability each entry of ``t`` is kept (float32, ``t``'s shape)."""
    x = t.reshape(1, -1) if t.dim() < 2 else t
    if x.numel() == 0:
        return torch.empty(t.shape, dtype=torch.float32)
    order = torch.argsort(x.abs(), dim=1, stable=True)
    position = torch.arange(1, x.shape[1] + 1).view(1, -1, *([1] * (x.dim() - 2)))
    ranks = torch.empty_like(order).scatter_(1, order, position.expand_as(order).contiguous())
    r = ranks.to(torch.float32)  # mergekit's work dtype for float32 deltas
    lo = r.min(dim=1, keepdim=True).values
    hi = r.max(dim=1, keepdim=True).values
    if x.shape[1] == 1:
        rank_norm = torch.full_like(r, 0.5)
    else:
        rank_norm = ((r - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    return probs.reshape(t.shape)


def della_mask(t: torch.Tensor, density: float, epsilon: float,
               generator: torch.Generator) -> torch.Tensor:
    """DELLA's keep mask of ``t`` (zeros and ones in the probabilities' dtype)."""
    return torch.bernoulli(della_keep_probabilities(t, density, epsilon), generator=generator)
