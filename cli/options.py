"""Option decorators and parsers shared by commands."""

from __future__ import annotations

from typing import Any

import click

from tvreg.errors import InvalidInput
from tvreg.format.records import check_meta, parse_meta_value

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")


def parse_meta(items: tuple[str, ...]) -> dict[str, Any]:
    """``--meta K=V`` (repeatable) into a dict; V is a JSON scalar if it parses as one."""
    meta: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid --meta {item!r}: expected KEY=VALUE")
        if key in meta:
            raise InvalidInput(f"--meta {key} given twice")
        meta[key] = parse_meta_value(value)
    check_meta(meta)
    return meta
