"""Names of tensor dtypes as tvreg writes them (torch's names without the ``torch.`` prefix).

The on-disk format names dtypes by these strings (``float32``, ``bfloat16``, ``int64``, …);
:data:`SAFETENSORS_CODES` maps them to the codes of the safetensors header (``F32``, ``BF16``, …).
"""

from __future__ import annotations

import torch

from .errors import FormatError

_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
for _name in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        _DTYPES[_name] = getattr(torch, _name)

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


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise FormatError(f"unsupported tensor dtype {name}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32``; unknown names raise :class:`FormatError`."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}") from None


def is_floating(name: str) -> bool:
    return name in FLOATING


def itemsize(name: str) -> int:
    return torch.empty((), dtype=torch_dtype(name)).element_size()


def delta_dtype(source: str) -> str:
    """The dtype a task vector is computed and stored in for a tensor of dtype ``source``.

    float64 stays float64 (fp32 would lose precision); every other floating dtype is widened to
    float32, which holds the difference of two fp16/bf16 values exactly in all practical cases.
    """
    return "float64" if source == "float64" else "float32"
