"""The codec contract, the registry of codec names, and pipelines."""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar, Protocol, cast

import numpy as np

from tvreg.errors import FormatError

_CODECS: dict[str, type[Codec]] = {}


class Codec(abc.ABC):
    """A bytes -> bytes step. Subclasses are frozen dataclasses whose fields are the
    configuration."""

    #: set by the dataclass decorator on every subclass (what ``dataclasses.asdict`` needs)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    name: ClassVar[str]
    #: whether decode(encode(x)) == x bit for bit
    lossless: ClassVar[bool] = True
    #: whether the encoding has the size of the input when the step is not the last
    keeps_size: ClassVar[bool] = True
    #: whether ``encode`` and ``decode_into`` take a ``pool`` to spread one chunk over threads
    parallel: ClassVar[bool] = False
    #: whether the step may only end a pipeline (its encoded size is known only from its output)
    last_only: ClassVar[bool] = False

    @abc.abstractmethod
    def encode(self, data: bytes | memoryview) -> bytes:
        """Encode ``data``; :meth:`decode` with its size gives it back (exactly if lossless)."""

    @abc.abstractmethod
    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes:
        """Decode to exactly ``nbytes`` bytes (the size before this step encoded it)."""

    def label(self) -> str:
        """Short human name used in listings, e.g. ``zstd3``."""
        return self.name

    def encoded_nbytes(self, nbytes: int) -> int:
        """Size of the encoding of ``nbytes`` bytes, for steps that are not the last of a
        pipeline (those must know it: the last one, an entropy coder, need not). Most steps
        keep the size; a step that changes it (``lowrank``) says so here."""
        return nbytes

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., "configuration": {field: value}}``, what :func:`codec_from_spec`
        reads back."""
        return {"name": self.name, "configuration": dataclasses.asdict(self)}


class _ParallelCodec(Protocol):
    """A codec with ``parallel`` set: its ``encode`` also takes a pool."""

    def encode(self, data: bytes | memoryview, pool: Executor) -> bytes: ...


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` known to :func:`codec_from_spec` by its ``name``."""
    _CODECS[cls.name] = cls
    return cls


def codec_from_spec(spec: Any) -> Codec:
    """The codec a spec (:meth:`Codec.spec`) describes; a malformed or unknown one is
    :class:`FormatError`."""
    if not isinstance(spec, dict) or set(spec) != {"name", "configuration"} \
            or not isinstance(spec["name"], str):
        raise FormatError(f"malformed codec spec {spec!r}")
    cls = _CODECS.get(spec["name"])
    if cls is None:
        raise FormatError(f"unknown codec {spec['name']!r} (known: {', '.join(sorted(_CODECS))})")
    conf = spec["configuration"]
    if not isinstance(conf, dict):
        raise FormatError(f"malformed configuration of codec {spec['name']!r}")
    try:
        return cls(**conf)
    except (TypeError, ValueError) as e:
        raise FormatError(f"bad configuration of codec {spec['name']!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class CodecPipeline:
    """The codecs a tensor's chunks go through, in encoding order."""

    codecs: tuple[Codec, ...]

    @classmethod
    def from_specs(cls, specs: Sequence[Any]) -> CodecPipeline:
        """The pipeline a list of codec specs describes (:class:`FormatError` if malformed)."""
        if not isinstance(specs, (list, tuple)) or not specs:
            raise FormatError("a tensor needs a non-empty codec list")
        codecs = tuple(codec_from_spec(s) for s in specs)
        for c in codecs[:-1]:
            if c.last_only:
                raise FormatError(f"codec {c.name!r} must be the last of a pipeline")
        return cls(codecs)

    def specs(self) -> list[dict[str, Any]]:
        """The specs of the codecs, in order (what :meth:`from_specs` reads back)."""
        return [c.spec() for c in self.codecs]

    @property
    def label(self) -> str:
        """Short human name, e.g. ``bytegroup4+zstd3``."""
        return "+".join(c.label() for c in self.codecs)

    @property
    def lossless(self) -> bool:
        """Whether every step is lossless."""
        return all(c.lossless for c in self.codecs)

    def encode(self, data: bytes | memoryview, pool: Executor | None = None) -> bytes:
        """Encode one chunk; steps that can split it (``bgzstd``) also use ``pool``'s threads,
        with the same output whatever the number of threads."""
        out: bytes | memoryview = data
        for c in self.codecs:
            if c.parallel and pool is not None:
                out = cast(_ParallelCodec, c).encode(out, pool)
            else:
                out = c.encode(out)
        return bytes(out)

    def sizes(self, nbytes: int) -> list[int]:
        """The size of the data entering each step when ``nbytes`` bytes are encoded."""
        out = [nbytes]
        for c in self.codecs[:-1]:
            out.append(c.encoded_nbytes(out[-1]))
        return out

    @property
    def keeps_size(self) -> bool:
        """Whether every step but the last keeps the size of its input."""
        return all(c.keeps_size for c in self.codecs[:-1])

    def decode(self, data: bytes, nbytes: int) -> bytes:
        """Step i decodes to the size that entered it (:meth:`sizes`)."""
        sizes = self.sizes(nbytes)
        out: bytes | memoryview = data
        for c, size in zip(reversed(self.codecs), reversed(sizes), strict=True):
            out = c.decode(out, size)
        return out if isinstance(out, bytes) else bytes(out)

    def decode_into(self, data: bytes, dest: np.ndarray, pool: Executor | None = None) -> None:
        """Decode into ``dest`` (a writable uint8 array of the decoded size). Steps that can
        write into a buffer do: the last step (zstd) into this thread's scratch buffer, the first
        (byte grouping) from there into ``dest``; a one-step pipeline straight into ``dest``
        (``bgzstd`` with ``pool``'s threads helping). A pipeline with a size-changing step
        decodes whole, then copies."""
        steps = self.codecs
        if not self.keeps_size:
            dest[:] = np.frombuffer(self.decode(data, dest.size), dtype=np.uint8)
            return
        if len(steps) == 1 and hasattr(steps[0], "decode_into"):
            if steps[0].parallel and pool is not None:
                steps[0].decode_into(data, dest, pool)
            else:
                steps[0].decode_into(data, dest)
            return
        # a uint8 array is passed on as it is: every codec reads its input through the buffer
        # protocol (np.frombuffer, zstandard), so it takes one where it says bytes | memoryview
        out: bytes | memoryview = data
        for i in range(len(steps) - 1, 0, -1):
            c = steps[i]
            if hasattr(c, "decode_into") and i == len(steps) - 1:
                buf = scratch(dest.size)
                c.decode_into(out, buf)
                out = cast(memoryview, buf)
            else:
                out = c.decode(out, dest.size)
        first = steps[0]
        if hasattr(first, "decode_into"):
            first.decode_into(out, dest)
        else:
            dest[:] = np.frombuffer(first.decode(out, dest.size), dtype=np.uint8)


_local = threading.local()
#: scratch buffers up to this size are kept per thread and reused; larger ones are not kept
SCRATCH_KEEP = 16 << 20


def scratch(nbytes: int, slot: str = "pipeline") -> np.ndarray:
    """A uint8 buffer of ``nbytes`` private to the calling thread, valid until its next call
    with the same ``slot`` (one slot per user, so two users on one thread do not share)."""
    if nbytes > SCRATCH_KEEP:
        return np.empty(nbytes, dtype=np.uint8)
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buf[:nbytes]
