"""Precomputed similarities between task vectors of the same base (docs/similarity.md).

Per vector (one pass): its L2 norm and each tensor's, each tensor's *materiality threshold*
(the 80th percentile of |value|, so the top 20 % of a tensor's parameters are "material"), and a
CountSketch of :data:`SKETCH_DIM` numbers for approximate similarity at scale.

Per pair of vectors of the same base and architecture (one pass over both): the exact dot
product (products exact in float64, float64 sums) and so the cosine, per tensor and in all, the
sign-conflict rate: among parameters material in both, the fraction whose signs differ, and the
subspace alignment of their matrices (Marczak et al., *No Task Left Behind*, ICML 2025: the
share of one matrix's Frobenius norm inside the other's top singular subspace, symmetrised; see
:func:`spectrum` and docs/similarity.md).

A pass takes one vector X and decodes each of its tensors once, then the same tensor of each
partner on the registry's operand pool; memory is one tensor of X (in float64) plus one tensor
per worker, and for a matrix its spectrum (X's of this tensor and of the next, and one per
worker; up to 1.5 s² float64 numbers each, s the short side). Each vector's spectra are kept
in its spectra file (:mod:`tvreg.similarity.spectra`), so a later pass reads them instead of
computing them.
Results do not depend on which vector of a pair is X, nor on insertion order.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tvreg.catalog import sketches as sketch_index
from tvreg.catalog.sketches import SKETCH_DIM
from tvreg.errors import InvalidInput, NotFound
from tvreg.names import parse_ref
from tvreg.similarity import spectra as spectra_files

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.format.manifest import Manifest, TensorEntry
    from tvreg.repo.repo import Repo

_SKETCH_BITS = 12  # log2(SKETCH_DIM)
#: a parameter is material in a tensor if |value| is in the top this fraction of the tensor
MATERIAL_FRACTION = 0.2
#: tensors larger than this estimate their threshold from a seeded sample of this many values
THRESHOLD_SAMPLE = 1 << 16
#: by default, an insert computes its exact pairs for bases of at most this many vectors;
#: beyond, a new vector gets its statistics, sketch and spectra only, its pairs are pending
#: (computed by ``tvreg similarities``) and queries estimate their cosines from the sketches.
#: A registry's own limit is in its config.json (:mod:`tvreg.similarity.upkeep`)
EXACT_LIMIT = 256
_CHUNK = 1 << 16
_U64 = np.uint64


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


# --- per tensor --------------------------------------------------------------------------------


def _hash_parameters(name: str) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Multipliers and offsets of the multiply-shift hashes of tensor ``name`` (format-fixed)."""
    d = hashlib.sha256(b"tvreg-countsketch-v1\0" + name.encode("utf-8")).digest()
    a, b, c, e = (int.from_bytes(d[i:i + 8], "little") for i in range(0, 32, 8))
    return _U64(a | 1), _U64(b), _U64(c | 1), _U64(e)


def sketch_add(sketch: np.ndarray, name: str, values: np.ndarray) -> None:
    """Add the CountSketch of one flattened tensor to ``sketch`` (float64, SKETCH_DIM):
    parameter j goes to bucket h(j) with sign s(j), both multiply-shift hashes of j seeded by
    the tensor's name."""
    a, b, c, e = _hash_parameters(name)
    shift, top = _U64(64 - _SKETCH_BITS), _U64(63)
    with np.errstate(over="ignore"):
        for i in range(0, values.size, _CHUNK):
            part = values[i:i + _CHUNK]
            j = np.arange(i, i + part.size, dtype=np.uint64)
            bucket = ((j * a + b) >> shift).astype(np.intp)
            w = part.astype(np.float64)
            w[((j * c + e) >> top).astype(bool)] *= -1.0
            sketch += np.bincount(bucket, weights=w, minlength=SKETCH_DIM)


def material_threshold(values: np.ndarray) -> float:
    """The 80th percentile of |value| (exact up to THRESHOLD_SAMPLE values, else of a sample
    drawn with a seed fixed by the size, so every vector of a base uses the same positions)."""
    if values.size == 0:
        return 0.0
    if values.size > THRESHOLD_SAMPLE:
        rng = np.random.default_rng(values.size)
        values = values[rng.integers(0, values.size, THRESHOLD_SAMPLE)]
    mags = np.abs(values.astype(np.float64))
    k = min(mags.size - 1, int(mags.size * (1.0 - MATERIAL_FRACTION)))
    return float(np.partition(mags, k)[k])


def _material(values: np.ndarray, threshold: float) -> np.ndarray:
    mags = np.abs(values)
    return (mags >= threshold) & (mags > 0)


#: elements per block when a whole tensor's material positions are counted or listed, so the
#: temporaries (|values| and three boolean masks) are of a block, not of the tensor
_MATERIAL_BLOCK = 1 << 20


def _count_material(values: np.ndarray, threshold: float) -> int:
    return sum(int(np.count_nonzero(_material(values[i:i + _MATERIAL_BLOCK], threshold)))
               for i in range(0, values.size, _MATERIAL_BLOCK))


