"""Lossy storage of a whole vector under a ``--codec`` spec: which pipeline each tensor gets,
the encoding (on the encoder's pool), and the reconstruction error of the vector.

Which tensors a spec applies to (the others keep the default lossless pipeline; the manifest
says per tensor which it got): float32 tensors with at least one element; for ``svd`` only
2-D ones, and of those only the ones whose factors are smaller than the matrix
(``r·(rows + cols) < rows·cols``) and that are not all zeros. float64 deltas (from float64
checkpoints) are always kept lossless. A lossy-coded tensor is one chunk.

The error is measured against the vector the codec was given (the exact task vector for
``create``, the source vector for ``recode``), over the whole vector, from float64 sums:
``rel_l2 = ‖τ̂ − τ‖ / ‖τ‖`` and ``cosine = ⟨τ̂, τ⟩ / (‖τ̂‖ ‖τ‖)`` (``None`` where a norm is 0).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from tvreg.codecs import (
    ByteGroup,
    Cast,
    Codec,
    CodecPipeline,
    Int8,
    LowRank,
    Ternary,
    TopK,
    Zstd,
    choose_pipeline,
    default_pipeline,
)
from tvreg.codecs.lowrank import MAX_RANK
from tvreg.codecs.spec import LossySpec, parse
from tvreg.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.format.manifest import Manifest
    from tvreg.tensors.encoding import TensorEncoder
    from tvreg.tensors.taskvector import TaskVector

_BLOCK = 1 << 20  # elements per float64 block when summing errors


def error_sums(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``(Σ(y−x)², Σxy, Σx², Σy²)`` of two float32 arrays, in float64, a block at a time."""
    x, y = x.reshape(-1), y.reshape(-1)
    sse = dot = xx = yy = 0.0
    for o in range(0, x.size, _BLOCK):
        a = x[o:o + _BLOCK].astype(np.float64)
        b = y[o:o + _BLOCK].astype(np.float64)
        d = b - a
        sse += float(d @ d)
        dot += float(a @ b)
        xx += float(a @ a)
        yy += float(b @ b)
    return sse, dot, xx, yy


