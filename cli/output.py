"""Rendering: JSON for scripts, aligned tables for people. Data goes to stdout, messages to
stderr."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import click

from tvreg.util.jsonable import dumps, json_default
from tvreg.util.sizes import human_bytes


def emit_json(obj: Any) -> None:
    click.echo(dumps(obj))


def message(text: str) -> None:
    click.echo(text, err=True)


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, _dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=json_default, sort_keys=True)
    return str(v)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    click.echo(line(columns))
    for r in text:
        click.echo(line(r))


@contextlib.contextmanager
def warnings_to_stderr():
    """Warnings raised inside print as one `tvreg: warning: …` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                message(f"tvreg: warning: {w.message}")


def ratio(raw: int, stored: int) -> str:
    """``raw / stored`` as ``1.23x`` (empty for nothing stored)."""
    return f"{raw / stored:.2f}x" if stored else ""


def shown_fields(info: dict[str, Any]) -> dict[str, Any]:
    """The FIELD/VALUE rows of a ``show``: every key but ``tensors``, sizes spelled out."""
    listed = {k: v for k, v in info.items() if k != "tensors"}
    listed["raw_bytes"] = f"{info['raw_bytes']:,} ({human_bytes(info['raw_bytes'])})"
    listed["stored_bytes"] = (f"{info['stored_bytes']:,} ({human_bytes(info['stored_bytes'])}, "
                              f"{ratio(info['raw_bytes'], info['stored_bytes'])})")
    return listed


def check_stdout_output(output: str | None, *, taken_by: str | None = None) -> None:
    """``-o -`` writes the safetensors bytes to stdout: refused (exit 2) when stdout is a
    terminal, or already taken by another output (``taken_by``: e.g. ``--json``)."""
    import sys

    from tvreg.errors import InvalidInput

    if output != "-":
        return
    if taken_by:
        raise InvalidInput(f"-o - writes the file to stdout, which {taken_by} also uses; "
                           "give -o FILE")
    if sys.stdout.isatty():
        raise InvalidInput("-o - writes binary safetensors to stdout, which is a terminal; "
                           "redirect it (-o - > F.safetensors) or give -o FILE")
