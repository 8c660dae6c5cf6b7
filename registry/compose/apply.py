"""Merged model weights: θ = θ_base + merged, written tensor by tensor into a safetensors file.

The base checkpoint must have the composition's architecture (always) and base hash (unless
allowed); both are checked before the output is opened. Non-floating tensors are copied from
the base; floating ones are summed in fp32 (fp64 for fp64 bases) and cast to the output dtype.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tvreg import dtypes
from tvreg.compose.composition import BaseMismatchWarning
from tvreg.errors import IncompatibleCheckpoints, InvalidInput
from tvreg.util.listings import listing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.compose.composition import Composition
    from tvreg.format.manifest import TensorEntry
    from tvreg.repo.repo import Repo
    from tvreg.tensors.checkpoints import Checkpoint, TensorInfo

OUTPUT_DTYPES = ("float32", "bfloat16", "float16")
#: what ``apply`` writes: one safetensors file, or a Hugging Face model folder
FORMATS = ("safetensors", "hf")


def output_format(output: str | os.PathLike, fmt: str | None) -> str:
    """The format to write: ``fmt``, or by default a safetensors file when ``output`` ends in
    ``.safetensors`` (or is ``-``, standard output) and a Hugging Face model folder otherwise."""
    if fmt is None:
        out = os.fspath(output)
        return "safetensors" if out == "-" or out.endswith(".safetensors") else "hf"
    if fmt not in FORMATS:
        raise InvalidInput(f"invalid format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def check_output_path(path: str, inputs=(), registry=None) -> str:
    """The output's folder must exist and be writable, and the output must not be or lie
    among the inputs or in the registry (bad input, before any work); see :mod:`.outputs`."""
    from tvreg.tensors.outputs import check_output_path as check

    return check(path, inputs, registry)


def check_base(comp: Composition, ck: Checkpoint, *, allow_base_mismatch: bool
               ) -> tuple[list[TensorInfo], bool]:
    """The checkpoint's infos, if it is a base the composition applies to, and whether it is
    the vectors' very base (same base hash; else a mismatch was allowed)."""
    from tvreg.digest import BaseHasher, arch_fingerprint, tensor_bytes

    infos = ck.infos()
    if arch_fingerprint((i.name, i.dtype, i.shape) for i in infos) != comp.arch_fingerprint:
        # names and shapes decide, as between vectors (composition.architecture_difference):
        # a floating tensor of another floating dtype fits (it is then another base, below)
        m = comp.manifest
        want = {t.name: (t.source_dtype, tuple(t.shape)) for t in m.tensors}
        want.update({s.name: (s.dtype, tuple(s.shape)) for s in m.skipped})
        have = {i.name: (i.dtype, tuple(i.shape)) for i in infos}

        def fits(n: str) -> bool:
            (hd, hs), (wd, ws) = have[n], want[n]
            return hs == ws and (hd == wd or (dtypes.is_floating(hd) and dtypes.is_floating(wd)))

        diffs = sorted(f"{n} (only in {'the base' if n in have else 'the vectors'})"
                       for n in have.keys() ^ want.keys())
        diffs += sorted(f"{n} ({have[n][0]}{list(have[n][1])} in the base vs {want[n][0]}"
                        f"{list(want[n][1])})" for n in have.keys() & want.keys()
                        if not fits(n))
        if diffs:
            raise IncompatibleCheckpoints(f"{ck.path} is not the vectors' architecture: "
                                          f"{len(diffs)} tensor(s) differ: {listing(diffs)}")
    from tvreg.util.buffers import BufferPool

    base_hash = ck.known_base_hash()
    if base_hash is None:
        hasher, buffers = BaseHasher(), BufferPool(keep=1)
        for info in infos:
            if dtypes.is_floating(info.dtype):
                buf, view = buffers.take(dtypes.torch_dtype(info.dtype), info.shape)
                hasher.update(info.name, info.dtype, info.shape,
                              tensor_bytes(ck.tensor(info.name, out=view)))
                del view
                buffers.give(buf)
        base_hash = hasher.hexdigest()
    if base_hash != comp.base_hash:
        message = (f"{ck.path} is not the vectors' base model (its hash "
                   f"{base_hash[:12]} vs {comp.base_hash[:12]})")
        if not allow_base_mismatch:
            raise IncompatibleCheckpoints(message + "; pass --allow-base-mismatch to apply anyway")
        warnings.warn(message, BaseMismatchWarning, stacklevel=3)
        return infos, False
    return infos, True


def exact_entries(comp: Composition) -> dict[str, TensorEntry]:
    """The exact-mode entries whose fine-tuned tensors ``comp`` applies as they are: a single
    vector at weight 1 by task arithmetic (``tvreg apply NAME``), tensor by tensor."""
    from tvreg.tensors.encoding import exact_codec

    if len(comp.operands) != 1 or comp.params.method != "task_arithmetic" \
            or comp.operands[0].coef * comp.lam != 1.0:
        return {}
    return {e.name: e for e in comp.entries if exact_codec(e) is not None}