def _material_positions(values: np.ndarray, threshold: float) -> np.ndarray:
    """``np.flatnonzero(_material(values, threshold))``, a block at a time."""
    parts = [np.flatnonzero(_material(values[i:i + _MATERIAL_BLOCK], threshold)) + i
             for i in range(0, values.size, _MATERIAL_BLOCK)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a_i b_i: float32 products are exact in float64; numpy's pairwise sums, in chunks, in an
    order that does not depend on which argument is which."""
    total = 0.0
    for i in range(0, a.size, _CHUNK):
        total += float(np.sum(a[i:i + _CHUNK].astype(np.float64) * b[i:i + _CHUNK]))
    return total


def _compare(a: np.ndarray, where: np.ndarray, negative: np.ndarray, b: np.ndarray,
             threshold_b: float) -> tuple[float, int, int]:
    """(dot, parameters material in both, of those with opposite signs) of one tensor of a pair;
    ``where``/``negative``: a's material positions and their signs."""
    picked = b[where]
    material = _material(picked, threshold_b)
    return (_dot(a, b), int(np.count_nonzero(material)),
            int(np.count_nonzero(material & ((picked < 0) != negative))))


@dataclass
class TensorStats:
    """Per-tensor statistics of a vector: its norm, magnitude threshold and material count."""

    name: str
    norm: float
    threshold: float
    n_material: int


@dataclass
class VectorStats:
    """Whole-vector statistics: norm, parameter and material counts, sketch, and per-tensor
    statistics."""

    vector_id: str
    norm: float
    n_params: int
    n_material: int
    sketch: np.ndarray
    tensors: dict[str, TensorStats] = field(default_factory=dict)


def _tensor_stats(name: str, values: np.ndarray, sketch: np.ndarray) -> TensorStats:
    """One tensor's norm, threshold and material count; its CountSketch added to ``sketch``."""
    threshold = material_threshold(values)
    sketch_add(sketch, name, values)
    return TensorStats(name, math.sqrt(_dot(values, values)), threshold,
                       _count_material(values, threshold))


def _flat(tensor: Any) -> np.ndarray:
    return tensor.reshape(-1).numpy()


# --- subspace alignment ------------------------------------------------------------------------

#: a matrix's top singular subspace holds this share of its Frobenius norm: the smallest k with
#: ‖B_k‖_F ≥ 0.95 ‖B‖_F, i.e. 0.9025 of Σσ² (the Iso paper's rank rule, Eq. 6, at its 0.95)
ALIGNMENT_NORM_SHARE = 0.95
#: matrices whose short side is longer get no alignment (NULL per tensor, not counted in a
#: pair's ``n_matrices``): the eigendecomposition of an s × s Gram matrix costs O(s³) at insert
#: (measured on 2 cores: 0.4–0.7 s at s = 1024, so about 25 s at a 7B LLM's 4096, for each of
#: its ~220 matrices) and its spectra file 16·s² bytes. 1024 covers BERT, MiniLM, ViT/CLIP up
#: to ViT-L and GPT-2 medium (docs/similarity.md)
ALIGNMENT_MAX_SIDE = 1024


def aligned(shape: tuple[int, ...] | list[int]) -> bool:
    """Whether a tensor of this shape gets an alignment: a matrix, short side at most
    :data:`ALIGNMENT_MAX_SIDE`."""
    return len(shape) == 2 and min(shape) <= ALIGNMENT_MAX_SIDE


#: Gram matrices are summed over blocks of about this many elements (float64 temporaries)
_GRAM_BLOCK = 1 << 20


@dataclass
class Spectrum:
    """One matrix's short side: its Gram matrix G = S Sᵀ (s×s, float64; S is the matrix or its
    transpose, whichever has fewer rows, so s = min(rows, columns)), ‖·‖²_F = tr G, k (its top
    k singular vectors hold :data:`ALIGNMENT_NORM_SHARE` of its norm) and the singular vectors
    a projection uses: the top k where k ≤ s/2, else the s − k after them."""

    gram: np.ndarray
    energy: float
    vectors: np.ndarray
    k: int

    @classmethod
    def of(cls, gram: np.ndarray, vectors: np.ndarray, k: int) -> Spectrum:
        """From stored parts (spectra files): the energy is tr G, as computed."""
        return cls(gram, float(np.trace(gram)), vectors, k)


def spectrum(values: np.ndarray, shape: tuple[int, ...]) -> Spectrum | None:
    """The :class:`Spectrum` of a 2-D tensor (``values`` flattened, row-major), None for any
    other rank. Gram in float64 (products of float32 values are exact), summed a block of rows
    of the short side's transpose at a time; ``numpy.linalg.eigh`` for its eigenvectors.

    The short side: the Iso paper projects onto the left singular subspace (rows of a torch
    weight, its output side). For a matrix with no more rows than columns (square attention
    matrices, down-projections) that is the short side; for a tall one (up-projections,
    embeddings) tvreg takes the right one, R^columns, which needs only the columns×columns Gram
    and makes a pair's cost O(s² · min(k, s − k)) from the two spectra (docs/similarity.md).
    None also for a matrix whose short side is above :data:`ALIGNMENT_MAX_SIDE`."""
    if not aligned(shape):
        return None
    rows, cols = shape
    a = values.reshape(rows, cols)
    short = a if rows <= cols else a.T  # s × L, a view
    s, length = short.shape
    gram = np.zeros((s, s))
    step = max(1, _GRAM_BLOCK // max(1, s))
    for j in range(0, length, step):
        block = short[:, j:j + step].astype(np.float64)
        gram += block @ block.T
    if float(np.trace(gram)) <= 0.0:
        return Spectrum.of(gram, np.zeros((s, 0)), 0)
    lam, vecs = np.linalg.eigh(gram)  # ascending
    lam = np.clip(lam[::-1], 0.0, None)
    cum = np.cumsum(lam)
    k = min(s, int(np.searchsorted(cum, ALIGNMENT_NORM_SHARE ** 2 * cum[-1])) + 1)
    vecs = vecs[:, ::-1]
    return Spectrum.of(gram, np.ascontiguousarray(vecs[:, :k] if 2 * k <= s else vecs[:, k:]), k)


def projected_energy(a: Spectrum, b: Spectrum) -> float:
    """‖Π_B A‖²_F: the energy of matrix A inside B's top singular subspace (of the short side),
    Σ_{i≤k} w_iᵀ G_A w_i over B's first k singular vectors w_i; 0 where B is all zero. Where
    k > s/2 it is ‖A‖² − Σ_{i>k} w_iᵀ G_A w_i, over the fewer vectors outside: the cost is
    s² · min(k, s − k) (docs/similarity.md)."""
    if b.k == 0:
        return 0.0
    w = b.vectors
    inside = float(np.sum((a.gram @ w) * w))
    if 2 * b.k > w.shape[0]:  # w holds the vectors outside the top k
        inside = a.energy - inside
    return min(a.energy, max(0.0, inside))


class _Spectra:
    """The spectra of one vector's matrices during a pass: read from its spectra file
    (:mod:`tvreg.similarity.spectra`) where there is one, else computed and written to a new
    one, committed by :meth:`close` once every matrix of the vector went through :meth:`get`."""

    def __init__(self, reg: Repo, vector_id: str, manifest: Manifest) -> None:
        self._index = {e.name: i for i, e in enumerate(manifest.tensors)}
        self._left = sum(aligned(e.shape) for e in manifest.tensors)
        self._reader = spectra_files.Reader(reg.root, vector_id, ALIGNMENT_NORM_SHARE)
        self._writer = None
        if not self._reader.complete:
            self._writer = spectra_files.Writer(reg.root, vector_id, ALIGNMENT_NORM_SHARE)
        self._lock = threading.Lock()

    def get(self, name: str, values: np.ndarray, shape: tuple[int, ...]) -> Spectrum | None:
        if not aligned(shape):
            return None
        i = self._index[name]
        if self._writer is None:
            found = self._reader.get(i)
            if found is not None:
                return Spectrum.of(*found)
        spec = spectrum(values, shape)
        assert spec is not None
        if self._writer is not None:
            self._writer.add(i, spec.gram, spec.vectors, spec.k)
            with self._lock:
                self._left -= 1
        return spec

    def close(self) -> None:
        self._reader.close()
        if self._writer is not None:
            if self._left == 0:
                self._writer.commit()
            else:
                self._writer.abort()


def one_blas_thread():
    """A context in which BLAS/LAPACK run one thread per call (threadpoolctl): the passes
    already run one spectrum per worker of the operand pool, and OpenBLAS threads inside each
    of them fight over the same cores. Measured on 2 cores: ``eigh`` of a 1024×1024 Gram
    matrix on 2 threads at once took 1.8-2.6 s each with OpenBLAS's own threads, 0.4-0.7 s
    with one each (benchmarks/bench_similarity.py)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def pair_energies(a: Spectrum | None, b: Spectrum | None
                    ) -> tuple[float, float, float, float] | None:
    """(‖Π_B A‖², ‖A‖², ‖Π_A B‖², ‖B‖²) of one tensor of a pair, None if it is no matrix."""
    if a is None or b is None:
        return None
    return projected_energy(a, b), a.energy, projected_energy(b, a), b.energy


def alignment(energies: Iterable[tuple[float, float, float, float] | None]) -> float | None:
    """The symmetrised alignment of matrices given by :func:`pair_energies`'s tuples: the mean
    of the two directions, each √(Σ‖Π_B A_t‖² / Σ‖A_t‖²) over the matrices t (the Iso ratio of
    the block-diagonal matrix of all of them). None without a matrix or where a side's
    matrices are all zero."""
    terms = [e for e in energies if e is not None]
    ab, na = math.fsum(e[0] for e in terms), math.fsum(e[1] for e in terms)
    ba, nb = math.fsum(e[2] for e in terms), math.fsum(e[3] for e in terms)
    if na <= 0.0 or nb <= 0.0:
        return None
    return min(1.0, (math.sqrt(ab / na) + math.sqrt(ba / nb)) / 2.0)


# --- passes ------------------------------------------------------------------------------------


def vector_stats(reg: Repo, vector_id: str, *, spectra: bool = False) -> VectorStats:
    """Norms, thresholds and sketch of one vector: one pass, a tensor at a time; with
    ``spectra``, its matrices' spectra too, kept in its spectra file (for a later pass)."""
    manifest = reg.manifest(vector_id)
    sketch = np.zeros(SKETCH_DIM)
    tensors: dict[str, TensorStats] = {}
    source = _Spectra(reg, vector_id, manifest) if spectra else None
    try:
        for entry, tensor in _decoded(reg, [entry for entry in manifest.tensors]):
            v = _flat(tensor)
            tensors[entry.name] = _tensor_stats(entry.name, v, sketch)
            if source is not None:
                source.get(entry.name, v, tuple(entry.shape))
            del tensor, v
    finally:
        if source is not None:
            source.close()
    norm = math.sqrt(math.fsum(t.norm ** 2 for t in tensors.values()))
    return VectorStats(vector_id, norm, manifest.n_params,
                       sum(t.n_material for t in tensors.values()), sketch, tensors)


#: at most this many bytes of tensors are decoded ahead of the one in use (at least one tensor)
AHEAD_BYTES = 256 << 20


def _decoded(reg: Repo, entries: list[TensorEntry]):
    """(entry, tensor) in order, the next tensors decoded ahead on the operand pool: up to one
    per worker, and up to :data:`AHEAD_BYTES` of them (but always the next one), so a model of
    large tensors holds two or three, not one per worker."""
    from tvreg.tensors.encoding import default_workers

    pool = reg.executor("operands")
    ahead = default_workers()
    queue: deque = deque()
    i = 0

    def top_up() -> None:
        nonlocal i
        while i < len(entries) and len(queue) < ahead and (
                not queue or sum(e.nbytes for e, _ in queue) + entries[i].nbytes <= AHEAD_BYTES):
            queue.append((entries[i], pool.submit(reg.load_tensor, entries[i])))
            i += 1

    top_up()
    try:
        while queue:
            entry, future = queue.popleft()
            top_up()
            yield entry, future.result()
    finally:
        for _, f in queue:
            f.cancel()


@dataclass
class _PairTotals:
    dot: float = 0.0
    both: int = 0
    conflicts: int = 0
    #: per tensor: (name, dot, both, conflicts, energies of :func:`pair_energies` or None)
    tensors: list[tuple] = field(default_factory=list)

    def add(self, name: str, dot: float, both: int, conflicts: int,
            energies: tuple[float, float, float, float] | None) -> None:
        self.dot += dot
        self.both += both
        self.conflicts += conflicts
        self.tensors.append((name, dot, both, conflicts, energies))


def pair_pass(reg: Repo, x: str, partners: list[str],
              stats: dict[str, VectorStats]) -> dict[str, _PairTotals]:
    """Dot products, sign conflicts and subspace alignments of vector ``x`` with each partner,
    per tensor: each of x's tensors is decoded once and prepared (its material positions and
    their signs, its :func:`spectrum` if a matrix); the partners' tensors are decoded, their
    spectra read from their spectra files or computed, and compared on the operand pool."""
    manifests = {v: reg.manifest(v) for v in [x, *partners]}
    totals = {p: _PairTotals() for p in partners}
    sources = {v: _Spectra(reg, v, manifests[v]) for v in [x, *partners]} if partners else {}

    def compare(name: str, xv: np.ndarray, where: np.ndarray, negative: np.ndarray,
                xs: Future | None, partner: str) -> tuple[str, float, int, int, Any]:
        entry = manifests[partner].tensor(name)
        pv = _flat(reg.load_tensor(entry))
        ps = sources[partner].get(name, pv, tuple(entry.shape)) if xs is not None else None
        compared = _compare(xv, where, negative, pv, stats[partner].tensors[name].threshold)
        return (partner, *compared, pair_energies(xs.result(), ps) if xs is not None else None)

    own = None
    if x not in stats:  # x's own statistics in the same pass (a new vector is read once)
        own = VectorStats(x, 0.0, manifests[x].n_params, 0, np.zeros(SKETCH_DIM))
    try:
        _pair_tensors(reg, x, manifests, partners, stats, totals, own, sources, compare)
    finally:
        for source in sources.values():
            source.close()
    if own is not None:
        own.norm = math.sqrt(math.fsum(t.norm ** 2 for t in own.tensors.values()))
        own.n_material = sum(t.n_material for t in own.tensors.values())
        stats[x] = own
    return totals


def _pair_tensors(reg: Repo, x: str, manifests: dict[str, Manifest], partners: list[str],
                  stats: dict[str, VectorStats], totals: dict[str, _PairTotals],
                  own: VectorStats | None, sources: dict[str, _Spectra],
                  compare: Callable[..., Any]) -> None:
    """The loop of :func:`pair_pass` over x's tensors."""
    from tvreg.tensors.encoding import default_workers

    pool = reg.executor("operands")
    window = 2 * default_workers()

    def x_spectrum(item: tuple | None) -> Future | None:
        if item is None or not partners or not aligned(item[0].shape):
            return None
        entry, tensor = item
        return pool.submit(sources[x].get, entry.name, _flat(tensor), tuple(entry.shape))

    # x's spectrum of the next tensor is submitted before the partners' jobs of this one (which
    # wait for this one's): computing x's spectra is the longest part of an insert (0.4 s per
    # 1024 x 1024 matrix), and this keeps it off the critical path. Spectrum jobs wait for
    # nothing, so the pool cannot deadlock.
    tensors = _decoded(reg, list(manifests[x].tensors))
    upcoming = next(tensors, None)
    upcoming_xs = x_spectrum(upcoming)
    while upcoming is not None:
        (entry, tensor), xs = upcoming, upcoming_xs
        upcoming = next(tensors, None)
        upcoming_xs = x_spectrum(upcoming)
        xv = _flat(tensor)
        if own is not None:
            own.tensors[entry.name] = _tensor_stats(entry.name, xv, own.sketch)
        threshold = (own or stats[x]).tensors[entry.name].threshold
        where = _material_positions(xv, threshold)
        negative = xv[where] < 0
        jobs: deque = deque()
        todo = list(partners)
        while todo or jobs:
            while todo and len(jobs) < window:
                jobs.append(pool.submit(compare, entry.name, xv, where, negative, xs,
                                        todo.pop(0)))
            partner, *values = jobs.popleft().result()
            totals[partner].add(entry.name, *values)
        del tensor, xv, xs


# --- catalog -----------------------------------------------------------------------------------


def _cosine(dot: float, na: float, nb: float) -> float | None:
    if na == 0.0 or nb == 0.0:
        return None
    return max(-1.0, min(1.0, dot / (na * nb)))


def _rate(conflicts: int, both: int) -> float | None:
    return conflicts / both if both else None


def _ordered(a: str, b: str) -> tuple[str, str]:
    """``tuple(sorted((a, b)))``: the key of the pair of ``a`` and ``b`` (smaller id first)."""
    return (a, b) if a <= b else (b, a)


# --- queries -----------------------------------------------------------------------------------


def _sketches(reg: Repo, ids: list[str]) -> dict[str, tuple[float, np.ndarray]]:
    with reg.catalog.reader() as con:
        # as numpy arrays: a sketch as a list of 4096 Python floats costs ~0.5 ms
        got = con.execute("SELECT vector_id, norm, sketch FROM vector_stats "
                          "WHERE vector_id IN (SELECT unnest(?))", [ids]).fetchnumpy()
    return {str(vid): (float(norm), np.asarray(sk, dtype=np.float64))
            for vid, norm, sk in zip(got["vector_id"], got["norm"], got["sketch"], strict=True)}


#: what :func:`similar` and :func:`similarity_matrix` rank or show
BY = ("cosine", "alignment")


def check_by(by: Any) -> str:
    """``by`` if it names a statistic of :data:`BY`, else :class:`InvalidInput`."""
    if by not in BY:
        raise InvalidInput(f"invalid --by {by!r}: one of {', '.join(BY)}")
    return by


def similar(reg: Repo, ref: str, k: int = 10, by: str = "cosine") -> list[dict[str, Any]]:
    """The versions most similar to ``ref`` among those of its base, best first by ``by``
    (``cosine`` or ``alignment``): exact values where the pair is stored, sketch estimates of
    the cosine otherwise (``exact`` says which, and ``bound`` is an estimate's error bound,
    :func:`estimate_bound`; an estimate has no alignment, and ranks after every exact
    alignment). Estimates are ranked from the base's sketch file (milliseconds for
    10,000 vectors; beyond :data:`COARSE_CANDIDATES` records, in two stages: see
    :func:`_rank_sketches`), or from the catalog for vectors the file lacks."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"invalid --top {k!r}: a positive integer")
    check_by(by)
    record, vid = reg.resolve_ref(ref)
    m = reg.manifest(vid)
    base, arch = m.base_hash, m.arch_fingerprint
    with reg.catalog.reader() as con:
        row = con.execute("SELECT norm FROM vector_stats WHERE vector_id = ?", [vid]).fetchone()
        if row is None:
            raise NotFound(f"no similarities computed for {record.ref if record else vid[:12]} "
                           "yet; run `tvreg similarities`")
        qnorm = row[0]
        # the stored pairs (those of vectors the catalog no longer lists of the base have no
        # versions below, and are dropped there)
        values: dict[str, tuple[float | None, float | None, bool, float | None]] = {
            other: (cos, rate, True, align) for other, cos, rate, align in con.execute(
                "SELECT CASE WHEN vector_a = $v THEN vector_b ELSE vector_a END, cosine, "
                "sign_conflict_rate, alignment FROM similarities "
                "WHERE vector_a = $v OR vector_b = $v", {"v": vid}).fetchall()}
        # estimates: only the best k of the others can make the top k
        found = _estimates_from_file(reg.root, con, reg.catalog.path, base, arch, vid, qnorm,
                                     set(values), k)
        if found is None:  # no usable sketch file: every other vector, from the catalog
            want = [r[0] for r in con.execute(
                "SELECT vector_id FROM vectors WHERE base_hash = ? AND arch_fingerprint = ? "
                "AND vector_id <> ?", [base, arch, vid]).fetchall() if r[0] not in values]
            estimates: dict[str, float | None] = {}
        else:
            estimates, want = found
        if want:  # vectors of the base the file has no record of
            estimates.update(_estimates_from_catalog(con, vid, want))
            for other in want:
                estimates.setdefault(other, None)
        for other, cos in estimates.items():
            values[other] = (cos, None, False, None)
        col = 0 if by == "cosine" else 3
        # by alignment, pairs without one (estimates, no matrices) follow in order of cosine
        ranked = sorted(values, key=lambda o: (_finite(values[o][col]) is None,
                                               -(_finite(values[o][col]) or 0.0),
                                               _finite(values[o][0]) is None,
                                               -(_finite(values[o][0]) or 0.0), o))
        # the versions of the best k vectors the catalog lists of the base (each has one at
        # least): estimates are of listed vectors; an exact pair may be a vector's since gone
        versions = con.execute("SELECT name, version, vector_id FROM versions "
                               "WHERE vector_id IN (SELECT unnest(?)) AND base_hash = ? "
                               "AND arch_fingerprint = ?", [ranked, base, arch]).fetchall()
        listed = {v[2] for v in versions}
        top = set([o for o in ranked if o in listed][:k])
        versions = [v for v in versions if v[2] in top]
    rows = [{"ref": f"{name}@{version}", "name": name, "version": version, "vector_id": other,
             "cosine": _finite(values[other][0]), "sign_conflict_rate": _finite(values[other][1]),
             "alignment": _finite(values[other][3]), "exact": values[other][2],
             "bound": None if values[other][2] else estimate_bound(_finite(values[other][0]))}
            for name, version, other in versions]
    rows.sort(key=lambda r: (r[by] is None, -(r[by] or 0.0), r["cosine"] is None,
                             -(r["cosine"] or 0.0), r["name"], r["version"]))
    return rows[:k]


#: the probability the :func:`estimate_bound` of a sketch estimate may be exceeded
BOUND_PROBABILITY = 0.05


def estimate_bound(cosine: float | None) -> float | None:
    """The error bound of a sketch estimate ``cosine`` of a cosine: with hashes drawn at random,
    the estimate's variance is at most (1 + cos²)/D, so by Chebyshev's inequality its error
    exceeds √((1 + cos²) / (D · p)) with probability at most p = :data:`BOUND_PROBABILITY`
    (0.070 at cos 0, 0.099 at |cos| 1; docs/similarity.md, measured errors are ~7× smaller).
    None for an undefined estimate."""
    if cosine is None:
        return None
    c = min(1.0, abs(cosine))
    return math.sqrt((1.0 + c * c) / (SKETCH_DIM * BOUND_PROBABILITY))


#: sketch-file records beyond which :func:`_rank_sketches` ranks in two stages, and the fewest
#: candidates its coarse stage keeps (at least :data:`COARSE_PER_RESULT` per result wanted)
COARSE_CANDIDATES = 2_000
COARSE_PER_RESULT = 50


def _rank_sketches(table: np.ndarray, coarse: np.ndarray | None, qi: int, need: int,
                   candidates: int | None = None) -> tuple[np.ndarray, int]:
    """The ``need`` rows of the sketch records ``table`` with the highest estimated cosines
    with row ``qi`` (more where the last ties), best first (ties by vector id; undefined
    estimates, of zero norms, last), and how many rows were scored with the full sketch. Up
    to ``candidates`` records (default: the larger of :data:`COARSE_CANDIDATES` and
    ``COARSE_PER_RESULT · need``) every row is scored; beyond, the ``coarse`` records
    (:func:`tvreg.catalog.sketches.load_coarse`) rank all rows first and only the best
    ``candidates`` are scored with the full sketch. Deterministic: the same records give the
    same rows."""
    n = len(table)
    if candidates is None:
        candidates = max(COARSE_CANDIDATES, COARSE_PER_RESULT * need)
    sketches = table["sketch"]
    query = np.asarray(sketches[qi], dtype=np.float32)
    if n <= candidates or coarse is None or len(coarse) != n:
        rows = np.arange(n)
        dots = sketches @ query  # every record at once: one pass over the mapped file
        norms = np.asarray(table["norm"], dtype=np.float64)
    else:
        cscore = coarse["sketch"] @ sketch_index.fold(query[None, :])[0]  # cosines, roughly
        rows = np.sort(np.argpartition(-cscore, candidates - 1)[:candidates])
        dots = _gathered_dots(sketches, rows, query)
        norms = np.asarray(table["norm"][rows], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        key = np.where(norms > 0, -(dots.astype(np.float64) / norms), np.inf)
    scored = len(rows)
    if need < len(rows):  # only the best need (and whatever ties with the last) get sorted
        last = np.partition(key, need - 1)[need - 1]
        keep = np.flatnonzero(key <= last)
        rows, key = rows[keep], key[keep]
    ids = np.asarray((coarse if coarse is not None and len(coarse) == n else table)
                     ["vector_id"][rows])
    return rows[np.lexsort((ids, key))], scored


def _gathered_dots(sketches: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``sketches[rows] @ query``, gathering 64 rows (1 MiB) at a time: 4x faster than one
    gather of 10,000 rows (160 MB) from the mapped file, which the product reads again."""
    out = np.empty(len(rows), dtype=np.float32)
    for i in range(0, len(rows), 64):
        out[i:i + 64] = sketches[rows[i:i + 64]] @ query
    return out


def _estimates_from_file(root: str, con, catalog_path: str, base: str, arch: str, vid: str,
                         qnorm: float, exact: set[str], k: int
                         ) -> tuple[dict[str, float | None], list[str]] | None:
    """Sketch estimates from the base's sketch file of the cosines of ``vid`` with the ``k``
    vectors of the base (in the catalog, not ``vid``, not in ``exact``) it estimates highest,
    and the base's vectors the file has no record of; None without a usable file (or a record
    of ``vid``)."""
    table = sketch_index.load(root, base, arch)
    if table is None:
        return None
    ids, unfiled, stale = _filed(root, con, catalog_path, base, arch, table)
    where = np.flatnonzero(ids == vid.encode("ascii"))
    if not where.size:
        return None
    n = len(table)
    candidates = max(COARSE_CANDIDATES, COARSE_PER_RESULT * k)
    coarse = sketch_index.load_coarse(root, base, arch, table) if n > candidates else None
    # not ranked: the query, vectors with exact pairs, records of vectors no longer listed
    skip = np.array(sorted({vid, *exact, *stale}), dtype="S64")
    norms = np.asarray(table["norm"])
    query = np.asarray(table["sketch"][where[0]], dtype=np.float32)
    need = k + len(skip) + 64
    while True:
        order, scored = _rank_sketches(table, coarse, int(where[0]), need, candidates)
        ranked = len(order)
        ordered_ids = ids[order]
        _, first = np.unique(ordered_ids, return_index=True)  # a repeated record: the first
        once = np.zeros(len(order), dtype=bool)
        once[first] = True
        order = order[once & ~np.isin(ordered_ids, skip)][:k]
        if len(order) >= k or (ranked < need and scored >= n):
            break  # k found, or every record ranked
        # too few: rank more (a wider first stage if it kept too few), from the start again
        if ranked < need:
            candidates *= 4
        need *= 4
    dots = table["sketch"][order] @ query
    out: dict[str, float | None] = {
        i.decode("ascii"): _cosine(float(dot), float(norms[r]), qnorm)
        for r, i, dot in zip(order.tolist(), ids[order].tolist(), dots.tolist(), strict=True)}
    return out, [u for u in unfiled if u != vid and u not in exact]


def _unfiled(con, base: str, arch: str, ids: np.ndarray) -> tuple[list[str], list[str]]:
    """The vectors of the base whose ids are not in ``ids`` (the sketch file's), and the ids
    of ``ids`` the catalog does not list in the base (records of vectors since removed): two
    anti-joins inside DuckDB (the ids go in as one string of 64-digit ids)."""
    params = {"ids": np.ascontiguousarray(ids).tobytes().decode("ascii"), "n": len(ids)}
    con.execute("CREATE TEMP TABLE tvreg_filed AS "
                "SELECT substr($ids, i * 64 + 1, 64) AS vector_id FROM range($n) t(i)", params)
    try:
        unfiled = con.execute(
            "SELECT vector_id FROM vectors WHERE base_hash = $b AND arch_fingerprint = $a "
            "AND vector_id NOT IN (SELECT vector_id FROM tvreg_filed)",
            {"b": base, "a": arch}).fetchall()
        stale = con.execute(
            "SELECT DISTINCT vector_id FROM tvreg_filed WHERE vector_id NOT IN (SELECT "
            "vector_id FROM vectors WHERE base_hash = $b AND arch_fingerprint = $a)",
            {"b": base, "a": arch}).fetchall()
    finally:
        con.execute("DROP TABLE tvreg_filed")
    return sorted(r[0] for r in unfiled), sorted(r[0] for r in stale)


#: per sketch file: (the state of it and of the catalog, its ids, the base's vectors it lacks,
#: its ids the catalog does not list)
_FILED: dict[str, tuple[tuple, np.ndarray, list[str], list[str]]] = {}
_FILED_LOCK = threading.Lock()


def _state(*files: str) -> tuple:
    """What changes when any of ``files`` is written (inode, size, mtime; None if missing)."""
    import os

    out: list[tuple[int, int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _filed(root: str, con, catalog_path: str, base: str, arch: str, table: np.ndarray
           ) -> tuple[np.ndarray, list[str], list[str]]:
    """The sketch file's ids (``table``'s), the base's vectors it has no record of, and its ids
    the catalog no longer lists in the base; remembered in this process while neither the
    file nor the catalog changes (the anti-joins read every id of the base)."""
    file = sketch_index.path(root, base, arch)
    state = _state(file, catalog_path, catalog_path + ".wal")
    with _FILED_LOCK:
        memo = _FILED.get(file)
    if memo is not None and memo[0] == state and len(memo[1]) == len(table):
        return memo[1], memo[2], memo[3]
    ids = np.array(table["vector_id"])  # a plain copy: indexing a memmap per item is slow
    unfiled, stale = _unfiled(con, base, arch, ids)
    if _state(file, catalog_path, catalog_path + ".wal") == state:
        with _FILED_LOCK:
            if len(_FILED) >= 16:
                _FILED.clear()
            _FILED[file] = (state, ids, unfiled, stale)
    return ids, unfiled, stale


def _estimates_from_catalog(con, vid: str, ids: list[str]) -> dict[str, float | None]:
    rows = con.execute(
        "SELECT s.vector_id, array_inner_product(s.sketch, q.sketch), s.norm, q.norm "
        "FROM vector_stats s, (SELECT sketch, norm FROM vector_stats WHERE vector_id = ?) q "
        "WHERE s.vector_id IN (SELECT unnest(?))", [vid, ids]).fetchall()
    return {other: _cosine(dot, na, nb) for other, dot, na, nb in rows}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class SimilarityMatrix:
    """Cosines (or alignments: ``by``) between versions of one base: ``values[i, j]`` (NaN
    where undefined)."""

    labels: list[str]
    vector_ids: list[str]
    values: np.ndarray
    exact: np.ndarray
    skipped: list[dict[str, str]]
    by: str = "cosine"

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "vector_ids": self.vector_ids, "by": self.by,
                "matrix": [[None if not math.isfinite(v) else float(v) for v in row]
                           for row in self.values],
                "exact": self.exact.tolist(), "skipped": self.skipped}


def _listed_versions(reg: Repo, refs: list[str]) -> dict[str, tuple[str, str, tuple[str, str]]]:
    """``NAME@N`` refs the catalog lists, in one query: ref -> (label, vector id, (base hash,
    architecture) of its vector), as the record and manifest would give them (a page of 150
    refs would otherwise read 300 documents from the store). Other refs (names, tags, id
    prefixes, versions the catalog lacks) are left to :meth:`Repo.resolve_ref`."""
    wanted: dict[tuple[str, int], str] = {}
    for ref in refs:
        r = parse_ref(ref)  # InvalidRef as resolve_ref would raise it
        if r.name is not None and r.version is not None and ref == f"{r.name}@{r.version}":
            wanted[(r.name, r.version)] = ref
    if not wanted:
        return {}
    reg.require()
    rows = reg.catalog.rows(
        "SELECT v.name, v.version, v.vector_id, x.base_hash, x.arch_fingerprint "
        "FROM versions v JOIN vectors x ON x.vector_id = v.vector_id "
        "JOIN (SELECT unnest(?) AS name, unnest(?) AS version) w "
        "ON w.name = v.name AND w.version = v.version",
        [[k[0] for k in wanted], [k[1] for k in wanted]])
    return {wanted[(r["name"], r["version"])]: (f"{r['name']}@{r['version']}", r["vector_id"],
                                                (r["base_hash"], r["arch_fingerprint"]))
            for r in rows}


def similarity_matrix(reg: Repo, refs: list[str] | None = None,
                      by: str = "cosine") -> SimilarityMatrix:
    """Cosines (``by="alignment"``: subspace alignments) between ``refs`` (default: the newest
    version of every name, if they share one base). Refs of another base than the first are
    skipped, with the reason. Alignments are exact or missing (NaN): there is no sketch of
    them, and the diagonal is NaN (a matrix's alignment with itself is the share of its norm in
    its own top subspace, at least 0.95, not a stored pair)."""
    check_by(by)
    if refs is None:
        latest = reg.catalog.rows("SELECT name, version, base_hash, arch_fingerprint FROM latest "
                                  "ORDER BY name")
        bases = {(r["base_hash"], r["arch_fingerprint"]) for r in latest}
        if len(bases) > 1:
            raise InvalidInput(f"the registry holds vectors of {len(bases)} bases; name the refs "
                               "to compare (e.g. `tvreg similar --matrix a b c`)")
        refs = [f"{r['name']}@{r['version']}" for r in latest]
    labels, ids, skipped = [], [], []
    first = None
    listed = _listed_versions(reg, refs)
    for ref in refs:
        if ref in listed:
            label, vid, key = listed[ref]
        else:
            record, vid = reg.resolve_ref(ref)
            m = reg.manifest(vid)
            key = (m.base_hash, m.arch_fingerprint)
            label = record.ref if record else vid[:12]
        if first is None:
            first = (label, key)
        elif key != first[1]:
            why = "another architecture" if key[1] != first[1][1] else "another base model"
            skipped.append({"ref": label, "reason": f"{why} than {first[0]} "
                                                    f"(base {key[0][:12]} vs {first[1][0][:12]})"})
            continue
        labels.append(label)
        ids.append(vid)
    n = len(ids)
    values = np.full((n, n), np.nan)
    exact = np.zeros((n, n), dtype=bool)
    uniq = sorted(set(ids))
    pair = {}
    if uniq:
        for r in reg.catalog.rows(f"SELECT vector_a, vector_b, {by} AS value FROM similarities "
                                  "WHERE vector_a IN (SELECT unnest(?)) "
                                  "AND vector_b IN (SELECT unnest(?))",
                                  [uniq, uniq]):
            pair[(r["vector_a"], r["vector_b"])] = r["value"]
    sketches = _sketches(reg, uniq) if uniq and by == "cosine" else {}
    norms = {v: sk[0] for v, sk in sketches.items()}
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            if a == b:
                if norms.get(a, 0.0) > 0:
                    values[i, j], exact[i, j] = 1.0, True
                continue
            key = _ordered(a, b)
            if key in pair:
                values[i, j] = np.nan if pair[key] is None else pair[key]
                exact[i, j] = True
            elif a in sketches and b in sketches:
                c = _cosine(float(sketches[a][1] @ sketches[b][1]), norms[a], norms[b])
                values[i, j] = np.nan if c is None else c
    return SimilarityMatrix(labels, ids, values, exact, skipped, by)
