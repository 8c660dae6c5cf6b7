"""An operand that is a (base, fine-tuned) checkpoint pair, never stored.

:class:`CheckpointVector` stands where a composition expects a stored vector's
:class:`~tvreg.tensors.taskvector.TaskVector`: a manifest (names, shapes, dtypes, the base hash
and architecture fingerprint, computed as ``tvreg create`` computes them) and ``load_entry``,
which reads one tensor of each checkpoint and returns their difference (float32, float64 for
float64 tensors). Nothing is written anywhere; memory holds the tensors of the names in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvreg import dtypes
from tvreg.format.manifest import Manifest, SkippedTensor, TensorEntry

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.tensors.checkpoints import Checkpoint


def checkpoint_base_hash(ck: Checkpoint) -> str:
    """The base hash of a checkpoint (as ``apply`` and ``create`` compute it)."""
    from tvreg.digest import BaseHasher, tensor_bytes

    known = ck.known_base_hash()
    if known is not None:
        return known
    hasher = BaseHasher()
    for info in ck.infos():
        if dtypes.is_floating(info.dtype):
            hasher.update(info.name, info.dtype, info.shape, tensor_bytes(ck.tensor(info.name)))
    return hasher.hexdigest()


class CheckpointVector:
    """τ = θ_finetuned − θ_base of two open checkpoints, computed tensor by tensor when read."""

    record = None
    vector_id = None

    def __init__(self, base: Checkpoint, finetuned: Checkpoint, ref: str, base_hash: str) -> None:
        from tvreg.codecs.base import CodecPipeline
        from tvreg.digest import arch_fingerprint
        from tvreg.tensors.build import plan_pair

        plan_pair(base, finetuned)  # same names and shapes (IncompatibleCheckpoints if not)
        self.base, self.finetuned, self.ref = base, finetuned, ref
        infos = base.infos()
        entries, skipped = [], []
        for i in infos:
            if dtypes.is_floating(i.dtype):
                work = "float64" if i.dtype == "float64" else "float32"
                entries.append(TensorEntry(i.name, work, i.dtype, tuple(i.shape),
                                           CodecPipeline(()), (), ""))
            else:
                skipped.append(SkippedTensor(i.name, i.dtype, tuple(i.shape)))
        fingerprint = arch_fingerprint((i.name, i.dtype, i.shape) for i in infos)
        self.manifest = Manifest(base_hash, fingerprint, tuple(entries), tuple(skipped))

    @property
    def base_hash(self) -> str:
        """The base checkpoint's hash."""
        return self.manifest.base_hash

    @property
    def arch_fingerprint(self) -> str:
        """The architecture fingerprint of the pair."""
        return self.manifest.arch_fingerprint

    def load_entry(self, entry: TensorEntry, out: Any = None) -> torch.Tensor:
        """The delta of one tensor (``out`` is ignored: a new tensor)."""
        work = dtypes.torch_dtype(entry.dtype)
        delta = self.finetuned.tensor(entry.name).to(work)
        delta.sub_(self.base.tensor(entry.name).to(work))
        return delta

    def tensor(self, name: str) -> torch.Tensor:
        """The delta of tensor ``name``."""
        return self.load_entry(self.manifest.tensor(name))
