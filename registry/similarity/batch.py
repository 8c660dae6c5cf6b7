"""The batch similarity pass: every missing pair of a base's vectors from one read of each
vector, as Gram matrices per tensor name (docs/similarity.md, "Batch pass").

The work is cut into *tiles*: one tensor name of one or two *blocks* of the base's vectors.
A tile decodes that tensor of each of its vectors once and computes, for all its vectors at
once,

- the dot products, as the Gram matrix X Xᵀ of the float32 values in float64, summed over
  fixed column chunks of :data:`CHUNK` values in chunk order;
- the sign conflicts, from the ternary matrix T (T_vj = sign(x_vj) where parameter j is
  material in v, else 0): parameters material in both = |T| |T|ᵀ and Σ T_a T_b = (same signs)
  − (opposite signs), so conflicts = (both − T Tᵀ) / 2; exact integers (float32 products of
  0/±1 summed over at most 2^16 values, then int64);
- the subspace alignment's energies of every ordered pair: ‖Π_B A‖² = ⟨G_A, W_B W_Bᵀ⟩_F, a
  Frobenius inner product of A's short-side Gram matrix and B's projector, so one matrix
  product over all vectors (where W_B holds the vectors outside B's top k, ‖A‖² minus it);
- the statistics of vectors that have none (norm, threshold, material count, the tensor's
  share of the CountSketch), with the same per-tensor functions as an insert.

A tile's numbers depend only on its tensor and vectors, and the client adds the tiles' numbers
up in the manifest's tensor order, so the pass gives the same bits whichever engine runs the
tiles and however many workers it has (BLAS runs one thread per call; the same machine type
is assumed). They are not bit for bit those of the pair pass an insert runs (its sums are in
another order): dots and cosines agree to about 1e-15 relative, counts and thresholds exactly.

Memory: a tile holds its tensor of every vector it covers (as decoded, plus a chunk's float64
copy per worker) and, for a matrix, each vector's Gram matrix and projector (16·s² bytes, s
the short side). Vectors are split into blocks so that a tile of two blocks fits
``memory`` bytes; with one block (the usual case) every vector is read once, with m blocks m
times (each tile of two blocks reads both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tvreg.similarity import spectra as spectra_files
from tvreg.similarity.compute import (
    SKETCH_DIM,
    Spectrum,
    TensorStats,
    _flat,
    _material,
    _tensor_stats,
    aligned,
    one_blas_thread,
    spectrum,
)

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest, TensorEntry
    from tvreg.repo.repo import Repo

#: columns of the values per Gram block: fixed, so the sums do not depend on the engine
CHUNK = 1 << 16
#: the memory a tile may use by default (its vectors' tensors, their spectra)
MEMORY = 1 << 30


@dataclass
class TileResult:
    """What one tile computed, for its vectors ``ids`` (rows and columns of each matrix)."""

    name: str
    ids: list[str]
    dot: np.ndarray        # float64 n × n
    both: np.ndarray       # int64 n × n: parameters material in both
    same: np.ndarray       # int64 n × n: Σ T_a T_b = same signs − opposite signs
    #: for a matrix: inside[i, j] = ‖Π_j A_i‖² (energy of i's matrix in j's top subspace),
    #: energy[i] = ‖A_i‖²; None for other tensors
    inside: np.ndarray | None = None
    energy: np.ndarray | None = None
    #: statistics of this tensor of the vectors that had none: (stats, sketch share)
    stats: dict[str, tuple[TensorStats, np.ndarray]] = field(default_factory=dict)

    def conflicts(self, i: int, j: int) -> int:
        return int((self.both[i, j] - self.same[i, j]) // 2)

    def energies(self, i: int, j: int) -> tuple[float, float, float, float] | None:
        """(‖Π_j A_i‖², ‖A_i‖², ‖Π_i A_j‖², ‖A_j‖²) as :func:`pair_energies` gives them."""
        if self.inside is None or self.energy is None:
            return None
        return (float(self.inside[i, j]), float(self.energy[i]),
                float(self.inside[j, i]), float(self.energy[j]))


def tile_bytes(entry_nbytes: int, shape: tuple[int, ...]) -> int:
    """Memory per vector of a tile of this tensor: the decoded tensor and, for a matrix, its
    Gram matrix and projector."""
    spectra = 16 * min(shape) ** 2 if aligned(shape) else 0
    return entry_nbytes + spectra


def blocks(ids: list[str], manifest: Manifest, memory: int = MEMORY) -> list[list[str]]:
    """``ids`` cut into blocks such that a tile of two blocks of the largest tensor fits
    ``memory`` (one block, when all fit)."""
    per_vector = max((tile_bytes(e.nbytes, tuple(e.shape)) for e in manifest.tensors),
                     default=1)
    if len(ids) * per_vector <= memory:
        return [list(ids)] if ids else []
    size = max(1, memory // (2 * per_vector))
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def tiles(blocks_: list[list[str]]) -> list[tuple[int, int]]:
    """The block pairs (i, j), i ≤ j, each a tile per tensor name."""
    return [(i, j) for i in range(len(blocks_)) for j in range(i, len(blocks_))]


SpectrumOf = Callable[[str, int, np.ndarray, tuple[int, ...]], "Spectrum | None"]


def run_tile(repo: Repo, index: int, entries: list[TensorEntry], ids: list[str],
             thresholds: dict[str, float], fresh: list[str],
             spectrum_of: SpectrumOf | None = None) -> TileResult:
    """One tile: the tensor at ``index`` of the manifests of the vectors ``ids`` (``entries``:
    its entry in each; ``thresholds``: the stored threshold of each vector that has
    statistics; ``fresh``: those whose statistics this tile computes, all without a threshold
    otherwise). ``spectrum_of(vector_id, index, values, shape)`` gives a matrix's spectrum
    (default: from the vector's spectra file where complete, else computed and not written).
    What a Dask worker runs (:mod:`tvreg.repo.ingest_dask`)."""
    with one_blas_thread():
        return _tile(repo, index, entries, ids, thresholds, fresh,
                     spectrum_of or _read_or_compute(repo))


def _read_or_compute(repo: Repo) -> SpectrumOf:
    from tvreg.similarity.compute import ALIGNMENT_NORM_SHARE

    def get(vid: str, index: int, values: np.ndarray, shape: tuple[int, ...]
            ) -> Spectrum | None:
        if not aligned(shape):
            return None
        reader = spectra_files.Reader(repo.root, vid, ALIGNMENT_NORM_SHARE)
        try:
            found = reader.get(index) if reader.complete else None
        finally:
            reader.close()
        return Spectrum.of(*found) if found is not None else spectrum(values, shape)

    return get


def _tile(repo: Repo, index: int, entries: list[TensorEntry], ids: list[str],
          thresholds: dict[str, float], fresh: list[str], spectrum_of: SpectrumOf
          ) -> TileResult:
    pool = repo.executor("operands")
    name, shape = entries[0].name, tuple(entries[0].shape)
    values = list(pool.map(lambda e: _flat(repo.load_tensor(e)), entries))
    stats: dict[str, tuple[TensorStats, np.ndarray]] = {}

    def own_stats(k: int) -> tuple[TensorStats, np.ndarray]:
        share = np.zeros(SKETCH_DIM)
        return _tensor_stats(name, values[k], share), share

    fresh_ids = set(fresh)
    mine = [k for k, v in enumerate(ids) if v in fresh_ids]
    for k, got in zip(mine, pool.map(own_stats, mine), strict=True):
        stats[ids[k]] = got
    threshold = [stats[v][0].threshold if v in stats else thresholds[v] for v in ids]
    dot, both, same = _grams(pool, values, threshold)
    result = TileResult(name, list(ids), dot, both, same, stats=stats)
    if aligned(shape):
        spectra = list(pool.map(lambda k: spectrum_of(ids[k], index, values[k], shape),
                                range(len(ids))))
        del values
        result.inside, result.energy = _energies(pool, spectra)
    return result


def _grams(pool: Any, values: list[np.ndarray], threshold: list[float]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ over the chunks, in order, of each chunk's X Xᵀ (float64), |T| |T|ᵀ and T Tᵀ."""
    n, size = len(values), values[0].size

    # thresholds come from the tensors' own float32 values: exact in float32, so comparing in
    # float32 marks the parameters :func:`_material` marks
    thr = np.array(threshold, dtype=np.float32)[:, None] if values[0].dtype == np.float32 \
        else None

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x32 = np.stack([v[start:start + CHUNK] for v in values])
        x = x32.astype(np.float64)
        if thr is not None:
            mags = np.abs(x32)
            material = (mags >= thr) & (mags > 0)
        else:
            material = np.stack([_material(x32[k], threshold[k]) for k in range(n)])
        m = material.astype(np.float32)
        t = np.copysign(m, x32)  # ±1 where material, ±0 elsewhere
        return x @ x.T, m @ m.T, t @ t.T

    dot = np.zeros((n, n))
    both = np.zeros((n, n), dtype=np.int64)
    same = np.zeros((n, n), dtype=np.int64)
    for g, b, s in _ordered(pool, chunk, range(0, size, CHUNK)):
        dot += g
        both += b.astype(np.int64)
        same += s.astype(np.int64)
    return dot, both, same


def _ordered(pool: Any, fn: Callable[[int], Any], items: Iterable[int],
             ahead: int | None = None) -> Iterator[Any]:
    """``fn`` of each item, in order, at most ``ahead`` computed ahead on ``pool``."""
    from collections import deque

    from tvreg.tensors.encoding import default_workers

    window = ahead or 2 * default_workers()
    queue: deque = deque()
    it = iter(items)
    try:
        for item in it:
            queue.append(pool.submit(fn, item))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        for f in queue:
            f.cancel()


def _energies(pool: Any, spectra: list[Spectrum | None]) -> tuple[np.ndarray, np.ndarray]:
    """inside[i, j] = ‖Π_j A_i‖² and energy[i] = ‖A_i‖² for the vectors' spectra of one
    matrix: ⟨G_i, P_j⟩_F with P_j = W_j W_jᵀ (its top-k projector, or that of the s − k
    vectors outside it where k > s/2, then ‖A_i‖² minus it), clipped to [0, ‖A_i‖²]; 0 where
    j's matrix is zero."""
    specs = [s for s in spectra if s is not None]
    n = len(spectra)
    assert len(specs) == n, "every vector has a spectrum of a matrix"
    s2 = specs[0].gram.size
    energy = np.array([s.energy for s in specs])
    grams = np.empty((n, s2))
    projectors = np.empty((n, s2))

    def fill(k: int) -> None:
        grams[k] = specs[k].gram.reshape(-1)
        w = specs[k].vectors
        projectors[k] = (w @ w.T).reshape(-1)

    list(pool.map(fill, range(n)))
    inside = grams @ projectors.T
    outside = np.array([2 * s.k > s.vectors.shape[0] for s in specs])
    inside[:, outside] = energy[:, None] - inside[:, outside]
    zero = np.array([s.k == 0 for s in specs])
    inside[:, zero] = 0.0
    return np.minimum(energy[:, None], np.maximum(0.0, inside)), energy


def pair_index(blocks_: list[list[str]]) -> dict[str, int]:
    """Each vector's block."""
    return {v: b for b, ids in enumerate(blocks_) for v in ids}


def tile_ids(blocks_: list[list[str]], i: int, j: int) -> list[str]:
    return blocks_[i] if i == j else blocks_[i] + blocks_[j]


def check_memory(memory: Any) -> int:
    from tvreg.errors import InvalidInput

    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
        raise InvalidInput(f"invalid memory {memory!r}: a positive number of bytes")
    return memory
