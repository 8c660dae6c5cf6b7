"""The trimmed, sign-elected merges (TIES, magnitude pruning, DARE's combination) in numpy, chunk
by chunk.

:mod:`tvreg.compose.merge` states the formulas (peft's and mergekit's); this module evaluates
them without a ``k × numel`` temporary: the operands' flat arrays are read one cache-sized chunk
at a time (:data:`CHUNK` entries), each chunk trimmed, elected and combined in a few small
scratch arrays, and written into one output array. Memory is the output plus, while a cut is
searched, one scratch copy of one operand's magnitudes — against ~5 stacked copies of all
operands for the same formulas written with ``torch.stack``. numpy's loops release the GIL and
run on the calling thread only: no intra-op thread pool spinning on the cores the decoders need
(the reason the task-arithmetic sum runs in numpy too, composition.py).

The float operations are the formulas' own, in the same order, so the results are bit for bit
those of the stacked formulas, with one rule for the sums over operands: **sequential in operand
order, starting from +0.0** (``((0 + x₀) + x₁) + …``; a sum of ``-0.0`` terms is ``+0.0``).
``torch.sum(dim=0)`` adds in that order for up to three operands; from four on it regroups the
terms of the last few columns of each thread's slice, so its result depends on the thread
count, and this order does not.

The magnitude trim keeps the top ``k`` entries by ``|x|``. Its cut ``v`` (the k-th largest
magnitude) is found with ``ndarray.partition`` (numpy's SIMD selection: 15 ms on the
11.7M-entry MiniLM embedding against 0.75 s for ``torch.kthvalue`` and 1.8 s for
``torch.argsort``). Every entry above ``v`` is kept; of the entries equal to ``v``, as many as
are needed to make ``k``, **at the lowest flat positions** — the first ``k`` of a stable
descending sort. peft (``torch.topk``) and mergekit (``torch.argsort``) break those ties by
the order their unstable sorts leave, which depends on all of the tensor's values; deltas of
real fine-tunes are multiples of the base's ulp, so ties at the cut are common, and a merge
equals theirs except at such entries (tests/test_mergekit.py compares with mergekit's trim
made stable, which then agrees bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: entries per chunk: the operands' chunks and the scratch arrays stay in the L2 cache
CHUNK = 1 << 15

#: how a combination weighs and adds the trimmed operands (merge.py's docstring has the formulas)
COMBINES = ("sum", "ties", "mergekit_sum", "mergekit_sign")


@dataclass(frozen=True)
class Keep:
    """Which entries of one operand a trim keeps.

    ``kind``: ``"all"``, ``"none"``, ``"cut"``: the entries with ``|x| > cut``, and those
    with ``|x| == cut`` at flat positions below ``stop`` (the magnitude trim's tie rule;
    ``stop = 0`` keeps none of them, ``stop >= numel`` all), or ``"mask"``: the entries where
    the flat boolean array ``mask`` is true (breadcrumbs' band, sparsify.py). ``as32``:
    magnitudes are compared as float32 (mergekit's trim and the global trim's threshold), else
    in the operand's dtype.
    """

    kind: str
    cut: float = 0.0
    stop: int = 0
    as32: bool = False
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)


KEEP_ALL = Keep("all")
KEEP_NONE = Keep("none")


def magnitude_keep(flat: np.ndarray, k: int, *, as32: bool) -> Keep:
    """The top ``k`` entries of ``flat`` by magnitude; of the entries tied at the cut, the
    lowest flat positions (the first ``k`` of a *stable* descending sort of ``|x|``).

    NaN ranks above every number, as in ``torch.sort``; a NaN entry is NaN whether kept or not
    (``NaN · 0``), so only its count matters, and a NaN cut keeps no number.
    """
    n = flat.size
    if k <= 0:
        return KEEP_NONE
    if k >= n:
        return KEEP_ALL
    scratch = np.abs(flat)
    if as32 and scratch.dtype != np.float32:
        scratch = scratch.astype(np.float32)
    scratch.partition(n - k)  # in place: scratch[n - k] is the k-th largest, the rest >= it
    v = scratch[n - k]
    if np.isnan(v):
        return KEEP_NONE
    tail = scratch[n - k + 1:]
    above = tail.size - int(np.count_nonzero(tail == v))  # > v, NaN included
    need = k - above  # entries equal to v to keep, >= 1 (v itself)
    del scratch, tail
    if v == 0.0:  # any zeros: the products are the same
        return Keep("cut", 0.0, 0, as32)
    mag = np.abs(flat)
    if as32 and mag.dtype != np.float32:
        mag = mag.astype(np.float32)
    tied = np.flatnonzero(mag == v)
    stop = n if tied.size == need else int(tied[need - 1]) + 1
    return Keep("cut", float(v), stop, as32)


def threshold_keep(threshold: float) -> Keep:
    """The global trim: the entries with ``float32(|x|) >= threshold`` (``+inf``: none)."""
    if np.isinf(threshold) and threshold > 0:
        return KEEP_NONE
    return Keep("cut", float(threshold), 1 << 62, as32=True)


def trim_flat(flat: np.ndarray, keep: Keep) -> np.ndarray:
    """``flat * keep`` as a new array (the whole operand at once)."""
    out = np.empty_like(flat)
    kept = _trimmed(flat, keep, 0, out)
    return kept.copy() if kept is flat else kept


def _trimmed(x: np.ndarray, keep: Keep, start: int, out: np.ndarray) -> np.ndarray:
    """``x * keep`` (the mask as 1.0/0.0, as the formulas multiply) of the chunk of the operand
    that starts at flat position ``start``."""
    if keep.kind == "all":
        return x
    if keep.kind == "none":
        return np.multiply(x, 0.0, out=out)
    if keep.kind == "mask":
        assert keep.mask is not None
        return np.multiply(x, keep.mask[start:start + x.size], out=out)
    mag = np.abs(x, out=out)
    if keep.as32 and mag.dtype != np.float32:
        mag = mag.astype(np.float32)
    cut = mag.dtype.type(keep.cut)
    split = min(max(keep.stop - start, 0), x.size)  # tied entries kept before this position
    if split == x.size:
        kept = np.greater_equal(mag, cut)
    elif split == 0:
        kept = np.greater(mag, cut)
    else:
        kept = np.empty(x.size, bool)
        np.greater_equal(mag[:split], cut, out=kept[:split])
        np.greater(mag[split:], cut, out=kept[split:])
    return np.multiply(x, kept, out=out)


def _add_all(terms: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
    """``((0 + t₀) + t₁) + …`` into ``out``."""
    np.add(terms[0], 0.0, out=out)
    for t in terms[1:]:
        np.add(out, t, out=out)
    return out


def merge_flat(flats: Sequence[np.ndarray], keeps: Sequence[Keep], weights: Sequence[float], *,
               combine: str, majority: str = "total", normalize: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
    """One tensor's merged delta from its operands' flat arrays (one dtype), their trims and
    their weights. ``combine``:

    * ``"sum"``: ``Σ wᵢ·trim(τᵢ)`` (peft's task arithmetic, magnitude pruning, dare_linear);
    * ``"ties"``: peft's sign election on the unweighted trimmed deltas (``majority`` ``total``
      or ``frequency``) and disjoint mean ``Σ_agree wᵢ·trim(τᵢ) / max(1, #agree)``;
    * ``"mergekit_sum"`` / ``"mergekit_sign"``: mergekit's generalized task arithmetic on the
      weighted trimmed deltas, without or with its sign election; divided by the (agreeing)
      weights' sum when ``normalize``.
    """
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}")
    dtype = flats[0].dtype
    n = flats[0].size
    k = len(flats)
    w = [dtype.type(x) for x in weights]  # the weights in the sum's dtype, as torch.tensor
    out = np.empty(n, dtype) if out is None else out
    size = min(CHUNK, max(n, 1))
    trim_buf = [np.empty(size, dtype) for _ in range(k)]
    terms = [np.empty(size, dtype) for _ in range(k)]
    acc, tmp = np.empty(size, dtype), np.empty(size, dtype)
    elected = np.empty(size, dtype)
    agree = [np.empty(size, bool) for _ in range(k)]
    divisor = dtype.type(1.0)
    if combine == "mergekit_sum":  # w.sum(dim=0), near-zero sums left alone
        total = dtype.type(0.0)
        for x in w:
            total = dtype.type(total + x)
        divisor = total if abs(total) >= dtype.type(1e-8) else dtype.type(1.0)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        m = stop - start
        trs = [_trimmed(f[start:stop], keep, start, buf[:m])
               for f, keep, buf in zip(flats, keeps, trim_buf, strict=True)]
        o = out[start:stop]
        if combine == "sum" or combine == "mergekit_sum":
            _add_all([np.multiply(t, wi, out=b[:m]) for t, wi, b in zip(trs, w, terms,
                                                                        strict=True)], o)
            if combine == "mergekit_sum" and normalize:
                np.divide(o, divisor, out=o)
            continue
        # the sign election, on the trimmed deltas (peft) or on the weighted ones (mergekit)
        voters = trs if combine == "ties" else [
            np.multiply(t, wi, out=b[:m]) for t, wi, b in zip(trs, w, terms, strict=True)]
        signs = [np.sign(v, out=trim_buf[i][:m] if combine != "ties" else None)
                 for i, v in enumerate(voters)]
        if majority == "total":
            _add_all(voters, acc[:m])
        else:
            _add_all(signs, acc[:m])
        e = np.where(acc[:m] >= 0, dtype.type(1.0), dtype.type(-1.0)) if combine == "ties" \
            else np.subtract(np.multiply(acc[:m] >= 0, dtype.type(2.0), out=elected[:m]),
                             dtype.type(1.0), out=elected[:m])
        ags = [np.equal(s, e, out=a[:m]) for s, a in zip(signs, agree, strict=True)]
        if combine == "ties":
            # (trimmed * weights).mul_(agree).sum(0) / agree.sum(0).clamp(min=1)
            _add_all([np.multiply(np.multiply(t, wi, out=b[:m]), ag, out=b[:m])
                      for t, wi, ag, b in zip(trs, w, ags, terms, strict=True)], o)
            count = _add_all([ag.astype(dtype) for ag in ags], tmp[:m])
            np.maximum(count, dtype.type(1.0), out=count)
            np.divide(o, count, out=o)
        else:
            # (deltas * mask).sum(0) / (w * mask).sum(0), a zero divisor taken as 1
            _add_all([np.multiply(v, ag, out=v) for v, ag in zip(voters, ags, strict=True)], o)
            if normalize:
                div = _add_all([np.multiply(ag, wi, dtype=dtype) for ag, wi
                                in zip(ags, w, strict=True)], tmp[:m])
                div[div == 0] = 1
                np.divide(o, div, out=o)
    return out
