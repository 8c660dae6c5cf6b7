"""The ``tvreg`` command line: a thin layer over :mod:`tvreg` (see docs/cli.md)."""