def svd_factors(x: np.ndarray, rank: int | None, energy: float | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(A, B)`` float32 factors (``r × cols``, ``rows × r``) with ``B @ A`` the rank-r
    truncated SVD of ``x`` (``B = U·S``, ``A = Vᵀ``; each singular pair's sign chosen so the
    entry of largest magnitude of ``U``'s column is positive). ``r`` is ``rank``, or the fewest
    singular values whose squares sum to at least ``energy`` of the total. None when factors
    would not be smaller than ``x`` or ``x`` is zero: it is then better stored as it is."""
    import torch

    rows, cols = x.shape
    u, s, vh = torch.linalg.svd(torch.from_numpy(x), full_matrices=False)
    s2 = s.to(torch.float64) ** 2
    total = float(s2.sum())
    if not total > 0:
        return None
    if rank is not None:
        r = rank
    else:
        assert energy is not None  # an svd spec gives a rank or an energy
        cum = torch.cumsum(s2, 0)
        r = min(int(torch.searchsorted(cum, torch.tensor([energy * total], dtype=torch.float64),
                                       right=False)[0]) + 1, s.numel())
    if r * (rows + cols) >= rows * cols or r > MAX_RANK:
        return None
    u, s, vh = u[:, :r], s[:r], vh[:r]
    pivot = u.abs().argmax(dim=0)
    sign = torch.where(u[pivot, torch.arange(r)] < 0, -1.0, 1.0).to(u.dtype)
    b = (u * (s * sign)).contiguous().numpy()
    a = (vh * sign[:, None]).contiguous().numpy()
    return a.astype(np.float32), b.astype(np.float32)


class LossyEncoder:
    """Encodes the tensors of one vector under a spec and accumulates its error.

    ``submit`` has the signature :func:`tvreg.tensors.build.build_task_vector` takes as ``encode``.
    """

    def __init__(self, spec: LossySpec | str, level: int | None = None) -> None:
        from tvreg.codecs.choose import check_level

        self.spec = parse(spec) if isinstance(spec, str) else spec
        # zstd level of the lossless steps after a lossy one (3 unless given: what the format's
        # table and the lossy benchmark use), and of tensors the spec leaves lossless (the
        # default choice, level 1 unless given)
        self.level = 3 if level is None else check_level(level)
        self.lossless_level = level
        self._sums: dict[str, tuple[float, float, float, float]] = {}
        self._kept: set[str] = set()  # tensors the codec applies to but stored losslessly
        self._lock = threading.Lock()

    # --- which tensors -----------------------------------------------------------------------

    def applies(self, dtype: str, shape: tuple[int, ...]) -> bool:
        """Whether the spec's codec is tried on a tensor of delta ``dtype`` and ``shape``."""
        if dtype != "float32" or math.prod(shape) == 0:
            return False
        return len(shape) == 2 if self.spec.codec == "svd" else True

    def check(self, tensors: Iterable[tuple[str, str, tuple[int, ...]]]) -> None:
        """Refuse (:class:`InvalidInput`) what cannot work, from ``(name, delta dtype, shape)``
        alone, before anything is written: an SVD rank above the smaller side of every 2-D
        tensor (the codec would apply to none of them). A tensor whose smaller side is below
        the rank is stored losslessly, as factors of that rank would be larger than it."""
        if self.spec.rank is None:
            return
        r = self.spec.rank
        sides = [min(shape) for name, dtype, shape in tensors
                 if self.applies(dtype, tuple(shape))]
        if sides and r > max(sides):
            raise InvalidInput(f"--codec {self.spec}: rank {r} is larger than every 2-D tensor "
                               f"allows ({len(sides)} tensor(s), at most {max(sides)}): no "
                               "tensor would take it; use a smaller rank or svd:energy=E")

    # --- encoding ----------------------------------------------------------------------------

    def submit(self, encoder: TensorEncoder, name: str, delta: torch.Tensor,
               source_dtype: str) -> Future:
        """Encode one delta tensor; a future of its manifest entry."""
        from tvreg import dtypes

        delta = delta.detach().contiguous().cpu()
        dtype, shape = dtypes.dtype_name(delta.dtype), tuple(delta.shape)
        if not self.applies(dtype, shape):
            x = delta.numpy()
            if dtype in ("float32", "float64") and x.size:
                a = x.reshape(-1).astype(np.float64)
                xx = float(a @ a)
                self._record(name, (0.0, xx, xx, xx))
            return encoder.submit(name, delta, source_dtype,
                                  choose_pipeline(delta, delta.element_size(),
                                                  level=self.lossless_level))
        x = delta.numpy()

        def prepare() -> tuple[CodecPipeline, bytes]:
            if not np.isfinite(x).all():
                raise InvalidInput(f"tensor {name!r} has {int((~np.isfinite(x)).sum())} NaN/Inf "
                                   f"value(s): --codec {self.spec} needs finite values")
            try:
                pipe, payload = self.pipeline(x)
            except InvalidInput as e:
                raise InvalidInput(f"tensor {name!r}: {e}") from None
            if not isinstance(pipe.codecs[0], (Cast, Int8, TopK, Ternary, LowRank)):
                with self._lock:
                    self._kept.add(name)
            return pipe, payload

        def measure(dense: bytes) -> None:
            self._record(name, error_sums(x, np.frombuffer(dense, dtype=np.float32)))

        return encoder.submit_prepared(name, shape, source_dtype, prepare, on_decoded=measure)

    def pipeline(self, x: np.ndarray) -> tuple[CodecPipeline, bytes]:
        """The pipeline for float32 array ``x`` and its first step's encoding of ``x``."""
        spec, zstd = self.spec, Zstd(self.level)
        raw = x.reshape(-1).view(np.uint8).data
        first: Codec
        if spec.codec in ("bf16", "fp16"):
            first = Cast("bfloat16" if spec.codec == "bf16" else "float16")
            rest: tuple = (ByteGroup(2), zstd)
        elif spec.codec == "int8":
            first, rest = Int8(x.size // x.shape[0] if x.ndim >= 2 else x.size), (zstd,)
        elif spec.codec in ("topk", "ternary"):
            k = min(spec.keep(x.size), int(np.count_nonzero(x)))
            first = TopK(k) if spec.codec == "topk" else Ternary(k)
            rest = (ByteGroup(4), zstd) if spec.codec == "topk" else (zstd,)
        else:  # svd
            factors = svd_factors(x, spec.rank, spec.energy)
            if factors is None:  # stored as it is: one chunk of the default pipeline
                pipe = default_pipeline(4, self.level)
                return pipe, pipe.codecs[0].encode(raw)
            a, b = factors
            low = LowRank(x.shape[0], x.shape[1], a.shape[0], 1.0)
            return CodecPipeline((low, ByteGroup(4), zstd)), low.payload(a, b)
        return CodecPipeline((first, *rest)), first.encode(raw)

    def _record(self, name: str, sums: tuple[float, float, float, float]) -> None:
        with self._lock:
            self._sums[name] = sums

    # --- results -----------------------------------------------------------------------------

    def error(self) -> dict[str, float | None]:
        """``{"rel_l2", "cosine"}`` of the tensors encoded so far (sums in name order)."""
        sse = dot = xx = yy = 0.0
        for name in sorted(self._sums):
            a, b, c, d = self._sums[name]
            sse, dot, xx, yy = sse + a, dot + b, xx + c, yy + d
        rel = math.sqrt(sse) / math.sqrt(xx) if xx > 0 else (0.0 if sse == 0 else None)
        cos = max(-1.0, min(1.0, dot / math.sqrt(xx * yy))) if xx > 0 and yy > 0 else None
        return {"rel_l2": rel, "cosine": cos}

    def kept_lossless(self) -> list[str]:
        """The tensors the spec applies to that were stored losslessly all the same (``svd``:
        all zeros, or factors no smaller than the matrix, e.g. a rank above its smaller
        side), sorted."""
        with self._lock:
            return sorted(self._kept)

    def recipe(self, op: str, **extra: Any) -> dict[str, Any]:
        """The version record's ``recipe``: ``{"op", "codec", …extra, "error"}``, and
        ``"lossless"`` (:meth:`kept_lossless`) when some tensors the spec applies to were
        stored losslessly."""
        kept = self.kept_lossless()
        return {"op": op, "codec": str(self.spec), **extra, "error": self.error(),
                **({"lossless": kept} if kept else {})}


def encode_vector(vec: TaskVector, coder: LossyEncoder, put: Callable[[bytes], str], *,
                  on_tensor: Callable[[int], None] | None = None) -> Manifest:
    """The manifest of ``vec``'s tensors re-encoded by ``coder`` (same base, architecture and
    skipped tensors), its blobs stored through ``put``."""
    from tvreg.format.manifest import Manifest
    from tvreg.tensors.encoding import TensorEncoder

    m = vec.manifest
    with TensorEncoder(put) as encoder:
        futures = []
        for entry, (name, tensor) in zip(m.tensors, vec.iter_tensors(), strict=True):
            futures.append(coder.submit(encoder, name, tensor, entry.source_dtype))
            if on_tensor:
                on_tensor(entry.nbytes)
        entries = tuple(dataclasses.replace(f.result(), finetuned_dtype=e.finetuned_dtype)
                        # the source's dtypes, kept
                        for f, e in zip(futures, m.tensors, strict=True))
    return Manifest(m.base_hash, m.arch_fingerprint, entries, m.skipped)
