"""JSON text of what tvreg's commands return, one spelling for every interface (``--json`` on the
command line, ``/api/`` of ``tvreg serve``): datetimes in ISO 8601 (naive ones are UTC, written
with ``Z``), bytes in hex, numpy scalars as numbers, NaN and infinities as null."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any


def json_default(v: Any) -> Any:
    """The JSON spelling of a value json cannot write itself (the module's doc)."""
    if isinstance(v, _dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if v.tzinfo is None else v.isoformat()
    if isinstance(v, (_dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "item"):          # numpy scalars
        return v.item()
    return str(v)


def finite(v: Any) -> Any:
    """NaN and infinities have no JSON spelling: they become null (in nested dicts and lists
    too)."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as JSON text (see the module's doc for the spellings)."""
    return json.dumps(finite(obj), default=json_default, indent=indent, allow_nan=False)


def plain(v: Any) -> Any:
    """A value as :func:`dumps` would spell it, but as a Python value (a cell of a CSV file, say):
    datetimes as ISO text, NaN as None; lists and dicts left as they are."""
    if isinstance(v, float):
        return finite(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time, bytes)) or hasattr(v, "item"):
        return json_default(v)
    return v
