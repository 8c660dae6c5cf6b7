"""Open model checkpoints and read them one tensor at a time.

Supported: a ``.safetensors`` file, a Hugging Face directory (``*.safetensors.index.json`` plus
shards, or a single ``*.safetensors`` file), and a PyTorch state dict (``.pt``/``.pth``/``.bin`` or
any zip-format ``torch.save`` file). PyTorch files are only ever loaded with ``weights_only=True``.
Every failure is a one-line :class:`CheckpointError` that starts with the path.
"""

from __future__ import annotations

import abc
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from tvreg.digest import parse_json
from tvreg.dtypes import ITEMSIZE as _ITEMSIZE
from tvreg.dtypes import SAFETENSORS_CODES, dtype_name
from tvreg.dtypes import torch_dtype as _torch_dtype
from tvreg.errors import CheckpointError, FormatError

__all__ = ["Checkpoint", "InMemoryCheckpoint", "TensorInfo", "open_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_INDEX_SUFFIX = ".safetensors.index.json"
_BIN_NAMES = ("pytorch_model.bin", "model.bin")
_DTYPE_OF_CODE = {code: name for name, code in SAFETENSORS_CODES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Name, tvreg dtype name and shape of one stored tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace and ANSI escapes so a message fits on one line."""
    flat = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Checkpoint(abc.ABC):
    """A read-only set of named tensors; use as a context manager to close it."""

    path: str

    def __init__(self, path: str) -> None:
        self.path = path

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Sorted tensor names."""

    @abc.abstractmethod
    def info(self, name: str) -> TensorInfo:
        """Dtype and shape of ``name``, without reading its data."""

    def infos(self) -> list[TensorInfo]:
        return [self.info(name) for name in self.names()]

    @abc.abstractmethod
    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name``: on CPU, contiguous, in its stored dtype, a private copy.

        With ``out`` (a contiguous CPU tensor of that dtype and number of elements) the data is
        read into it and a view of ``out`` returned: reusing one buffer saves the page faults
        of a fresh one."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release open files; the checkpoint is unusable afterwards."""

    def shared_names(self) -> dict[str, str]:
        """Tied tensors: ``{name: first_name}`` for each tensor that is the very same data as an
        earlier one (by sorted name): same storage, offset, shape, strides and dtype, as
        ``torch.save`` keeps Hugging Face's tied embeddings. Empty where tensors are read from
        a file one by one (safetensors stores no aliases)."""
        return {}

    def known_base_hash(self) -> str | None:
        """A base hash this checkpoint vouches for without its tensors being read (a stored
        base: the one it was stored under), or None: hash the tensors to know it."""
        return None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def _error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {message}")

    def _no_tensor(self, name: str) -> CheckpointError:
        return self._error(f"no tensor named {name!r}")


def _target(out: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """``out`` viewed with the shape of ``info``, if it can hold it."""
    if out.dtype != _torch_dtype(info.dtype) or out.numel() != info.numel \
            or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError(f"cannot read {info.name!r} ({info.dtype}, {info.numel} elements) into "
                         f"a {out.dtype} tensor of {out.numel()} elements on {out.device}")
    return out.view(info.shape)


# --- safetensors --------------------------------------------------------------------------------

#: bits per item of every dtype the safetensors format knows (tvreg reads those of
#: SAFETENSORS_CODES)
_SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
                     "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16,
                     "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
                     "I64": 64, "U64": 64}
_MAX_HEADER = 100_000_000  # what safetensors accepts


class _HeaderError(Exception):
    """Why a file is not a valid safetensors file."""


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < n:
        part = os.pread(fd, n - done, offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(fd: int) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor entries of a safetensors file's header and where its data starts, with the
    checks of the safetensors library (which validates by memory-mapping the whole file,
    private and writable: that counts the file's size against the process's RLIMIT_DATA, its
    address space and, under strict overcommit, the commit limit; this reads the header only).

    Checked: the header's length (at most 100 MB, within the file), strict JSON (an object;
    ``__metadata__`` maps strings to strings), each entry's known dtype, shape and offsets, each
    entry's byte size against its shape, and that the entries tile the data section exactly:
    sorted by offset, from 0, no gap, no overlap, up to the end of the file."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise _HeaderError("header too small")
    n = int.from_bytes(head, "little")
    if n > _MAX_HEADER:
        raise _HeaderError("header too large")
    if 8 + n > size:
        raise _HeaderError("invalid header length")
    try:
        header = parse_json(_pread_all(fd, n, 8))
    except ValueError as exc:
        raise _HeaderError(f"invalid JSON in header: {_one_line(exc, 120)}") from None
    if not isinstance(header, dict):
        raise _HeaderError("invalid JSON in header: not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise _HeaderError("invalid JSON in header: __metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise _HeaderError(f"invalid JSON in header: tensor {name!r} needs dtype, shape "
                               "and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _SAFETENSORS_BITS:
            raise _HeaderError(f"invalid JSON in header: tensor {name!r} has unknown dtype "
                               f"{str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(map(_is_count, shape)):
            raise _HeaderError(f"invalid JSON in header: tensor {name!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise _HeaderError(f"invalid JSON in header: tensor {name!r} has invalid offsets")
        bits, elements = _SAFETENSORS_BITS[dtype], 1
        for d in shape:
            elements *= d
            if elements * bits > 8 * size:  # larger than the file: no need to multiply on
                raise _HeaderError(f"overflow computing buffer size from shape and/or element "
                                   f"type of tensor {name!r}")
        if elements * bits % 8 or offsets[1] < offsets[0] \
                or offsets[1] - offsets[0] != elements * bits // 8:
            raise _HeaderError(f"invalid shape, data type, or offset for tensor {name!r}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _HeaderError(f"invalid offset for tensor {name!r}")
        end = stop
    if 8 + n + end != size:
        raise _HeaderError("incomplete metadata, file not fully covered")
    return header, 8 + n


def _tvreg_dtype(path: str, name: str, code: Any) -> str:
    try:
        return _DTYPE_OF_CODE[code]
    except KeyError:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code}") from None


class _SafetensorsFile:
    """One open safetensors file: its header read and checked (:func:`_read_header`, the
    safetensors library's rules, without mapping the file), each tensor read with ``pread``
    into its own buffer when asked for.

    Reading instead of memory-mapping keeps a process's memory at the tensors it holds: mapped
    file pages stay in its resident set until the file is closed, a whole model's worth after
    one pass over it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or _one_line(exc)}") \
                from exc
        try:
            self._entries, self._data_start = _read_header(self._fd)
        except _HeaderError as exc:
            os.close(self._fd)
            raise CheckpointError(f"{path}: not a valid safetensors file: {exc}") from None
        except BaseException:
            os.close(self._fd)
            raise
        self.keys = frozenset(self._entries)

    def info(self, name: str) -> TensorInfo:
        entry = self._entry(name)
        dtype = _tvreg_dtype(self.path, name, entry.get("dtype"))
        return TensorInfo(name, dtype, tuple(int(d) for d in entry.get("shape", ())))

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        info = self.info(name)  # rejects unsupported dtypes with a clear message
        begin, end = self._entry(name).get("data_offsets", (0, -1))
        nbytes = math.prod(info.shape) * _ITEMSIZE[info.dtype]
        if end - begin != nbytes:
            raise CheckpointError(f"{self.path}: cannot read tensor {name!r}: its offsets span "
                                  f"{end - begin} bytes, its shape needs {nbytes}")
        out = _target(out, info) if out is not None else \
            torch.empty(info.shape, dtype=_torch_dtype(info.dtype))
        buf = out.view(-1).view(torch.uint8).numpy().data if nbytes else memoryview(b"")
        done, offset = 0, self._data_start + begin
        while done < nbytes:
            n = os.preadv(self._fd, [buf[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(f"{self.path}: cannot read tensor {name!r}: the file ends "
                                      "before its data (truncated?)")
            done += n
        return out

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self._entries.get(name)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{self.path}: cannot read tensor {name!r}: not in its header")
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SafetensorsCheckpoint(Checkpoint):
    """A single ``.safetensors`` file."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._file: _SafetensorsFile | None = _SafetensorsFile(path)
        self._names = sorted(self._file.keys)
        if not self._names:
            self.close()
            raise self._error("empty checkpoint: no tensors")

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        return self._open_file(name).info(name)

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        return self._open_file(name).tensor(name, out)

    def _open_file(self, name: str) -> _SafetensorsFile:
        if self._file is None:
            raise self._error("checkpoint is closed")
        if name not in self._file.keys:
            raise self._no_tensor(name)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- Hugging Face sharded directory -------------------------------------------------------------


def _read_weight_map(index_path: str) -> dict[str, str]:
    """The ``weight_map`` of an index file, checked to be ``{str: str}``."""
    try:
        with open(index_path, "rb") as f:
            document = parse_json(f.read())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index_path}: unreadable index: {_one_line(exc)}") from exc
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: index has no 'weight_map' object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: shard of tensor {name!r} is not a string")
    return weight_map


def _check_shard_name(index_path: str, shard: str) -> None:
    """Allow only a plain file name inside the checkpoint directory."""
    plain = (
        shard not in ("", ".", "..")
        and "/" not in shard
        and "\\" not in shard
        and "\0" not in shard
        and not os.path.isabs(shard)
        and os.path.basename(shard) == shard
    )
    if not plain:
        raise CheckpointError(
            f"{index_path}: shard file name {shard!r} is not a plain file name in the directory"
        )


class ShardedCheckpoint(Checkpoint):
    """A directory with a ``*.safetensors.index.json`` and its shards, opened lazily."""

    def __init__(self, directory: str, index_name: str) -> None:
        super().__init__(directory)
        self.index_path = os.path.join(directory, index_name)
        self._weight_map = _read_weight_map(self.index_path)
        if not self._weight_map:
            raise self._error(f"empty checkpoint: {index_name} lists no tensors")
        for shard in sorted(set(self._weight_map.values())):
            _check_shard_name(self.index_path, shard)
            if not os.path.isfile(os.path.join(directory, shard)):
                raise CheckpointError(f"{self.index_path}: shard {shard!r} does not exist")
        self._names = sorted(self._weight_map)
        self._shards: dict[str, _SafetensorsFile] = {}
        self._closed = False

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        return self._shard_of(name).info(name)

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        return self._shard_of(name).tensor(name, out)

    def _shard_of(self, name: str) -> _SafetensorsFile:
        if self._closed:
            raise self._error("checkpoint is closed")
        shard = self._weight_map.get(name)
        if shard is None:
            raise self._no_tensor(name)
        if shard not in self._shards:
            self._shards[shard] = _SafetensorsFile(os.path.join(self.path, shard))
        file = self._shards[shard]
        if name not in file.keys:
            raise CheckpointError(
                f"{self.index_path}: tensor {name!r} is listed in the index "
                f"but missing from {shard}"
            )
        return file

    def close(self) -> None:
        self._closed = True
        shards, self._shards = self._shards, {}
        for file in shards.values():
            file.close()


# --- PyTorch state dicts ------------------------------------------------------------------------


_BOILERPLATE = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please file")


def _weights_only_reason(message: str) -> str:
    """The gist of torch's long "Weights only load failed" message."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else message).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    first = reasons[0] if reasons else "unknown reason"
    return _one_line(first.split(". ")[0].rstrip("."), limit=200)


def _torch_load(path: str, is_zip: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; mmap for zip files (legacy files cannot)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{path}: cannot load: {_one_line(exc)}") from exc
        raise CheckpointError(
            f"{path}: refusing to load: not loadable with weights_only=True "
            f"(pickled objects are never unpickled): {_weights_only_reason(str(exc))}"
        ) from exc
    except Exception as exc:  # RuntimeError (corrupt zip), EOFError, OSError, ...
        raise CheckpointError(f"{path}: cannot load: {_one_line(exc)}") from exc


def _state_dict(path: str, obj: Any) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict in a loaded object (top level or under ``"state_dict"``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise CheckpointError(f"{path}: not a state dict (top-level object is {kind})")
    if not obj:
        raise CheckpointError(f"{path}: empty checkpoint: no tensors")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: state dict entry {key!r} is {_a(type(value).__name__)}, not a tensor"
            )
        if value.layout != torch.strided or value.device.type != "cpu":
            raise CheckpointError(f"{path}: tensor {key!r} is not a dense CPU tensor")
    return obj


class StateDictCheckpoint(Checkpoint):
    """A ``torch.save``'d state dict, memory-mapped when the file format allows."""

    def __init__(self, path: str, is_zip: bool) -> None:
        super().__init__(path)
        self._tensors: dict[str, torch.Tensor] | None = _state_dict(path, _torch_load(path, is_zip))
        self._names = sorted(self._tensors)

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        t = self._get(name)
        try:
            dtype = dtype_name(t.dtype)
        except FormatError:
            raise self._error(f"tensor {name!r} has unsupported dtype {t.dtype}") from None
        return TensorInfo(name, dtype, tuple(t.shape))

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        info = self.info(name)
        # A private contiguous copy: never a view sharing storage with other entries.
        if out is not None:
            return _target(out, info).copy_(self._get(name).detach())
        return self._get(name).detach().clone(memory_format=torch.contiguous_format)

    def shared_names(self) -> dict[str, str]:
        if self._tensors is None:
            raise self._error("checkpoint is closed")
        return _aliases(self._tensors, self._names)

    def _get(self, name: str) -> torch.Tensor:
        if self._tensors is None:
            raise self._error("checkpoint is closed")
        try:
            return self._tensors[name]
        except KeyError:
            raise self._no_tensor(name) from None

    def close(self) -> None:
        self._tensors = None


def _aliases(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, str]:
    """``{name: first}`` for the tensors of ``names`` (sorted) that view exactly the data of an
    earlier one."""
    first: dict[tuple, str] = {}
    out = {}
    for name in names:
        t = tensors[name]
        if t.numel() == 0 or t.layout != torch.strided:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype,
               tuple(t.shape), t.stride())
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


# --- in-memory state dicts ----------------------------------------------------------------------


def _is_module(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module)


def is_in_memory(obj: Any) -> bool:
    """Whether ``obj`` is a state dict in memory (a mapping, or a ``torch.nn.Module``) rather
    than a path."""
    from collections.abc import Mapping

    return isinstance(obj, Mapping) or _is_module(obj)


def _as_tensor(label: str, key: str, value: Any) -> torch.Tensor:
    import numpy as np

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided or t.is_meta:
            raise CheckpointError(f"{label}: tensor {key!r} is not a dense tensor with data "
                                  f"({t.layout}, on {t.device})")
        return t
    if isinstance(value, np.ndarray):
        try:
            with warnings.catch_warnings():  # a read-only array: tvreg only ever copies it
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            if value.dtype.kind in "biuf":  # negative strides, or not in native byte order
                return torch.from_numpy(np.ascontiguousarray(
                    value, dtype=value.dtype.newbyteorder("=")))
            raise CheckpointError(f"{label}: array {key!r} has unsupported dtype "
                                  f"{value.dtype} ({_one_line(exc, 120)})") from None
    raise CheckpointError(f"{label}: value of {key!r} is {_a(type(value).__name__)}, not a "
                          "torch tensor or numpy array")


class InMemoryCheckpoint(Checkpoint):
    """A state dict in memory: a mapping of names to torch tensors or numpy arrays, or a
    ``torch.nn.Module`` (its ``state_dict()``). ``path`` is a label for messages ("base",
    "finetuned"). As everywhere, :meth:`tensor` returns a private copy: the caller's tensors are
    never handed out (tvreg subtracts in place)."""

    def __init__(self, source: Any, label: str = "state dict") -> None:
        super().__init__(label)
        from collections.abc import Mapping

        if _is_module(source):
            source = source.state_dict()
        if not isinstance(source, Mapping):
            raise CheckpointError(f"{label}: {_a(type(source).__name__)} is not a checkpoint "
                                  "(a path, a state dict or a torch.nn.Module)")
        tensors: dict[str, torch.Tensor] = {}
        for key, value in source.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{label}: key {_one_line(repr(key), 80)} is "
                                      f"{_a(type(key).__name__)}, not a string")
            t = _as_tensor(label, key, value)
            try:
                dtype_name(t.dtype)
            except FormatError:
                raise CheckpointError(f"{label}: tensor {key!r} has unsupported dtype "
                                      f"{t.dtype}") from None
            tensors[key] = t
        if not tensors:
            raise CheckpointError(f"{label}: empty checkpoint: no tensors")
        self._tensors: dict[str, torch.Tensor] | None = tensors
        self._names = sorted(tensors)

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        t = self._get(name)
        return TensorInfo(name, dtype_name(t.dtype), tuple(t.shape))

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        t = self._get(name)
        if out is not None:
            return _target(out, self.info(name)).copy_(t)
        if t.device.type != "cpu":
            return t.to("cpu", copy=True).contiguous()
        return t.clone(memory_format=torch.contiguous_format)

    def shared_names(self) -> dict[str, str]:
        return _aliases(self._get_all(), self._names)

    def _get_all(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            raise self._error("checkpoint is closed")
        return self._tensors

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self._get_all()[name]
        except KeyError:
            raise self._no_tensor(name) from None

    def close(self) -> None:
        self._tensors = None


# --- opening ------------------------------------------------------------------------------------


def _read_head(path: str, size: int = 9) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or _one_line(exc)}") from exc


def _looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte little-endian header length followed by ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _open_file(path: str) -> Checkpoint:
    head = _read_head(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return SafetensorsCheckpoint(path)
    is_zip = head.startswith(_ZIP_MAGIC)
    if suffix in _TORCH_SUFFIXES or is_zip:
        return StateDictCheckpoint(path, is_zip)
    if _looks_like_safetensors(head):
        return SafetensorsCheckpoint(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected .safetensors, a Hugging Face directory, "
        "or a PyTorch .pt/.pth/.bin state dict)"
    )


def _open_directory(directory: str) -> Checkpoint:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        reason = exc.strerror or _one_line(exc)
        raise CheckpointError(f"{directory}: cannot read: {reason}") from exc
    indexes = [e for e in entries if e.endswith(_INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise CheckpointError(f"{directory}: several index files ({', '.join(indexes)}); open one")
    if indexes:
        return ShardedCheckpoint(directory, indexes[0])
    files = [e for e in entries if e.endswith(".safetensors")]
    if len(files) == 1:
        return SafetensorsCheckpoint(os.path.join(directory, files[0]))
    if files:
        raise CheckpointError(
            f"{directory}: several .safetensors files ({len(files)}) and no "
            f"*{_INDEX_SUFFIX} saying how they fit together"
        )
    # A folder holding only a PyTorch state dict, as older Hugging Face repositories ship it.
    for name in _BIN_NAMES:
        if name in entries and os.path.isfile(os.path.join(directory, name)):
            return _open_file(os.path.join(directory, name))
    raise CheckpointError(
        f"{directory}: no .safetensors file, *{_INDEX_SUFFIX}, pytorch_model.bin or model.bin "
        "in directory"
    )


def open_checkpoint(path: Any, *, label: str | None = None) -> Checkpoint:
    """Open a checkpoint file or Hugging Face directory, or wrap a state dict in memory (a
    mapping of names to torch tensors or numpy arrays, or a ``torch.nn.Module``; ``label``
    names it in messages); raises :class:`CheckpointError`."""
    if is_in_memory(path):
        return _checked(InMemoryCheckpoint(path, label or "state dict"))
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"{label or 'checkpoint'}: {_a(type(path).__name__)} is not a "
                              "checkpoint (a path, a state dict or a torch.nn.Module)")
    path = os.fspath(path)
    if os.path.isdir(path):
        return _checked(_open_directory(path))
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if path.endswith(_INDEX_SUFFIX) and os.path.isfile(path):
        # The index file itself names the sharded checkpoint it belongs to (issue 14 item 9).
        directory = os.path.dirname(os.path.abspath(path))
        return _checked(ShardedCheckpoint(directory, os.path.basename(path)))
    return _checked(_open_file(path))


def _checked(ckpt: Checkpoint) -> Checkpoint:
    """Refuse what no manifest can hold (docs/format.md §6): a tensor with an empty name."""
    if "" in ckpt.names():
        ckpt.close()
        raise CheckpointError(f"{ckpt.path}: a tensor has an empty name; tvreg cannot store it")
    return ckpt


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an int", "a list"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
