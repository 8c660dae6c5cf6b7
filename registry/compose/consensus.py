"""TALL-mask consensus merging (Wang et al., "Localizing Task Information for Improved Model
Merging and Compression", ICML 2024), as fusion_bench 0.2.33 computes it
(``method/tall_mask/utils.py``: ``generate_task_masks``, ``construct_consensus_mask``).

For task vectors ``τ₁ … τ_T`` of one tensor and their sum ``τ_MTL = Σ τₜ``, task ``t``'s TALL
mask keeps the entries where the task's own change outweighs what the others add:
``mₜ = |τₜ| > λ·|τ_MTL − τₜ|`` (``λ``: ``tall_mask_lambda``; fusion_bench writes it on weights,
``|θ₀ − θₜ| > λ·|θ_MTL − θₜ|``, the same with ``θ_MTL = θ₀ + τ_MTL``). The consensus mask keeps
the entries at least ``k`` tasks' masks select (``k = 2`` drops "selfish" weights that help one
task only, and "catastrophic" ones no task selects); the merged delta is ``τ_MTL`` on it
(consensus task arithmetic). ``k = 0`` is task arithmetic; ``k > T`` keeps nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: the paper's k, fusion_bench's default TALL-mask λ
K = 2
TALL_MASK_LAMBDA = 0.6


def tall_masks(deltas: Sequence[torch.Tensor], total: torch.Tensor,
               tall_mask_lambda: float) -> list[torch.Tensor]:
    """Each task's TALL mask (bool tensors) against the multi-task vector ``total``."""
    return [t.abs() > (total - t).abs() * tall_mask_lambda for t in deltas]


def consensus(deltas: Sequence[torch.Tensor], *, k: int = K,
              tall_mask_lambda: float = TALL_MASK_LAMBDA) -> torch.Tensor:
    """Consensus task arithmetic of one tensor's task vectors."""
    total = deltas[0] + 0
    for t in deltas[1:]:
        total = total + t
    count = torch.zeros_like(total)
    for mask in tall_masks(deltas, total, tall_mask_lambda):
        count += mask.to(count.dtype)
    return total * (count >= k).to(total.dtype)