def merged_weights(comp: Composition, ck: Checkpoint, infos: list[TensorInfo],
                   out_dtype: str | None, *, restore: bool = True
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, θ_base + merged)`` for every tensor of the base, in the base's (sorted) order.

    Each tensor is used once (written) before the next is asked for, so the buffers of the
    merged tensors and of the base tensors are recycled. With ``restore`` (``ck`` is the
    vectors' very base), an exact-mode vector at weight 1 rebuilds the fine-tuned tensors."""
    exact = exact_entries(comp) if restore else {}
    if exact:
        yield from _restored_weights(comp, ck, infos, out_dtype, exact)
        return
    import numpy as np

    from tvreg.util.buffers import BufferPool

    base_buffers = BufferPool(keep=2)
    deltas = comp.stream()  # the next names are merged while this one is summed and written
    pending = next(deltas, None)
    for info in infos:
        buf, view = base_buffers.take(dtypes.torch_dtype(info.dtype), info.shape)
        t = ck.tensor(info.name, out=view)
        recycle = None
        if dtypes.is_floating(info.dtype):
            target = dtypes.torch_dtype(out_dtype or info.dtype)
            if pending is not None and pending[0] == info.name:
                _, delta, recycle = pending  # a tensor of the composition: summed into in place
                if t.dtype == delta.dtype:  # numpy: no torch intra-op threads (see composition)
                    np.add(delta.numpy(), t.numpy(), out=delta.numpy())
                else:
                    delta.add_(t.to(delta.dtype))
                t = delta.to(target)
                pending = next(deltas, None)
            else:
                t = t.to(target)
        yield info.name, t
        del t
        base_buffers.give(buf)
        if recycle is not None:
            comp.recycle(recycle)
    if pending is not None:  # cannot happen after check_base; a guard against silent loss
        raise IncompatibleCheckpoints(
            f"tensor {pending[0]!r} of the composition is not in the base")


def _restored_weights(comp: Composition, ck: Checkpoint, infos: list[TensorInfo],
                      out_dtype: str | None, exact: dict[str, TensorEntry]
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """θ_ft rebuilt bit for bit from the base's bits and the stored bit differences (exact
    mode at weight 1), tensor by tensor; tensors the composition leaves out stay the base's."""
    registry = comp.repo
    for info in infos:
        t = ck.tensor(info.name)
        if info.name in exact:
            t = registry.finetuned_tensor(exact[info.name], t)
        if dtypes.is_floating(info.dtype):
            t = t.to(dtypes.torch_dtype(out_dtype or info.dtype))
        yield info.name, t
        del t


def apply_to_checkpoint(comp: Composition, base: str | Checkpoint, output: str, *,
                        dtype: str | None = None, allow_base_mismatch: bool = False,
                        format: str | None = None, shard_size: int | str | None = None,
                        force: bool = False, base_dir: str | None = None) -> int:
    """``base`` is a checkpoint's path, or an open :class:`Checkpoint` (e.g. a stored base),
    closed when done. ``format="hf"`` writes a model folder (``base_dir``, default the base's
    folder, gives its config and tokenizer; see :mod:`tvreg.tensors.hf_folder`)."""
    from tvreg.tensors.checkpoints import Checkpoint, InMemoryCheckpoint, open_checkpoint
    from tvreg.tensors.safetensors_io import write_safetensors

    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise InvalidInput(f"invalid dtype {dtype!r}: one of {', '.join(OUTPUT_DTYPES)}")
    fmt = output_format(output, format)
    inputs = [] if isinstance(base, InMemoryCheckpoint) else \
        [base if isinstance(base, (str, os.PathLike)) else getattr(base, "path", None)]
    if fmt == "hf":
        from tvreg.tensors.hf_folder import (
            DEFAULT_SHARD_SIZE,
            check_hf_output,
            folder_of,
            parse_size,
        )
        from tvreg.tensors.outputs import check_output_folder

        if output == "-":
            raise InvalidInput("a model folder cannot go to standard output: give a folder, "
                               "or --format safetensors")
        base_dir = base_dir or folder_of(inputs[0] if inputs else None)
        size = DEFAULT_SHARD_SIZE if shard_size is None else parse_size(shard_size)
        check_output_folder(output, [*inputs, base_dir], comp.repo.root)
        check_hf_output(output, base_dir, force=force)
    else:
        if shard_size is not None or force:
            raise InvalidInput("--shard-size and --force are for --format hf (a model folder)")
        output = check_output_path(output, inputs, comp.repo.root)
    with (base if isinstance(base, Checkpoint) else open_checkpoint(base)) as ck:
        infos, same_base = check_base(comp, ck, allow_base_mismatch=allow_base_mismatch)
        specs = [(i.name, (dtype or i.dtype) if dtypes.is_floating(i.dtype) else i.dtype, i.shape)
                 for i in infos]
        metadata = {"tvreg.expression": comp.expression, "tvreg.base_hash": comp.base_hash,
                    "tvreg.method": comp.params.method, "tvreg.lambda": repr(comp.lam),
                    "tvreg.recipe": comp.recipe_json()}
        if fmt == "hf":
            from tvreg.tensors.hf_folder import plan_shards, write_hf_folder

            plan_shards(specs, size)  # a shard size below a tensor: refused before any work
            card = _card(comp, output, base_dir)

            def write(weights: Iterator[tuple[str, torch.Tensor]]) -> int:
                assert base_dir is not None  # checked by check_hf_output
                return write_hf_folder(output, base_dir, specs, weights, metadata, dtype=dtype,
                                       shard_size=size, force=force, files={"README.md": card})
        else:
            def write(weights: Iterator[tuple[str, torch.Tensor]]) -> int:
                return write_safetensors(output, specs, weights, metadata, progress="apply")
        previous = comp.base_weights
        if comp.params.weight_space:  # slerp, karcher: the weights interpolated are ck's
            comp.base_weights = ck
        try:
            if not same_base:  # exact-mode deltas then come from the stored base, if any
                return write(merged_weights(comp, ck, infos, dtype, restore=False))
            with comp.repo.using_base(ck, comp.base_hash):
                return write(merged_weights(comp, ck, infos, dtype))
        finally:
            comp.base_weights = previous


def _card(comp: Composition, output: str, base_dir: str | None) -> str:
    """The model card of a folder of ``comp``'s weights (:mod:`tvreg.compose.card`)."""
    from tvreg.compose.card import library_of, model_card
    from tvreg.compose.recipe_yaml import recipe_config_yaml
    from tvreg.repo.bases import names_of

    names = sorted(names_of(comp.repo, comp.base_hash))
    title = os.path.basename(os.path.abspath(output))
    recipe = recipe_config_yaml(comp.recipe, f"# tvreg recipe of {title}: `tvreg merge` of this "
                                             "file rebuilds it (add base_model: BASE_FOLDER "
                                             "when the base is not stored)")
    return model_card(comp, title=title, base_name=names[0] if names else None,
                      library_name=library_of(base_dir), recipe_file=recipe,
                      recipe_format="yaml")


def check_output(repo: Repo, output: str | os.PathLike, *, format: str | None, base: Any,
                 base_dir: str | None, shard_size: int | str | None = None,
                 force: bool = False) -> str:
    """The format ``output`` is written in, once every check on it has passed (bad input, before
    any work): a model folder needs a base folder with ``config.json``, an empty or new output
    folder (or ``force``) outside the base and the registry, and a valid shard size; a file
    must not be an input nor lie in the registry, and takes no shard size or ``force``."""
    fmt = output_format(output, format)
    out = os.fspath(output)
    inputs = [base] if isinstance(base, (str, os.PathLike)) else []
    if fmt == "hf":
        from tvreg.tensors.hf_folder import check_hf_output, parse_size
        from tvreg.tensors.outputs import check_output_folder

        if out == "-":
            raise InvalidInput("a model folder cannot go to standard output: give a folder, "
                               "or --format safetensors")
        check_output_folder(out, [*inputs, base_dir], repo.root)
        check_hf_output(out, base_dir, force=force,
                        given=base if base is not None else "the stored base (no --base)")
        if shard_size is not None:
            parse_size(shard_size)
    else:
        if shard_size is not None or force:
            raise InvalidInput("--shard-size and --force are for --format hf (a model folder)")
        check_output_path(out, inputs, repo.root)
    return fmt


def apply(repo: Repo, comp: Composition | str, base: Any = None,
          output: str | os.PathLike | None = None, *, dtype: str | None = None,
          allow_base_mismatch: bool | None = None, format: str | None = None,
          shard_size: int | str | None = None, force: bool = False) -> int:
    """Write θ_base + merged into a safetensors file or a model folder; see
    :meth:`tvreg.Registry.apply`."""
    from tvreg.compose.resolve import resolve
    from tvreg.repo.bases import open_base
    from tvreg.tensors.hf_folder import folder_of

    if output is None:
        raise InvalidInput("apply needs an output file")
    base_dir = folder_of(base) if isinstance(base, (str, os.PathLike)) \
        and os.path.exists(os.fspath(base)) else None
    fmt = check_output(repo, output, format=format, base=base, base_dir=base_dir,
                       shard_size=shard_size, force=force)
    if isinstance(comp, str):
        comp = resolve(repo, comp, allow_base_mismatch=bool(allow_base_mismatch))
    if allow_base_mismatch is None:
        allow_base_mismatch = comp.allow_base_mismatch
    return apply_to_checkpoint(comp, open_base(repo, base, comp.base_hash), os.fspath(output),
                               dtype=dtype, allow_base_mismatch=allow_base_mismatch, format=fmt,
                               shard_size=shard_size, force=force, base_dir=base_dir)
