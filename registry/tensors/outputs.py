"""The one check every writer of files runs on its output path before any work.

An output must never overwrite or land among what the command reads (issue 14, item 3):
refused (:class:`InvalidInput`, exit 2, nothing written) when the output is an input file (also
through a symlink or hard link), or inside an input folder (a sharded checkpoint's shards and
index, or a folder holding one checkpoint file, which a second ``.safetensors`` would make
ambiguous), or inside the registry folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tvreg.errors import InvalidInput

__all__ = ["check_output_folder", "check_output_path"]


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


def check_output_path(path: str | os.PathLike[str],
                      inputs: Iterable[str | os.PathLike[str] | None] = (),
                      registry: str | os.PathLike[str] | None = None) -> str:
    """``path`` if it may be written: its folder exists and is writable, and it is none of
    ``inputs`` (files or folders), nothing inside an input folder, nothing inside ``registry``."""
    path = os.fspath(path)
    if path == "-":  # standard output (the CLI checks that it is not a terminal)
        return path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InvalidInput(f"output {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise InvalidInput(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InvalidInput(f"cannot write {path}: folder {folder} is not writable")
    real = os.path.realpath(path)
    for given in inputs:
        if given is None:
            continue
        given = os.fspath(given)
        if not os.path.exists(given):
            continue
        src = os.path.realpath(given)
        if os.path.isdir(src):
            if _inside(real, src) or _inside(os.path.realpath(folder), src):
                raise InvalidInput(f"output {path} is inside the input checkpoint folder {given}; "
                                   "write it somewhere else")
            continue
        if real == src or _same(path, src):
            raise InvalidInput(f"output {path} is the input checkpoint {given}; "
                               "write it somewhere else")
        # a sharded checkpoint given as its index json: its whole folder is the input
        if given.endswith(".index.json") and _inside(real, os.path.dirname(src)):
            raise InvalidInput(f"output {path} is inside the folder of the input checkpoint "
                               f"{given}; write it somewhere else")
    if registry is not None:
        root = os.path.realpath(os.fspath(registry))
        if os.path.isdir(root) and _inside(real, root):
            raise InvalidInput(f"output {path} is inside the registry folder {registry}; "
                               "write it somewhere else")
    return path


def check_output_folder(path: str | os.PathLike[str],
                        inputs: Iterable[str | os.PathLike[str] | None] = (),
                        registry: str | os.PathLike[str] | None = None) -> str:
    """``path`` if a model folder may be written there (replaced, with ``--force``): it is none
    of ``inputs`` and holds none of them, lies inside none of them, and is not inside the
    registry nor holds it (a forced replace would delete what it holds)."""
    path = os.fspath(path)
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise InvalidInput(f"cannot write {path}: folder {parent} does not exist")
    for given in [*inputs, registry]:
        if given is None or not os.path.exists(os.fspath(given)):
            continue
        given = os.fspath(given)
        src = os.path.realpath(given)
        what = "the registry folder" if given is registry else "the input checkpoint"
        if os.path.isfile(src) and given.endswith(".index.json"):
            src = os.path.dirname(src)  # a sharded checkpoint: its whole folder is the input
        if _inside(real, src) or _inside(src, real):
            raise InvalidInput(f"output folder {path} is, holds or lies inside {what} {given}; "
                               "write it somewhere else")
    return path
