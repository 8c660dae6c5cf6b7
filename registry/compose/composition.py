"""Compositions: an expression over stored vectors, merged tensor by tensor.

A :class:`Composition` knows its operands (refs, coefficients, manifests) and checks, before
any tensor is read, that they share the architecture (names and shapes; floating dtypes may
differ and are reported) and the base hash. Its tensors
are produced one name at a time: each operand's tensor is decoded, the merge method combines
them (fp32, or fp64 if an operand is fp64), λ scales the result; at most a few tensors per
operand are in memory, never whole vectors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvreg.errors import IncompatibleCheckpoints, InvalidInput
from tvreg.format.manifest import Manifest
from tvreg.util.listings import listing
from tvreg.util.patterns import compile_option

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import torch

    from tvreg.compose.merge import MergeParams
    from tvreg.repo.repo import Repo
    from tvreg.tensors.taskvector import TaskVector

#: bounds on the bytes of names (accumulators and operand buffers) task arithmetic sums at
#: once: a quarter of the composed vector's size, clamped to this range (one name at least)
AHEAD_BYTES_MIN, AHEAD_BYTES_MAX = 64 << 20, 512 << 20


class BaseMismatchWarning(UserWarning):
    """Operands (or a base checkpoint) of different base hashes, allowed on request."""


class ModelStockWarning(UserWarning):
    """model_stock over vectors of different tasks: it assumes fine-tunes of one task."""


@dataclass(frozen=True)
class Operand:
    """One term of a composition: the ref as written, its coefficient, the vector it resolved to."""

    ref: str
    coef: float
    vector: TaskVector

    def to_json(self) -> dict[str, Any]:
        """The operand as the recipe keeps it: ref (the resolved one when the vector has a record),
        vector id and coefficient."""
        return {"ref": self.vector.ref if self.vector.record else self.ref,
                "vector_id": self.vector.vector_id, "coef": self.coef}


def _layout(m: Manifest) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """name -> (dtype in the checkpoints, shape, whether stored) of every tensor a manifest
    names (skipped ones are not stored)."""
    out = {t.name: (t.source_dtype, tuple(t.shape), True) for t in m.tensors}
    out.update({s.name: (s.dtype, tuple(s.shape), False) for s in m.skipped})
    return out


def architecture_difference(a: Manifest, b: Manifest) -> str | None:
    """None if two manifests describe the same architecture, else what differs (names first).

    Names and shapes decide, read from the manifests: tensors that differ only in floating
    dtype (a vector of a bf16 copy of a model and one of its fp32 copy) are the same
    architecture, so equal fingerprints are a shortcut, not the rule. A tensor stored in one
    vector and skipped (not floating) in the other differs. Where names or shapes differ,
    dtypes that differ too are listed after them."""
    if a.arch_fingerprint == b.arch_fingerprint:
        return None
    la, lb = _layout(a), _layout(b)
    common = la.keys() & lb.keys()
    diffs = sorted(f"{n} (only in one)" for n in la.keys() ^ lb.keys())
    diffs += sorted(f"{n} ({la[n][0]}{list(la[n][1])} vs {lb[n][0]}{list(lb[n][1])})"
                    for n in common if la[n][1:] != lb[n][1:]
                    or (not la[n][2] and la[n][0] != lb[n][0]))
    if not diffs:
        return None
    message = f"{len(diffs)} tensor(s) differ: {listing(diffs)}"
    dtype_only = sorted(f"{n} ({la[n][0]} vs {lb[n][0]})" for n in common
                        if la[n][1:] == lb[n][1:] and la[n][2] and la[n][0] != lb[n][0])
    if dtype_only:
        message += (f"; {len(dtype_only)} more differ in dtype only (allowed): "
                    f"{listing(dtype_only)}")
    return message


def dtype_label(m: Manifest) -> str:
    """The dtypes of a vector's checkpoints: ``float32``, or ``bfloat16 fine-tune of float32``
    where the fine-tuned checkpoint's dtypes were not the base's (``finetuned_dtype``)."""
    return m.dtype_label


def sum_dtype(manifests: list[Manifest]) -> str:
    """The dtype operands are summed in: float64 if any delta is float64, else float32."""
    return "float64" if any(e.dtype == "float64" for m in manifests for e in m.tensors) \
        else "float32"


def dtype_report(operands: list[Operand]) -> dict[str, Any] | None:
    """``{"operands": [{"ref", "dtypes", "source_dtypes", "finetuned_dtypes"}], "summed_in"}``
    where operands differ in dtype (of their base or of their fine-tuned checkpoints), else
    None. Such operands compose: names and shapes decide (see docs/composition.md)."""
    rows = []
    for op in operands:
        m = op.vector.manifest
        rows.append({"ref": op.vector.ref, "dtypes": dtype_label(m),
                     "source_dtypes": sorted({t.source_dtype for t in m.tensors}),
                     "finetuned_dtypes": sorted({t.ft_dtype for t in m.tensors})})
    if len({r["dtypes"] for r in rows}) <= 1:
        return None
    return {"operands": rows, "summed_in": sum_dtype([op.vector.manifest for op in operands])}


def check_compatible(operands: list[Operand], *, allow_base_mismatch: bool = False) -> None:
    """Same architecture (always: names and shapes) and same base (unless allowed), from the
    manifests alone."""
    first = operands[0]
    for op in operands[1:]:
        diff = architecture_difference(first.vector.manifest, op.vector.manifest)
        if diff:
            raise IncompatibleCheckpoints(
                f"{first.vector.ref} and {op.vector.ref} have different architectures: {diff}")
    for op in operands[1:]:
        if op.vector.base_hash != first.vector.base_hash:
            message = (f"{first.vector.ref} and {op.vector.ref} come from different base models "
                       f"(base {first.vector.base_hash[:12]} vs {op.vector.base_hash[:12]})")
            da, db = dtype_label(first.vector.manifest), dtype_label(op.vector.manifest)
            if da != db:
                message += f", of dtypes {da} vs {db}"
            if not allow_base_mismatch:
                raise IncompatibleCheckpoints(message + "; pass --allow-base-mismatch to compose "
                                              "them anyway")
            warnings.warn(message, BaseMismatchWarning, stacklevel=3)


class Composition:
    """A merged task vector, computed lazily from its operands."""

    def __init__(self, repo: Repo, expression: str, operands: list[Operand],
                 params: MergeParams, *, lam: float = 1.0, include: str | None = None,
                 exclude: str | None = None, allow_base_mismatch: bool = False,
                 tensor_params: Any = None, device: Any = None,
                 base_weights: Any = None) -> None:
        import math

        from tvreg.compose.merge import operand_count_problem

        if not operands:
            raise InvalidInput("a composition needs at least one vector")
        problem = operand_count_problem(params.method, len(operands))
        if problem:
            raise InvalidInput(problem)
        if params.method == "slerp" and params.t is None and "t" not in getattr(
                tensor_params, "top", {}):
            raise InvalidInput("slerp needs t, the interpolation point (--t; 0: the first "
                               "model, 1: the second)")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise InvalidInput(f"invalid lambda {lam!r}: a finite number")
        self.repo = repo  # where the operands' tensors are read
        self.expression = expression
        self.operands = operands
        self.params = params
        self.lam = float(lam)
        self.include, self.exclude = include, exclude
        #: None, or per-tensor operand parameters (a mergekit recipe's weights and densities):
        #: ``tensor_params(name) -> (weights, densities or None)`` and ``to_json()``, kept in
        #: the recipe as ``parameters``; every tensor then goes through ``merge_tensor``
        self.tensor_params = tensor_params
        if tensor_params is not None and params.trim == "global" \
                and tensor_params.density_varies:
            raise InvalidInput("trim=global cuts each vector once, at one density; densities "
                               "per operand or per tensor need trim=tensor")
        #: where the spectral methods' SVDs run (None: the host, every core, unless the
        #: tensors are asked for on a CUDA device: then there)
        self.device = _compute_device(device, params.method)
        self._target: Any = None  # the device iter_tensors delivers to, while it runs
        inc, exc = compile_option(include, "--include"), compile_option(exclude, "--exclude")
        check_compatible(operands, allow_base_mismatch=allow_base_mismatch)
        self.allow_base_mismatch = allow_base_mismatch
        #: where the operands differ in dtype: what each is and the dtype they are summed in
        self.dtype_report = dtype_report(operands)
        first = operands[0].vector.manifest
        self.entries = [t for t in first.tensors
                        if (inc is None or inc.search(t.name)) and not (exc and exc.search(t.name))]
        if not self.entries:
            raise InvalidInput("--include/--exclude leave no tensor to compose")
        if _is_spectral(params.method) and not any(
                len(e.shape) == 2 and 0 not in e.shape for e in self.entries):
            raise InvalidInput(f"{params.method} merges matrices (2-D tensors); the composed "
                               "tensors have none (a spectral method would only average)")
        if params.method == "model_stock":
            tasks = {t for op in operands
                     if (t := getattr(op.vector, "metadata", {}).get("task")) is not None}
            if len(tasks) > 1:
                warnings.warn(f"model_stock assumes fine-tunes of one task (different seeds or "
                              f"runs); these are of {len(tasks)} tasks: "
                              f"{', '.join(sorted(str(t) for t in tasks))}",
                              ModelStockWarning, stacklevel=3)
        #: the base model's weights (a checkpoint) for the methods that interpolate weights
        #: (slerp, karcher): given, else the stored base of the operands' base hash, else set
        #: by apply from the base it writes onto (:meth:`check_ready` says when one is missing)
        self.base_weights = base_weights
        if params.weight_space and base_weights is None:
            self.base_weights = repo.stored_base(self.base_hash)
        self._thresholds: list[float] | None = None
        from tvreg.tensors.encoding import default_workers
        from tvreg.util.buffers import BufferPool

        self._buffers = BufferPool(keep=4 * default_workers() + 4)

    def check_ready(self) -> None:
        """:class:`InvalidInput` if the tensors cannot be computed (a method that interpolates
        weights with no base weights at hand); called before anything is read or written."""
        if self.params.weight_space and self.base_weights is None:
            raise InvalidInput(
                f"{self.params.method} interpolates the models' weights, so it needs the base "
                f"model's: store it (tvreg base add PATH) or, with apply, give --base; no "
                f"stored base of {self.base_hash[:12]}")

    # --- identity --------------------------------------------------------------------------------

    @property
    def base_hash(self) -> str:
        """The base of the operands (all share it)."""
        return self.operands[0].vector.base_hash

    @property
    def arch_fingerprint(self) -> str:
        """The architecture fingerprint of the operands (all share it)."""
        return self.operands[0].vector.arch_fingerprint

    @property
    def manifest(self) -> Manifest:
        """The first operand's manifest: names, shapes and skipped tensors of the result."""
        return self.operands[0].vector.manifest

    def names(self) -> list[str]:
        """The names of the composed tensors, in order."""
        return [t.name for t in self.entries]

    @property
    def recipe(self) -> dict[str, Any]:
        """How this vector was made: kept in the version record when it is saved."""
        out = {"expression": self.expression, "method": self.params.to_json(),
               "lambda": self.lam, "include": self.include, "exclude": self.exclude,
               "operands": [op.to_json() for op in self.operands]}
        if self.tensor_params is not None:  # absent by default: older recipes stay as they were
            out["parameters"] = self.tensor_params.to_json()
        return out

    @property
    def parents(self) -> list[str]:
        """The operands' vector ids, each once, in operand order."""
        return list(dict.fromkeys(op.vector.vector_id for op in self.operands
                                  if op.vector.vector_id is not None))  # not checkpoints

    # --- tensors ---------------------------------------------------------------------------------

    def _global_thresholds(self) -> list[float]:
        from tvreg.compose.merge import MagnitudeQuantile

        if self._thresholds is None:
            density = self.params.density
            assert density is not None  # global trim: a method with a density
            out = []
            for op in self.operands:
                total = sum(e.numel for e in self.entries)
                q = MagnitudeQuantile(density, total)
                for step in (q.pass1, q.pass2):
                    for entry in self.entries:
                        step(op.vector.tensor(entry.name))
                out.append(q.threshold())
            self._thresholds = out
        return self._thresholds

    def _decode_stream(self, pairs: list[tuple[str, Operand]],
                       ahead: int | None = None) -> Iterator[torch.Tensor]:
        """The tensors of ``(name, operand)`` pairs in order, up to ``ahead`` (default: the
        workers) decoded ahead on the registry's operand pool."""
        from collections import deque

        from tvreg.tensors.encoding import default_workers

        pool = self.repo.executor("operands")

        def load(op: Operand) -> Callable[..., torch.Tensor]:
            # an operand whose vector reads its own tensors (a checkpoint pair's deltas,
            # computed on the fly: compose/checkpoint_operand.py) has ``load_entry``
            return getattr(op.vector, "load_entry", None) or self.repo.load_tensor

        ahead = ahead or default_workers()
        queue = deque(pool.submit(load(op), op.vector.manifest.tensor(n))
                      for n, op in pairs[:ahead])
        try:
            for i in range(len(pairs)):
                tensor = queue.popleft().result()
                if i + ahead < len(pairs):
                    n, op = pairs[i + ahead]
                    queue.append(pool.submit(load(op), op.vector.manifest.tensor(n)))
                yield tensor
                del tensor
        finally:
            for f in queue:  # an error or an early stop: let the rest finish, keep no result
                f.cancel()

    def _sum_name(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buffer, λ Σ w_i τ_i)`` of one name, the sum a view of a buffer of the pool.

        The operands are decoded on the operand pool, up to one per worker at a time, each
        scaled by its weight by the worker that decoded it, into recycled buffers (the first
        into the accumulator itself); they are added in operand order, so the result does not
        depend on timing. The sums run in numpy, not torch: torch's intra-op threads spin after
        each operation on the cores the decoders need."""
        from collections import deque

        import numpy as np
        import torch

        from tvreg import dtypes
        from tvreg.tensors.encoding import default_workers

        pool = self.repo.executor("operands")
        load, buffers = self.repo.load_tensor, self._buffers
        ops = self.operands
        entries = [op.vector.manifest.tensor(name) for op in ops]
        wide = torch.float64 if any(e.dtype == "float64" for e in entries) else torch.float32

        def decoded(i: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, np.ndarray]:
            e = entries[i]
            buf, view = buffers.take(dtypes.torch_dtype(e.dtype), tuple(e.shape))
            try:
                load(e, out=view)
            except BaseException:
                buffers.give(buf)
                raise
            d = view.numpy()
            if dtype is not None and view.dtype != dtype:  # a float32 operand of a float64 sum
                wbuf, wview = buffers.take(dtype, tuple(e.shape))
                wview.numpy()[...] = d
                buffers.give(buf)
                buf, d = wbuf, wview.numpy()
            if ops[i].coef != 1.0:
                np.multiply(d, ops[i].coef, out=d)  # the buffer is ours to change
            return buf, d

        window = min(len(ops), default_workers())
        queue = deque([pool.submit(decoded, 0, wide)] + [pool.submit(decoded, i)
                                                         for i in range(1, window)])
        acc_buf: torch.Tensor | None = None
        try:
            for i in range(len(ops)):
                buf, d = queue.popleft().result()
                if i + window < len(ops):  # keep `window` decodes in flight
                    queue.append(pool.submit(decoded, i + window))
                if i == 0:
                    acc_buf, acc = buf, d  # the first operand, in the sum's dtype
                    continue
                np.add(acc, d, out=acc)
                del d
                buffers.give(buf)
        except BaseException:
            buffers.give(acc_buf)
            raise
        finally:
            for f in queue:
                f.cancel()
        if self.lam != 1.0:
            np.multiply(acc, self.lam, out=acc)
        assert acc_buf is not None  # set by operand 0 (a composition has operands)
        return acc_buf, torch.from_numpy(acc)

    def _task_arithmetic(self, names: list[str], ahead: bool
                         ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, Σ w_i τ_i, its buffer)``, name by name, in name order. With ``ahead`` several
        names are summed at once on the registry's "names" pool (so the workers never wait for
        the caller at the end of a name, and the additions run in parallel too), as many as fit
        in a quarter of the vector's size (within ``AHEAD_BYTES_MIN`` .. ``AHEAD_BYTES_MAX``);
        without, one name at a time."""
        from collections import deque

        from tvreg.tensors.encoding import default_workers

        pool = self.repo.executor("names")
        window = min(len(self.operands), default_workers())
        size = {e.name: e.nbytes * (1 + window) for e in self.entries}  # accumulator + buffers
        budget = min(max(sum(e.nbytes for e in self.entries) // 4, AHEAD_BYTES_MIN),
                     AHEAD_BYTES_MAX)
        limit = default_workers() if ahead else 1
        queue: deque = deque()
        held, i = 0, 0
        try:
            while i < len(names) or queue:
                while i < len(names) and (not queue or (len(queue) < limit
                                                        and held + size[names[i]] <= budget)):
                    queue.append((names[i], pool.submit(self._sum_name, names[i])))
                    held += size[names[i]]
                    i += 1
                name, future = queue.popleft()
                buf, tensor = future.result()
                held -= size[name]
                yield name, tensor, buf
                del tensor
        finally:
            for _, f in queue:
                f.cancel()

    def _decoded(self, name: str) -> list[torch.Tensor]:
        """The operands' tensors of one name (decoded in parallel on the operand pool)."""
        return list(self._decode_stream([(name, op) for op in self.operands]))

    def _merged(self, name: str, decoded: Future | None = None) -> torch.Tensor:
        """TIES, DARE, magnitude pruning, the spectral methods: all k tensors of the name at
        once (``decoded``: a future of :meth:`_decoded`, else decoded here)."""
        from tvreg.compose.merge import merge_tensor, needs_thresholds

        deltas = decoded.result() if decoded is not None else self._decoded(name)
        weights = [op.coef for op in self.operands]
        densities = None
        extras: dict[str, Any] = {}
        if self.tensor_params is not None:
            weights, densities = self.tensor_params(name)
            extras = self.tensor_params.extras(name)
            if needs_thresholds(self.params):
                densities = None  # one density for the whole vector: in the thresholds
        if self.params.weight_space:
            assert self.base_weights is not None  # check_ready
            extras["base"] = self.base_weights.tensor(name)
        thresholds = self._global_thresholds() if needs_thresholds(self.params) else None
        import torch

        out = merge_tensor(self.params, deltas, weights, name=name, thresholds=thresholds,
                           densities=densities, device=self._svd_device(), **extras)
        if out.device.type != "cpu" and (self._target is None
                                         or torch.device(self._target) != out.device):
            out = out.cpu()  # the caller wants it elsewhere (a file: the host)
        if self.lam != 1.0:
            out.mul_(self.lam)
        return out

    def iter_tensors(self, device: Any = None, dtype: torch.dtype | None = None,
                     prefetch: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, merged tensor)`` one at a time. With ``prefetch`` the next tensors are
        decoded and merged in the background while the caller uses the current one (on CUDA the
        copy overlaps the next decode); without, memory holds one name's tensors only."""
        from tvreg.tensors.taskvector import to_device

        self._target = device
        try:
            for name, tensor, buf in self.stream(prefetch):
                moved = to_device(tensor, device, dtype)
                if moved.device.type != "cpu" or moved.data_ptr() != tensor.data_ptr():
                    self.recycle(buf)  # copied (pinned, cast): the host buffer is free again
                del tensor
                yield name, moved
                del moved
        finally:
            self._target = None

    def stream(self, prefetch: bool = True) -> Iterator[tuple[str, torch.Tensor, Any]]:
        """``(name, merged tensor, buffer)`` on the host, as :meth:`iter_tensors`. A caller that
        is done with a tensor may hand its buffer to :meth:`recycle` (never use the tensor
        after that): the next tensors reuse the memory instead of faulting in fresh pages."""
        from concurrent.futures import ThreadPoolExecutor

        self.check_ready()
        names = self.names()
        try:
            if self.params.method == "task_arithmetic" and self.tensor_params is None \
                    and self.params.rule == "peft":
                yield from self._task_arithmetic(names, ahead=prefetch)
            elif not prefetch or self._svds_on_host():
                for name in names:
                    yield name, self._merged(name), None
            else:
                # three stages at once: the operands of name i+1 are decoded while name i is
                # merged and the caller uses name i-1
                with ThreadPoolExecutor(1, thread_name_prefix="tvreg-decode") as decode_pool, \
                        ThreadPoolExecutor(1, thread_name_prefix="tvreg-compose") as merge_pool:
                    decoded = {j: decode_pool.submit(self._decoded, names[j])
                               for j in range(min(2, len(names)))}
                    pending = merge_pool.submit(self._merged, names[0], decoded.pop(0))
                    try:
                        for i, name in enumerate(names):
                            tensor = pending.result()
                            if i + 1 < len(names):
                                pending = merge_pool.submit(self._merged, names[i + 1],
                                                            decoded.pop(i + 1))
                            if i + 2 < len(names):
                                decoded[i + 2] = decode_pool.submit(self._decoded, names[i + 2])
                            yield name, tensor, None
                            del tensor
                    finally:
                        pending.cancel()
                        for f in decoded.values():
                            f.cancel()
        finally:
            self._buffers.clear()

    def _svd_device(self) -> Any:
        """Where a spectral method's SVDs run: the composition's device, else the CUDA device
        the tensors are asked for on, else None (the host); None for other methods."""
        import torch

        if not _is_spectral(self.params.method):
            return None
        if self.device is not None:
            return self.device
        if self._target is not None and torch.device(self._target).type == "cuda":
            return torch.device(self._target)
        return None

    def _svds_on_host(self) -> bool:
        """Whether this is a spectral merge whose SVDs run on the host. Those merge one name
        at a time with nothing decoded beside them: MKL's SVD slows down sharply when other
        threads take its cores, and decoding is the cheap part. Measured on the 2-core VM,
        three MiniLM fine-tunes from the store (benchmarks/bench_merge_methods.py): TSV-M
        11.6 s with the next name decoded in the background, 5.2 s without; Iso-C 1.9-3.0 s
        against 1.6 s; decoding all three vectors takes 0.43 s."""
        device = self._svd_device()
        return _is_spectral(self.params.method) and (device is None or device.type != "cuda")

    def recycle(self, buffer: Any) -> None:
        """Give back the buffer of a tensor from :meth:`stream` (None is ignored)."""
        self._buffers.give(buffer)

    def state_dict(self, device: Any = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every composed tensor, ``{name: tensor}`` (on ``device`` and in ``dtype`` when given)."""
        import torch

        out = dict(self.iter_tensors(device, dtype))
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.current_stream(torch.device(device)).synchronize()
        return out

    def apply_to(self, target: torch.nn.Module | MutableMapping[str, torch.Tensor],
                 scale: float = 1.0) -> Any:
        """θ += scale · merged, in place, on a module's parameters/buffers or a state dict.

        Every composed tensor must exist in the target with the same shape (checked for all
        names before anything is changed); tensors not in the composition are left alone.
        """
        import torch

        params: MutableMapping[str, torch.Tensor]
        if isinstance(target, torch.nn.Module):
            params = dict(target.named_parameters())
            params.update(dict(target.named_buffers()))
        elif isinstance(target, Mapping):
            params = target
        else:
            raise InvalidInput("apply_to needs a torch.nn.Module or a state dict")
        missing = [e.name for e in self.entries if e.name not in params]
        wrong = [f"{e.name} ({list(params[e.name].shape)} vs {list(e.shape)})"
                 for e in self.entries if e.name in params
                 and tuple(params[e.name].shape) != tuple(e.shape)]
        if missing or wrong:
            raise IncompatibleCheckpoints(
                "the target does not fit the composition: " + "; ".join(
                    p for p in (f"{len(missing)} tensor(s) missing: {listing(missing)}"
                                if missing else "",
                                f"{len(wrong)} tensor(s) of another shape: {listing(wrong)}"
                                if wrong else "")
                    if p))
        # a target on one CUDA device: each merged tensor goes there through pinned memory
        # without blocking, so the copy overlaps the decoding of the next (iter_tensors)
        devices = {params[e.name].device for e in self.entries}
        device = next(iter(devices)) if len(devices) == 1 else None
        device = device if device is not None and device.type == "cuda" else None
        with torch.no_grad():
            for name, delta in self.iter_tensors(device=device):
                t = params[name]
                t.add_(delta.to(device=t.device, dtype=t.dtype, non_blocking=True), alpha=scale)
        if device is not None:
            torch.cuda.current_stream(device).synchronize()
        return target

    def save(self, path: str) -> int:
        """Write the composed vector to a safetensors file, one tensor at a time."""
        from tvreg.tensors.outputs import check_output_path
        from tvreg.tensors.safetensors_io import write_safetensors

        self.check_ready()
        path = check_output_path(path, registry=self.repo.root)
        dtype = sum_dtype([op.vector.manifest for op in self.operands])
        specs = [(e.name, dtype, e.shape) for e in self.entries]
        metadata = {"tvreg.expression": self.expression, "tvreg.base_hash": self.base_hash,
                    "tvreg.arch_fingerprint": self.arch_fingerprint,
                    "tvreg.recipe": self.recipe_json()}
        return write_safetensors(path, specs, self.iter_tensors(), metadata, progress="compose")

    def recipe_json(self) -> str:
        """:attr:`recipe` as canonical JSON: what every file written from this composition
        carries in its safetensors metadata (``tvreg.recipe``)."""
        from tvreg.digest import canonical_json

        return canonical_json(self.recipe).decode()

    def __repr__(self) -> str:
        return (f"<Composition {self.expression!r} method={self.params.method} lambda={self.lam} "
                f"tensors={len(self.entries)}>")


def _is_spectral(method: str) -> bool:
    from tvreg.compose.spectral import SPECTRAL_METHODS

    return method in SPECTRAL_METHODS


def _compute_device(device: Any, method: str) -> Any:
    """``device`` checked: a torch device the spectral methods can run on, or None."""
    if device is None:
        return None
    import torch

    if not _is_spectral(method):
        raise InvalidInput(f"a compute device has a meaning only for the spectral methods "
                           f"(tsv, iso_c, iso_cts), not for {method}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"unknown device {device!r} (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {device}: no CUDA GPU here "
                           "(torch.cuda.is_available() is false)")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInput(f"unsupported device {device!r} (cpu, cuda, cuda:N)")
    return dev


def scale_grid(grid: Any) -> list[float]:
    """The coefficient grid as a non-empty list of finite floats (:class:`InvalidInput` if
    empty, or for a value that is not a finite number)."""
    import math

    values = list(grid)
    if not values:
        raise InvalidInput("the coefficient grid is empty")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidInput(f"the coefficient grid holds {v!r}: every λ must be a finite "
                               "number") from None
        if isinstance(v, bool) or not math.isfinite(f):
            raise InvalidInput(f"the coefficient grid holds {v!r}: every λ must be a finite "
                               "number")
        out.append(f)
    return out


def search(make: Callable[[float], Any], evaluate: Callable[[Any], float],
           grid: list[float]) -> dict[str, Any]:
    """Evaluate ``make(λ)`` for each λ; the table and the best λ (highest score)."""
    rows = []
    for lam in grid:
        score = float(evaluate(make(lam)))
        rows.append({"lambda": lam, "score": score})
    best = max(rows, key=lambda r: r["score"])
    return {"rows": rows, "best_lambda": best["lambda"], "best_score": best["score"]}
