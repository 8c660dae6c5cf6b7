"""A streaming safetensors writer that holds at most one tensor in memory.

The header is computed from the specs and written first; tensor data then follows in spec order.
safetensors requires the tensors' byte ranges to tile the data section exactly (sorted by offset,
the first at 0, no gaps, the last ending at end of file), which writing back to back in spec order
gives; it does not require per-tensor alignment. Every file's metadata carries ``"format": "pt"``,
as torch's and transformers' writers do (transformers refuses a file without it). The header is
padded with spaces to a multiple of 8 bytes so that the data section starts 8-aligned, as
``safetensors.torch.save_file`` does.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

import torch

from tvreg.dtypes import SAFETENSORS_CODES, dtype_name, itemsize
from tvreg.errors import FormatError, RegistryError
from tvreg.util.fsio import fsync_dir

__all__ = ["write_safetensors"]

Spec = tuple[str, str, tuple[int, ...]]

_MAX_HEADER = 100_000_000  # safetensors refuses larger headers


def _header(specs: Sequence[Spec], metadata: dict[str, str] | None) -> bytes:
    """The padded JSON header for ``specs`` laid out back to back in order."""
    header: dict[str, object] = {}
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise RegistryError("safetensors metadata must map str to str")
    # torch's and transformers' writers mark their files "format": "pt"; transformers refuses a
    # file without it, so every file tvreg writes carries it (issue 14, item 4).
    metadata["format"] = "pt"
    header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        if not isinstance(name, str) or name == "__metadata__" or name in header:
            raise RegistryError(f"invalid or duplicate tensor name {name!r} in safetensors specs")
        if dtype not in SAFETENSORS_CODES or any(not isinstance(d, int) or d < 0 for d in shape):
            raise RegistryError(f"invalid spec for tensor {name!r}: dtype {dtype}, shape {shape}")
        size = itemsize(dtype)
        for d in shape:
            size *= d
        header[name] = {
            "dtype": SAFETENSORS_CODES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > _MAX_HEADER:
        raise RegistryError(f"safetensors header too large ({len(raw)} bytes)")
    return raw


def _check(spec: Spec, name: str, tensor: torch.Tensor) -> None:
    """Raise unless ``(name, tensor)`` is what ``spec`` announced."""
    want_name, want_dtype, want_shape = spec
    try:
        got_dtype = dtype_name(tensor.dtype)
    except FormatError:
        got_dtype = str(tensor.dtype)
    got = (name, got_dtype, tuple(tensor.shape))
    if got != (want_name, want_dtype, tuple(want_shape)) or tensor.layout != torch.strided:
        raise RegistryError(
            f"tensor mismatch: expected {want_name!r} {want_dtype} {tuple(want_shape)}, "
            f"got {name!r} {got_dtype} {tuple(tensor.shape)}"
        )


def _write_tensor(f: BinaryIO, tensor: torch.Tensor) -> int:
    """Write the raw little-endian bytes of ``tensor``; return how many."""
    flat = tensor.detach().to("cpu").resolve_neg().resolve_conj().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy()
    f.write(data.data)
    return data.nbytes


class _Progress(Protocol):
    def advance(self, n: int) -> None: ...


def _write_data(f: BinaryIO, specs: Sequence[Spec], tensors: Iterator[tuple[str, torch.Tensor]],
                progress: _Progress | None = None) -> int:
    total = 0
    for i, spec in enumerate(specs):
        item = next(tensors, None)
        if item is None:
            raise RegistryError(f"got {i} tensors, expected {len(specs)} (missing {spec[0]!r})")
        name, tensor = item
        _check(spec, name, tensor)
        n = _write_tensor(f, tensor)
        total += n
        if progress is not None:
            progress.advance(n)
    if next(tensors, None) is not None:
        raise RegistryError(f"got more tensors than the {len(specs)} announced")
    return total


def write_safetensors(
    path: str | os.PathLike[str],
    specs: Sequence[Spec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
    progress: str | None = None,
) -> int:
    """Stream ``tensors`` (matching ``specs`` in order) to ``path`` atomically; return its size.
    ``path`` ``"-"`` writes to standard output. ``progress``: the caption of a progress bar
    (tensors done / total, bytes), drawn on stderr when it is a terminal."""
    if sys.byteorder != "little":
        raise RegistryError("writing safetensors needs a little-endian machine")
    path = os.fspath(path)
    specs = list(specs)
    header = _header(specs, metadata)
    bar = None
    if progress is not None:
        from tvreg.util.progress import Transfer

        bar = Transfer(progress, unit="tensors")
        bar.start(len(specs), sum(spec_nbytes(spec) for spec in specs))
    try:
        return _write(path, specs, header, tensors, bar)
    finally:
        if bar is not None:
            bar.close()


def spec_nbytes(spec: Spec) -> int:
    """The bytes of the tensor a spec describes."""
    size = itemsize(spec[1])
    for d in spec[2]:
        size *= d
    return size


def _write(path: str, specs: list[Spec], header: bytes, tensors: Iterable,
           bar: _Progress | None) -> int:
    if path == "-":  # standard output: no temporary file, no rename
        out = sys.stdout.buffer
        out.write(len(header).to_bytes(8, "little"))
        out.write(header)
        written = 8 + len(header) + _write_data(out, specs, iter(tensors), bar)
        out.flush()
        return written
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        f = open(tmp, "xb")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot write: {exc}") from exc
    try:
        with f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            written = 8 + len(header) + _write_data(f, specs, iter(tensors), bar)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise RegistryError(f"{path}: cannot write: {exc}") from exc
        raise
    fsync_dir(directory)
    return written
