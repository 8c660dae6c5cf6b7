"""A stored task vector: its manifest, its version record (if resolved by name) and lazy tensors."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from tvreg.format.manifest import Manifest, TensorEntry
from tvreg.format.records import VersionRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch


class TensorSource(Protocol):
    """What a :class:`TaskVector` needs of its registry: decoded tensors and a thread pool."""

    def load_tensor(self, entry: TensorEntry, out: torch.Tensor | None = None
                    ) -> torch.Tensor: ...

    def executor(self, kind: str) -> ThreadPoolExecutor: ...


def to_device(t: torch.Tensor, device: str | torch.device | None,
              dtype: torch.dtype | None) -> torch.Tensor:
    """Cast on the host, then copy; CUDA copies go through pinned memory without blocking."""
    import torch

    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class TensorMap(Mapping):
    """Read-only mapping name -> tensor that decodes (and verifies) each tensor when asked.

    Nothing is cached: iterating over ``items()`` holds one tensor at a time.
    """

    def __init__(self, entries: tuple[TensorEntry, ...],
                 load: Callable[[TensorEntry], torch.Tensor],
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        self._entries = {e.name: e for e in entries}
        self._load, self._device, self._dtype = load, device, dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        return to_device(self._load(self._entries[name]), self._device, self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<TensorMap of {len(self)} tensors>"


class TaskVector:
    """A stored task vector: its manifest and record; tensors are decoded lazily (and checked) when
    asked for."""

    def __init__(self, registry: TensorSource, manifest: Manifest, record: VersionRecord | None,
                 vector_id: str) -> None:
        self._registry = registry
        self.manifest = manifest
        self.record = record
        self.vector_id = vector_id

    @property
    def name(self) -> str | None:
        return self.record.name if self.record else None

    @property
    def version(self) -> int | None:
        return self.record.version if self.record else None

    @property
    def ref(self) -> str:
        return self.record.ref if self.record else self.vector_id[:12]

    @property
    def metadata(self) -> dict[str, Any]:
        """task, dataset, lr, steps, meta, created_at, parents and recipe of the version."""
        if self.record is None:
            return {}
        r = self.record
        return {**r.metadata.to_json(), "created_at": r.created_at, "parents": list(r.parents),
                "recipe": r.recipe}

    @property
    def base_hash(self) -> str:
        return self.manifest.base_hash

    @property
    def arch_fingerprint(self) -> str:
        return self.manifest.arch_fingerprint

    @property
    def n_params(self) -> int:
        return self.manifest.n_params

    def names(self) -> list[str]:
        return [t.name for t in self.manifest.tensors]

    def tensor(self, name: str, device: Any = None, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
        return to_device(self._registry.load_tensor(self.manifest.tensor(name)), device, dtype)

    def tensors(self, device: Any = None, dtype: torch.dtype | None = None) -> TensorMap:
        """Lazy mapping of the delta tensors, decoded and verified on access."""
        return TensorMap(self.manifest.tensors, self._registry.load_tensor, device, dtype)

    def iter_tensors(self, device: Any = None, dtype: torch.dtype | None = None,
                     prefetch: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` in manifest order, decoding up to ``prefetch`` tensors ahead on a
        background thread while the caller works on the current one (at most ``prefetch + 1``
        decoded tensors in memory)."""
        if prefetch < 1:
            for entry in self.manifest.tensors:
                yield entry.name, to_device(self._registry.load_tensor(entry), device, dtype)
            return
        entries = list(self.manifest.tensors)
        with ThreadPoolExecutor(1, thread_name_prefix="tvreg-prefetch") as ahead:
            queue = deque(ahead.submit(self._registry.load_tensor, e)
                          for e in entries[:prefetch])
            for i, entry in enumerate(entries):
                tensor = queue.popleft().result()
                if i + prefetch < len(entries):
                    queue.append(ahead.submit(self._registry.load_tensor, entries[i + prefetch]))
                yield entry.name, to_device(tensor, device, dtype)
                del tensor

    def state_dict(self, device: Any = None, dtype: torch.dtype | None = None
                   ) -> dict[str, torch.Tensor]:
        """All delta tensors in memory at once (use :meth:`tensors` to stream). The tensors are
        decoded on the registry's threads, several at once, and moved in manifest order."""
        import torch

        entries = self.manifest.tensors
        pool = self._registry.executor("operands")  # waits only on "chunks": cannot deadlock
        futures = [pool.submit(self._registry.load_tensor, e) for e in entries]
        try:
            out = {e.name: to_device(f.result(), device, dtype)
                   for e, f in zip(entries, futures, strict=True)}
        finally:
            for f in futures:
                f.cancel()
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.current_stream(torch.device(device)).synchronize()
        return out

    def __repr__(self) -> str:
        return (f"<TaskVector {self.ref} id={self.vector_id[:12]} "
                f"tensors={len(self.manifest.tensors)} "
                f"params={self.n_params}>")

