"""Task vectors from a (base, fine-tuned) checkpoint pair: τ = θ_ft − θ_base, tensor by tensor.

All checks that need no tensor data (names, shapes, dtypes) run before anything is read or
written. The base is hashed in the same pass that computes the deltas, so each checkpoint is read
once; at most a few tensors are in memory at a time.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from tvreg import dtypes
from tvreg.codecs import BitDiff, CodecPipeline, choose_pipeline
from tvreg.digest import BaseHasher, arch_fingerprint, tensor_bytes
from tvreg.errors import IncompatibleCheckpoints, InvalidInput, NonFiniteValues, ZeroVectorWarning
from tvreg.format.manifest import Manifest, SkippedTensor, TensorEntry
from tvreg.tensors.checkpoints import Checkpoint, TensorInfo
from tvreg.tensors.encoding import DEFAULT_CHUNK_BYTES, TensorEncoder
from tvreg.util.listings import listing
from tvreg.util.patterns import compile_option


@dataclass(frozen=True)
class Factored:
    """A delta given as the encoding of a size-changing first step (``lowrank`` factors)."""

    pipeline: CodecPipeline
    payload: bytes


#: the hint that ends the error for tensors in one checkpoint only
FILTER_HINT = "; leave them out with --exclude REGEX (or select with --include REGEX)"


@dataclass(frozen=True)
class PairPlan:
    """What a checked (base, fine-tuned) pair makes: ``infos``, every tensor of the base (the
    base hash and architecture fingerprint cover them all); ``left_out``, the base tensors the
    include/exclude filter leaves out (stored as zero deltas); ``ignored``, the fine-tuned-only
    tensors it leaves out."""

    infos: list[TensorInfo]
    left_out: frozenset[str] = frozenset()
    ignored: tuple[str, ...] = ()


def compile_filter(include: str | None, exclude: str | None) -> Callable[[str], bool] | None:
    """``keep(name)``: ``re.search`` of ``include`` matches and that of ``exclude`` does not (as
    compose's --include/--exclude); None if neither is given."""
    if include is None and exclude is None:
        return None
    inc, exc = compile_option(include, "--include"), compile_option(exclude, "--exclude")
    return lambda name: (inc is None or inc.search(name) is not None) \
        and not (exc is not None and exc.search(name))


def _dtypes_fit(a: TensorInfo, b: TensorInfo) -> bool:
    """Same dtype, or two floating ones (τ is computed in their working dtype)."""
    return a.dtype == b.dtype or (dtypes.is_floating(a.dtype) and dtypes.is_floating(b.dtype))


def check_pair(base: Checkpoint, finetuned: Checkpoint) -> list[TensorInfo]:
    """The base's tensor infos, if both checkpoints have the same names and shapes, and the same
    dtypes except for floating tensors (an fp32 base with a bf16 fine-tune is a pair)."""
    return plan_pair(base, finetuned).infos


def plan_pair(base: Checkpoint, finetuned: Checkpoint, include: str | None = None,
              exclude: str | None = None) -> PairPlan:
    """Check that the tensors the filter keeps (all, without one) have the same names and shapes
    in both checkpoints, and the same dtypes except for floating tensors; raises
    :class:`IncompatibleCheckpoints`."""
    keep = compile_filter(include, exclude)
    a_all = {i.name: i for i in base.infos()}
    b_all = {i.name: i for i in finetuned.infos()}
    a = {n: i for n, i in a_all.items() if keep is None or keep(n)}
    b = {n: i for n, i in b_all.items() if keep is None or keep(n)}
    if keep is not None and not any(dtypes.is_floating(i.dtype) for i in a.values()):
        raise InvalidInput("--include/--exclude leave no floating tensor of the base to store")
    only_base = sorted(a.keys() - b.keys())
    only_ft = sorted(b.keys() - a.keys())
    problems = []
    if only_base:
        problems.append(f"{len(only_base)} tensor(s) only in the base: {listing(only_base)}")
    if only_ft:
        problems.append(f"{len(only_ft)} tensor(s) only in the fine-tuned: {listing(only_ft)}")
    common = sorted(a.keys() & b.keys())
    differ = [f"{n} ({a[n].dtype}{list(a[n].shape)} vs {b[n].dtype}{list(b[n].shape)})"
              for n in common if a[n].shape != b[n].shape or not _dtypes_fit(a[n], b[n])]
    if differ:
        what = ("differ in shape or dtype" if any(a[n].shape == b[n].shape for n in common
                                                  if not _dtypes_fit(a[n], b[n]))
                else "differ in shape")
        note = ("; only floating tensors may differ in dtype"
                if any(not _dtypes_fit(a[n], b[n]) for n in common) else "")
        problems.append(f"{len(differ)} tensor(s) {what}: {listing(differ)}{note}")
    if problems:
        raise IncompatibleCheckpoints("checkpoints do not match: " + "; ".join(problems)
                                      + (FILTER_HINT if only_base or only_ft else ""))
    left_out = frozenset(a_all.keys() - a.keys())
    ignored = tuple(sorted(b_all.keys() - a_all.keys() - b.keys()))
    return PairPlan([a_all[n] for n in sorted(a_all)], left_out, ignored)


def finetuned_dtypes(finetuned: Checkpoint | None, infos: list[TensorInfo]) -> dict[str, str]:
    """The fine-tuned checkpoint's dtype of each floating tensor of ``infos`` (the base's) whose
    dtype differs from the base's: what the manifest records as ``finetuned_dtype``."""
    if finetuned is None:
        return {}
    ft = {i.name: i.dtype for i in finetuned.infos()}
    return {i.name: ft[i.name] for i in infos
            if dtypes.is_floating(i.dtype) and ft.get(i.name, i.dtype) != i.dtype}


def build_task_vector(base: Checkpoint, finetuned: Checkpoint | None, infos: list[TensorInfo],
                      put: Callable[[bytes], str], *, allow_nonfinite: bool = False,
                      level: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      workers: int | None = None,
                      on_tensor: Callable[[int], None] | None = None,
                      delta_of: Callable[[TensorInfo, torch.Tensor], torch.Tensor] | None = None,
                      encode: Callable[[TensorEncoder, str, torch.Tensor, str], Future] | None
                      = None, exact: bool = False,
                      left_out: frozenset[str] | set[str] = frozenset(),
                      on_zero: Callable[[], None] | None = None) -> Manifest:
    """Encode the task vector of a checked pair; ``put`` stores a blob and returns its id.

    ``delta_of(info, base_tensor)``, when given instead of ``finetuned``, returns a floating
    tensor's delta in its delta dtype, or a :class:`Factored` float32 delta (a LoRA adapter's
    factors, stored as they are). ``encode(encoder, name, delta, source_dtype)``, when given,
    encodes a delta instead of the default lossless pipeline (a lossy codec,
    :class:`tvreg.tensors.lossy.LossyEncoder`) and returns a future of its manifest entry.

    ``exact`` (exact mode) stores each floating tensor as the bit differences of the fine-tuned
    tensor over the base's (``bitdiff``, :mod:`tvreg.codecs.bitdiff`), from which the fine-tuned
    tensor is rebuilt bit for bit; the entry still describes (and hashes) the float delta.

    ``left_out`` (names, from :func:`plan_pair`) are stored as zero deltas, whatever the
    fine-tuned holds. Tensors tied in both checkpoints (:meth:`Checkpoint.shared_names`) are
    computed and encoded once and counted once in ``on_tensor``; both names are in the manifest,
    with the same blobs. If every delta computed from ``finetuned`` is zero, a
    :class:`ZeroVectorWarning` is issued, or ``on_zero()`` called instead (the vector is still
    built)."""
    if exact and finetuned is None:
        raise InvalidInput("exact mode needs a fine-tuned checkpoint (not a LoRA adapter)")
    if exact and encode is not None:
        raise InvalidInput("exact mode is lossless: it does not go with a lossy codec")
    ft_dtypes = finetuned_dtypes(finetuned, [i for i in infos if i.name not in left_out])
    if exact and ft_dtypes:
        n, d = next(iter(ft_dtypes.items()))
        raise InvalidInput(f"exact mode needs the same dtype in both checkpoints: {n} is "
                           f"{dict((i.name, i.dtype) for i in infos)[n]} in the base and {d} "
                           f"in the fine-tuned ({len(ft_dtypes)} tensor(s) differ)")
    hasher = BaseHasher()
    skipped: list[SkippedTensor] = []
    futures: list[tuple[str, Future | str]] = []  # a future of the entry, or the tied name
    # tied tensors (the same data under two names in both checkpoints, as torch.save keeps
    # tied embeddings) are read, subtracted and encoded once; both names get the entry
    tied = {} if finetuned is None else _tied(base, finetuned, left_out)
    nonzero = finetuned is None  # whether a delta from the fine-tuned is known to be nonzero
    computed = False  # whether any floating delta was computed from the fine-tuned
    with TensorEncoder(put, chunk_bytes=chunk_bytes, workers=workers) as encoder:
        for info in infos:
            tb = base.tensor(info.name)
            if not dtypes.is_floating(info.dtype):
                skipped.append(SkippedTensor(info.name, info.dtype, info.shape))
                continue
            hasher.update(info.name, info.dtype, info.shape, tensor_bytes(tb))
            if info.name in tied:
                del tb
                futures.append((info.name, tied[info.name]))
                continue
            work = dtypes.torch_dtype(dtypes.delta_dtype(info.dtype))
            tf = None
            if info.name in left_out:  # left out by the filter: an unchanged (zero) delta
                delta = torch.zeros(info.shape, dtype=work)
                if exact:
                    tf = tb  # bitdiff of the base over itself
            elif delta_of is not None:
                delta = delta_of(info, tb)
                if isinstance(delta, Factored):
                    del tb
                    futures.append((info.name, encoder.submit_factored(
                        info.name, info.shape, info.dtype, delta.pipeline, delta.payload)))
                    if on_tensor:
                        on_tensor(info.numel * 4)
                    continue
            else:
                assert finetuned is not None  # only a LoRA import (delta_of) has none
                tf = finetuned.tensor(info.name)  # a private copy (Checkpoint.tensor)
                work = dtypes.torch_dtype(dtypes.work_dtype(
                    info.dtype, ft_dtypes.get(info.name, info.dtype)))
                if tf.dtype == work and not exact:  # in place: no third full-size tensor
                    delta = tf.sub_(tb)
                elif tf.dtype == work:  # exact mode reads tf's bits afterwards
                    delta = tf - tb
                # (sub_ converts a narrower tb to work exactly: ft.to(work) - base.to(work))
                else:  # widen into a fresh tensor and subtract in place: one full-size copy less
                    delta = tf.to(work)
                    delta.sub_(tb)
                if not exact:
                    del tf
                computed = True
                if not nonzero:  # until one is found: a pass over a delta in memory already
                    nonzero = bool(delta.any())
            if not allow_nonfinite:
                _check_finite(info.name, delta)
            # the checkpoints' tensors are let go before a submit, which may wait for the
            # encoder's in-flight budget: only the deltas in flight and this one are held then
            if exact:
                assert tf is not None  # exact mode reads a fine-tuned checkpoint
                payload = exact_payload(info.dtype, tf, tb)
                del tf, tb
                pipeline = exact_pipeline(info.dtype, _PENDING_BASE, payload, level)
                futures.append((info.name, encoder.submit_exact(info.name, delta, info.dtype,
                                                                pipeline, payload)))
            elif encode is not None:
                del tb
                futures.append((info.name, encode(encoder, info.name, delta, info.dtype)))
            else:
                del tb
                pipeline = choose_pipeline(delta, delta.element_size(), level=level)
                futures.append((info.name, encoder.submit(info.name, delta, info.dtype,
                                                          pipeline)))
            if on_tensor:
                on_tensor(delta.numel() * delta.element_size())
        done: dict[str, TensorEntry] = {}
        for name, f in futures:
            done[name] = f.result() if isinstance(f, Future) \
                else dataclasses.replace(done[f], name=name)
        tensors = tuple(done[name] for name, _ in futures)
    if ft_dtypes:  # recorded where the fine-tune's dtype is not the base's (format §6)
        tensors = tuple(dataclasses.replace(t, finetuned_dtype=ft_dtypes[t.name])
                        if t.name in ft_dtypes else t for t in tensors)
    if computed and not nonzero:
        if on_zero is not None:
            on_zero()
        else:
            warnings.warn(zero_vector_message(bool(left_out)), ZeroVectorWarning, stacklevel=2)
    base_hash = hasher.hexdigest()
    if exact:  # the base hash is known only now; the blobs do not depend on it
        tensors = tuple(dataclasses.replace(t, codecs=CodecPipeline(
            (BitDiff(t.source_dtype, base_hash),) + t.codecs.codecs[1:])) for t in tensors)
    fingerprint = arch_fingerprint((i.name, i.dtype, i.shape) for i in infos)
    return Manifest(base_hash, fingerprint, tensors, tuple(skipped))


def zero_vector_message(filtered: bool = False) -> str:
    """What :class:`ZeroVectorWarning` says."""
    return ("the fine-tuned checkpoint equals the base"
            + (" on the tensors --include/--exclude keep" if filtered else "")
            + ": the task vector is all zeros (wrong file?)")


def _tied(base: Checkpoint, finetuned: Checkpoint,
          left_out: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """``{name: first}`` for the tensors tied to the same earlier one in both checkpoints (and
    left out by the filter, or kept, both)."""
    a, b = base.shared_names(), finetuned.shared_names()
    return {n: first for n, first in a.items()
            if b.get(n) == first and (n in left_out) == (first in left_out)}


def work_total(base: Checkpoint, finetuned: Checkpoint | None, infos: list[TensorInfo],
               left_out: frozenset[str] | set[str] = frozenset()) -> int:
    """Elements of the tensors :func:`build_task_vector` computes (tied ones once): what its
    ``on_tensor`` calls add up to, over 4 (float32 deltas)."""
    tied = {} if finetuned is None else _tied(base, finetuned, left_out)
    return sum(i.numel for i in infos if i.name not in tied)


def _check_finite(name: str, delta: torch.Tensor) -> None:
    # fast path: any NaN/Inf makes the float64 sum non-finite (and finite values of a float32
    # tensor cannot overflow a float64 sum), so a finite sum proves the tensor finite. numpy
    # casts in small buffers as it sums; torch's sum(dtype=float64) first converts the whole
    # tensor (a temporary twice the size of a float32 delta) and is 5x slower
    import numpy as np

    if np.isfinite(np.add.reduce(delta.detach().reshape(-1).numpy(), dtype=np.float64)):
        return
    finite = torch.isfinite(delta)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteValues(f"task vector tensor {name!r} has {bad} NaN/Inf value(s); "
                              "pass --allow-nonfinite to store it anyway")


_PENDING_BASE = "0" * 64


def exact_payload(source_dtype: str, finetuned: torch.Tensor, base: torch.Tensor):
    """The ``bitdiff`` encoding (uint8 numpy array) of ``finetuned`` over ``base``."""
    import numpy as np

    ft = np.frombuffer(tensor_bytes(finetuned.contiguous()), dtype=np.uint8)
    tb = np.frombuffer(tensor_bytes(base.contiguous()), dtype=np.uint8)
    return np.frombuffer(BitDiff(source_dtype, _PENDING_BASE).payload(ft, tb), dtype=np.uint8)


def exact_pipeline(source_dtype: str, base_hash: str, payload, level: int | None = None
                   ) -> CodecPipeline:
    """``bitdiff`` against the base ``base_hash``, then the lossless pipeline chosen for its
    integers (``payload``)."""
    rest = choose_pipeline(payload, dtypes.itemsize(source_dtype), level=level)
    return CodecPipeline((BitDiff(source_dtype, base_hash),) + rest.codecs)
