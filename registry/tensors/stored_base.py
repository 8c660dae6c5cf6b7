"""A stored base read like a checkpoint file: :class:`StoredBase` implements :class:`Checkpoint`
over a base's manifest, so ``apply`` (and anything else that reads checkpoints) reads a stored
base exactly as it reads a ``.safetensors`` file.

Opening costs one read of the base record and one of its manifest (no tensor data). Every
tensor read decodes blobs that are checked against their sha256 first, and, when the registry
was opened with ``check_tensors``, the decoded bytes against the manifest's sha256.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tvreg.tensors.checkpoints import Checkpoint, TensorInfo

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.format.bases import BaseRecord
    from tvreg.format.manifest import Manifest, TensorEntry


class StoredBase(Checkpoint):
    """The tensors of a stored base, decoded on demand (one at a time, nothing cached)."""

    def __init__(self, record: BaseRecord, manifest: Manifest, get: Callable[[str], bytes],
                 pool: ThreadPoolExecutor | None = None, *, check_tensors: bool = False,
                 label: str | None = None) -> None:
        super().__init__(label or f"stored base {record.base_hash[:12]}")
        self.record = record
        self.manifest = manifest
        self._entries = {t.name: t for t in manifest.tensors}
        self._get = get
        self._pool = pool
        self._check = check_tensors
        self._closed = False

    @property
    def base_hash(self) -> str:
        return self.record.base_hash

    def known_base_hash(self) -> str | None:
        # the manifest's base hash was computed from these tensors when the base was stored, and
        # the blobs' hashes pin their decoded bytes: no need to read them all again to know it
        return self.record.base_hash

    def names(self) -> list[str]:
        return list(self._entries)  # manifests list tensors sorted by name

    def info(self, name: str) -> TensorInfo:
        e = self._entry(name)
        return TensorInfo(name, e.source_dtype, tuple(e.shape))

    def entry(self, name: str) -> TensorEntry:
        """The manifest entry of ``name`` (its dtype, shape, chunks and sha256)."""
        return self._entry(name)

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``name`` (into ``out`` if given). A tensor of several chunks is decoded on
        the registry's "chunks" pool: call this from any thread but that pool's."""
        from tvreg.tensors.encoding import decode_tensor

        entry = self._entry(name)
        if out is not None and (out.device.type != "cpu" or not out.is_contiguous()):
            raise ValueError(f"cannot read {name!r} into a tensor on {out.device} "
                             "or not contiguous")
        return decode_tensor(entry, self._get, self._pool, out=out, check_tensor=self._check)

    def _entry(self, name: str) -> TensorEntry:
        if self._closed:
            raise self._error("checkpoint is closed")
        try:
            return self._entries[name]
        except KeyError:
            raise self._no_tensor(name) from None

    def close(self) -> None:
        self._closed = True
