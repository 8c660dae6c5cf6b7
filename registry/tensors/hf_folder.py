"""Hugging Face model folders out: what ``save_pretrained`` writes, streamed (issue 16, item 1).

A folder gets the base folder's ``config.json`` (its dtype field set to the output dtype), the
base folder's other non-weight files (tokenizer, generation config, chat template, …), and the
weights as safetensors: one ``model.safetensors`` when they fit in one shard, else shards
``model-0000i-of-0000n.safetensors`` cut at ``shard_size`` bytes with
``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``), as transformers
names them. Shards are written as the tensors arrive (one tensor in memory at a time), into a
temporary folder next to the output that is renamed into place once complete, so a failure
leaves no partial folder.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import torch

from tvreg.errors import InvalidInput
from tvreg.tensors.safetensors_io import Spec, spec_nbytes, write_safetensors

__all__ = ["DEFAULT_SHARD_SIZE", "INDEX_NAME", "WEIGHTS_NAME", "check_hf_output",
           "folder_of", "parse_size", "plan_shards", "shard_names", "write_hf_folder"]

#: ``save_pretrained``'s default ``max_shard_size`` ("5GB", decimal units)
DEFAULT_SHARD_SIZE = 5 * 10**9
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

#: files of a base folder that hold weights (never copied: the output's weights replace them)
_WEIGHT_FILE = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.h5|\.msgpack|\.gguf|\.onnx)$"
    r"|\.(safetensors|bin|pt|h5|msgpack)\.index\.json$")
#: the model card: written anew (item 2), not copied
_NOT_COPIED = {"README.md", ".gitattributes"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes of a size as transformers writes it: ``500MB``, ``5GB``, ``1.5GiB``, ``1000``."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.I)
        if m is None:
            raise InvalidInput(f"invalid size {text!r}: a number of bytes with an optional unit "
                               "(KB, MB, GB, KiB, MiB, GiB), e.g. 500MB")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size <= 0:
        raise InvalidInput(f"invalid size {text!r}: more than 0 bytes")
    return size


def plan_shards(specs: Sequence[Spec], shard_size: int) -> list[list[Spec]]:
    """``specs`` cut into shards of at most ``shard_size`` bytes, in order (a tensor that does
    not fit in the current shard starts the next one, as transformers cuts them). A tensor
    larger than ``shard_size`` is bad input."""
    shards: list[list[Spec]] = [[]]
    used = 0
    for spec in specs:
        n = spec_nbytes(spec)
        if n > shard_size:
            raise InvalidInput(f"--shard-size {shard_size} bytes is below tensor {spec[0]!r} "
                               f"({n} bytes): give at least {n}")
        if shards[-1] and used + n > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += n
    return shards


def shard_names(n: int) -> list[str]:
    """The file names of ``n`` shards, as transformers names them."""
    if n == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def folder_of(base: str | os.PathLike[str] | None) -> str | None:
    """The model folder a base checkpoint path stands for: the folder itself, the folder of a
    sharded checkpoint's index, or the folder of a weights file that has a ``config.json``
    beside it; None otherwise (a stored base, a state dict, a lone file)."""
    if base is None or not isinstance(base, (str, os.PathLike)):
        return None
    path = os.fspath(base)
    if os.path.isdir(path):
        return path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(path) and os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    return None


def check_hf_output(out_dir: str, base_dir: str | None, *, force: bool = False,
                    given: object = None) -> None:
    """Bad input before any work: the base folder must have a ``config.json``; the output must
    not exist, or be an empty folder (or, with ``force``, a folder to replace). ``given`` is
    the base as the user gave it, for the message."""
    if base_dir is None or not os.path.isfile(os.path.join(base_dir, "config.json")):
        what = base_dir or (given if isinstance(given, (str, os.PathLike)) else None)
        raise InvalidInput(f"{os.fspath(what) if what else 'the base'} is not a Hugging Face "
                           "model folder (no config.json): give one with --base, or write the "
                           "weights only with --format safetensors")
    check_output_dir(out_dir, force=force)


def check_output_dir(out_dir: str, *, force: bool = False) -> None:
    """A folder output must be new, an empty folder, or (``force``) a folder to replace, in a
    writable parent (model folders here, PEFT adapters in :mod:`.peft_out`)."""
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise InvalidInput(f"{out_dir} exists and is not a folder")
        if os.listdir(out_dir) and not force:
            raise InvalidInput(f"{out_dir} is not empty: give an empty or new folder, or --force "
                               "to replace it")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise InvalidInput(f"{parent} is not a writable folder")


def _config(base_dir: str, dtype: str | None) -> bytes:
    with open(os.path.join(base_dir, "config.json"), "rb") as f:
        config = json.load(f)
    if dtype is not None:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        for k in keys:
            config[k] = dtype
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _copy_extras(base_dir: str, dest: str) -> None:
    """Copy the base folder's non-weight files (and folders, e.g. ``1_Pooling``)."""
    for entry in sorted(os.listdir(base_dir)):
        if entry == "config.json" or entry in _NOT_COPIED or entry.startswith(".") \
                or _WEIGHT_FILE.search(entry):
            continue
        src = os.path.join(base_dir, entry)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, entry),
                            ignore=lambda _d, names: [n for n in names if _WEIGHT_FILE.search(n)])
        else:
            shutil.copy2(src, os.path.join(dest, entry))


def write_hf_folder(out_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str],
                    specs: Sequence[Spec], tensors: Iterable[tuple[str, torch.Tensor]],
                    metadata: dict[str, str] | None = None, *, dtype: str | None = None,
                    shard_size: int = DEFAULT_SHARD_SIZE, force: bool = False,
                    files: Mapping[str, str | bytes] | None = None) -> int:
    """Write a model folder: ``tensors`` (matching ``specs`` in order) as safetensors shards,
    the base folder's config (dtype set to ``dtype`` if given) and other non-weight files, and
    ``files`` (name -> text, e.g. the model card ``README.md``); returns the bytes of weights
    written.
    All checks come first; the folder appears complete or not at all."""
    out, base = os.path.abspath(os.fspath(out_dir)), os.fspath(base_dir)
    check_hf_output(out, base, force=force)
    shards = plan_shards(specs, shard_size)
    names = shard_names(len(shards))
    meta = {"format": "pt", **(metadata or {})}
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                           dir=os.path.dirname(out))
    try:
        stream = iter(tensors)
        total = 0
        for shard, name in zip(shards, names, strict=True):
            total += write_safetensors(os.path.join(tmp, name), shard,
                                       itertools.islice(stream, len(shard)), meta)
        if next(stream, None) is not None:
            raise InvalidInput(f"got more tensors than the {len(specs)} planned")
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(spec_nbytes(s) for s in specs)},
                     "weight_map": {s[0]: name for shard, name in zip(shards, names, strict=True)
                                    for s in shard}}
            with open(os.path.join(tmp, INDEX_NAME), "w", encoding="utf-8") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        with open(os.path.join(tmp, "config.json"), "wb") as f:
            f.write(_config(base, dtype))
        _copy_extras(base, tmp)
        for name, content in (files or {}).items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        if os.path.isdir(out):
            if os.listdir(out):  # --force: the old folder goes once the new one is complete
                old = out + f".old-{os.getpid()}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
                return total
            os.rmdir(out)
        os.rename(tmp, out)
        return total
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
