"""``export --format peft``: a stored vector, an expression or a saved task-arithmetic
composition written as a PEFT LoRA adapter folder (the math is :mod:`tvreg.tensors.peft_out`).

Per tensor: where every operand stores it as ``lowrank`` factors (or as zeros), the factors
are read as stored (no SVD) and concatenated with the coefficients folded in; otherwise the
dense delta is decoded and factored by SVD. A saved version whose recipe is task arithmetic
over stored operands (no include/exclude) is exported from those operands' factors.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo


def _factors_of(repo: Repo, entry) -> tuple[Any, Any, float, bool] | None:
    """``(A, B, scale, transpose)`` of a ``lowrank`` entry as stored, else None."""
    import numpy as np

    from tvreg.codecs import CodecPipeline, LowRank

    first = entry.codecs.codecs[0]
    if not isinstance(first, LowRank) or len(entry.chunks) != 1:
        return None
    data = repo.objects.get(entry.chunks[0].blob)
    payload = CodecPipeline(entry.codecs.codecs[1:]).decode(data, first.encoded_nbytes(
        entry.nbytes)) if len(entry.codecs.codecs) > 1 else data
    raw = np.frombuffer(payload, dtype=np.float32)
    split = first.rank * first.cols
    return (raw[:split].reshape(first.rank, first.cols),
            raw[split:].reshape(first.rows, first.rank), first.scale, first.transpose)


def _operands(repo: Repo, ref: str):
    """``[(coef, TaskVector)]`` and a label: a ref, an expression, or a saved task-arithmetic
    composition (its recipe's operands, when all are still stored; any other recipe: the
    version itself, decoded dense)."""
    from tvreg.compose.resolve import resolve
    from tvreg.errors import InvalidName, InvalidRef, NotFound

    try:
        vec = repo.get(ref)
    except (InvalidRef, InvalidName, NotFound):  # not a ref: an expression (or an error there)
        vec = None
    if vec is not None:
        recipe = vec.record.recipe if vec.record is not None else None
        if isinstance(recipe, dict) and recipe.get("operands") and not recipe.get("include") \
                and not recipe.get("exclude") \
                and (recipe.get("method") or {}).get("method", "task_arithmetic") \
                == "task_arithmetic":
            try:
                lam = float(recipe.get("lambda", 1.0))
                ops = [(lam * float(o["coef"]), repo.get(o["vector_id"]))
                       for o in recipe["operands"]]
                return vec, ops
            except (NotFound, KeyError, TypeError, ValueError):  # an operand gone: dense
                pass
        return vec, [(1.0, vec)]
    comp = resolve(repo, ref)
    return comp, [(comp.lam * op.coef, op.vector) for op in comp.operands]


def export_peft(repo: Repo, ref: str, out_dir: str | os.PathLike, *, rank: int | None = None,
                energy: float | None = None, include: str | None = None,
                force: bool = False) -> dict[str, Any]:
    """Write ``ref`` (a ref or an expression) as a PEFT LoRA adapter; the report says per
    module rank and relative error, and what the adapter does not carry."""
    import numpy as np

    from tvreg.repo.bases import names_of
    from tvreg.tensors.peft_out import (
        AdapterModule,
        PeftPlan,
        check_peft_output,
        check_rank_options,
        error_sq,
        factor_dense,
        factor_product,
        is_carried,
    )

    check_rank_options(rank, energy)
    out = os.path.abspath(os.fspath(out_dir))
    check_peft_output(out, force=force)
    from tvreg.tensors.outputs import check_output_folder

    check_output_folder(out, (), repo.root)  # not in the registry, nor holding it
    pattern = None
    if include is not None:
        try:
            pattern = re.compile(include)
        except re.error as e:
            raise InvalidInput(f"invalid --include {include!r}: {e}") from None
    whole, ops = _operands(repo, ref)
    manifest = whole.manifest
    plan = PeftPlan()
    todo = []
    for t in manifest.tensors:
        why = is_carried(t.name, tuple(t.shape), t.source_dtype)
        if why is None and pattern is not None and not pattern.search(t.name):
            why = "left out by --include"
        if why is None:
            todo.append(t)
        else:
            plan.not_carried[t.name] = (why, None)  # type: ignore[assignment]
    if not todo:
        raise InvalidInput("no 2-D weight tensor to adapt" + (
            f" matches --include {include!r}" if include is not None else " in this vector"))
    if rank is not None and rank > max(min(t.shape) for t in todo):
        raise InvalidInput(f"--rank {rank} is above every module's largest rank "
                           f"(at most {max(min(t.shape) for t in todo)})")
    from tvreg.tensors.taskvector import TaskVector

    # a stored vector decodes tensor by tensor; a composition's merged tensors are computed once
    dense = whole.tensors() if isinstance(whole, TaskVector) else whole.state_dict()

    def tensor(name: str):
        return dense[name]

    for name, (why, _) in list(plan.not_carried.items()):
        t = tensor(name)
        plan.not_carried[name] = (why, float((t.double() ** 2).sum()))
    for t in todo:
        module = t.name[:-len(".weight")]
        parts, zero_or_factors = [], True
        for coef, vec in ops:
            entry = vec.manifest.tensor(t.name)
            f = _factors_of(repo, entry)
            if f is not None:
                if coef != 0.0:
                    parts.append((f[0], f[1], f[2] * coef, f[3]))
                continue
            d = repo.load_tensor(entry)
            if bool((d == 0).all()):
                continue
            zero_or_factors = False
            break
        delta = tensor(t.name).double().numpy()
        norm_sq = float(np.sum(delta * delta))
        if norm_sq == 0.0:
            plan.not_carried[t.name] = ("zero delta", 0.0)
            continue
        if zero_or_factors and parts:
            factors = factor_product(parts, rank, energy)
        else:
            factors = factor_dense(delta, rank, energy)
        plan.modules.append(AdapterModule(module, tuple(t.shape), factors, norm_sq,
                                          error_sq(delta, factors)))
    if not plan.modules:
        raise InvalidInput("the vector's 2-D weight tensors are all zero: nothing to adapt")
    names = sorted(names_of(repo, manifest.base_hash))
    base_name = names[0] if names else None
    meta = {"tvreg.base_hash": manifest.base_hash, "tvreg.ref": str(ref)}
    from tvreg.compose.card import adapter_card
    from tvreg.tensors.peft_out import write_adapter

    report = plan.report()
    mode = {"rank": rank, "energy": energy, "include": include}
    card = adapter_card(title=os.path.basename(out), ref=str(ref), base_hash=manifest.base_hash,
                        base_name=base_name, operands=ops, report=report, mode=mode)
    write_adapter(out, plan.modules, base_name, meta, force=force, files={"README.md": card})
    report.update({"ref": str(ref), "output": os.fspath(out_dir), "base_model_name_or_path":
                   base_name, "mode": mode})
    return report
