"""Names of tensor dtypes as tvreg writes them (torch's names without the ``torch.`` prefix).

The on-disk format names dtypes by these strings (``float32``, ``bfloat16``, ``int64``, …);
:data:`SAFETENSORS_CODES` maps them to the codes of the safetensors header (``F32``, ``BF16``, …).
This module imports torch only when a torch dtype is asked for, so commands that only read the
catalog start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvreg.errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: item size in bytes of every dtype the format knows
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
}

SAFETENSORS_CODES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
}

FLOATING = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"})


def check(name: str) -> str:
    """``name`` if the format knows it, else :class:`FormatError` (no torch needed)."""
    if not isinstance(name, str) or name not in ITEMSIZE:
        raise FormatError(f"unknown dtype {name!r}")
    return name


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    name = str(dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise FormatError(f"unsupported tensor dtype {name}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32``; unknown names raise :class:`FormatError`."""
    import torch

    dtype = getattr(torch, check(name), None)
    if dtype is None:  # a dtype this torch build lacks (e.g. uint16 before torch 2.3)
        raise FormatError(f"dtype {name!r} is not supported by torch {torch.__version__}")
    return dtype


def is_floating(name: str) -> bool:
    return name in FLOATING


def itemsize(name: str) -> int:
    return ITEMSIZE[check(name)]


def delta_dtype(source: str) -> str:
    """The dtype a task vector is computed and stored in for a tensor of dtype ``source``.

    float64 stays float64 (fp32 would lose precision); every other floating dtype is widened to
    float32, which holds the difference of two fp16/bf16 values exactly in all practical cases.
    """
    return work_dtype(source, source)


def work_dtype(base: str, finetuned: str) -> str:
    """The dtype τ = θ_ft − θ_base is computed and stored in for floating tensors of dtypes
    ``base`` and ``finetuned`` (equal, or not: an fp32 base with a bf16 fine-tune): float64 if
    either is float64, else float32. Both sides are converted to it, then subtracted."""
    return "float64" if "float64" in (base, finetuned) else "float32"
