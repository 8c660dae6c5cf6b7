"""The examples in docs/python.md run as doctests against a real registry and real checkpoints."""

from __future__ import annotations

import doctest
import pathlib

import torch

import tvreg

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_python_md_examples_run(tmp_path, zoo):
    globs = {"tvreg": tvreg, "torch": torch, "zoo": zoo, "registry_dir": tmp_path / "reg",
             "out_dir": tmp_path}
    result = doctest.testfile(str(DOCS / "python.md"), module_relative=False, globs=globs,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              raise_on_error=False, verbose=False)
    assert result.attempted > 20
    assert result.failed == 0
