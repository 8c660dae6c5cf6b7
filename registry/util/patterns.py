"""Regular expressions given on the command line (``--include``, ``--exclude``)."""

from __future__ import annotations

import re

from tvreg.errors import InvalidInput


def compile_option(pattern: str | None, option: str) -> re.Pattern | None:
    """``re.compile(pattern)``, None for None; a bad pattern is :class:`InvalidInput` naming
    ``option``."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidInput(f"invalid {option} regex {pattern!r}: {e}") from None
