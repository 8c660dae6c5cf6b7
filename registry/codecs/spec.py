"""``--codec`` spec strings: which lossy codec a vector is stored with, and its parameters.

Grammar (docs/cli.md)::

    spec   = codec [ ":" param *( "," param ) ]
    codec  = "bf16" | "fp16" | "int8" | "topk" | "ternary" | "svd"
    param  = key "=" value

``topk`` and ``ternary`` take ``density=D`` (0 < D ≤ 1); ``svd`` takes exactly one of
``rank=R`` (an integer ≥ 1) and ``energy=E`` (0 < E ≤ 1); the others take nothing. Anything
else is :class:`InvalidInput`. :func:`parse` returns a :class:`LossySpec` whose ``str`` is the
canonical spelling (numbers as Python writes them: ``density=0.1``, ``energy=0.9``), which is
what records keep.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from tvreg.errors import InvalidInput

#: codec -> its parameters (one of each group; groups: all required)
PARAMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "bf16": (), "fp16": (), "int8": (),
    "topk": (("density",),), "ternary": (("density",),),
    "svd": (("rank", "energy"),),
}
_KEY = re.compile(r"[a-z_]+")


@dataclass(frozen=True)
class LossySpec:
    """A parsed ``--codec`` spec: the codec's name and the parameters it takes (``None`` for
    the others)."""

    codec: str
    density: float | None = None
    rank: int | None = None
    energy: float | None = None

    def __str__(self) -> str:
        params = [f"{k}={getattr(self, k)!r}" for k in ("density", "rank", "energy")
                  if getattr(self, k) is not None]
        return self.codec + (":" + ",".join(params) if params else "")

    def keep(self, n: int) -> int:
        """``k = ceil(density · n)``, exact: the density is taken as the decimal it is written
        as (``0.1`` is 1/10, not the nearest binary float)."""
        assert self.density is not None
        return math.ceil(Fraction(repr(self.density)) * n)


def _number(codec: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        raise InvalidInput(f"--codec {codec}: {key} must be a number in (0, 1], got {text!r}")
    return value


def parse(text: str) -> LossySpec:
    """A :class:`LossySpec` from a spec string, or :class:`InvalidInput` saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("empty --codec: give one of " + ", ".join(sorted(PARAMS)))
    codec, sep, rest = text.strip().partition(":")
    if codec not in PARAMS:
        raise InvalidInput(f"unknown codec {codec!r} (known: {', '.join(sorted(PARAMS))})")
    known = [k for group in PARAMS[codec] for k in group]
    given: dict[str, str] = {}
    for item in rest.split(",") if sep else []:
        key, eq, value = item.strip().partition("=")
        if not eq or not _KEY.fullmatch(key) or not value.strip():
            raise InvalidInput(f"--codec {codec}: expected KEY=VALUE, got {item.strip()!r}")
        if key not in known:
            takes = f"it takes {' or '.join(known)}" if known else "it takes no parameters"
            raise InvalidInput(f"codec {codec} has no parameter {key!r} ({takes})")
        if key in given:
            raise InvalidInput(f"--codec {codec}: {key} given twice")
        given[key] = value.strip()
    for group in PARAMS[codec]:
        present = [k for k in group if k in given]
        if len(present) != 1:
            choice = "=…, ".join(group) + "=…"
            raise InvalidInput(f"codec {codec} needs {'exactly one of ' if len(group) > 1 else ''}"
                               f"{choice}" + (f", got {len(present)}" if present else ""))
    rank: int | None = None
    numbers: dict[str, float] = {}
    for key, value in given.items():
        if key == "rank":
            if not value.isdigit() or int(value) < 1:
                raise InvalidInput(f"--codec {codec}: rank must be an integer >= 1, got {value!r}")
            rank = int(value)
        else:
            numbers[key] = _number(codec, key, value)
    return LossySpec(codec, density=numbers.get("density"), rank=rank,
                     energy=numbers.get("energy"))
