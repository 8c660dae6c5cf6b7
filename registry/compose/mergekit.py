"""mergekit recipes in and out: a mergekit YAML config as a :class:`Composition`, a saved
composition's recipe as mergekit YAML, and a saved composition recomputed (``reproduce``).

The semantics are mergekit 0.1.5's (``merge_methods/generalized_task_arithmetic.py``,
``linear.py``, ``sparsify.py``, ``config.evaluate_setting``); docs/interop.md has the mapping
table. A config names its models by path (a checkpoint, whose vector against the base is
computed on the fly, :class:`~tvreg.compose.checkpoint_operand.CheckpointVector`) or by
registry ref.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvreg.compose.checkpoint_operand import CheckpointVector, checkpoint_base_hash
from tvreg.compose.composition import Composition, Operand
from tvreg.compose.merge import WEIGHT_SPACE_METHODS, MergeParams, operand_setting_keys
from tvreg.compose.recipe_yaml import recipe_config, recipe_config_yaml
from tvreg.compose.settings import TensorParams, density_fallback, is_setting, stand_in_density
from tvreg.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.repo.repo import Repo
    from tvreg.tensors.checkpoints import Checkpoint

#: mergekit methods tvreg runs -> the tvreg method (the generalized task arithmetic ones with
#: rule=mergekit)
METHODS = {"linear": "task_arithmetic", "task_arithmetic": "task_arithmetic", "ties": "ties",
           "dare_linear": "dare_linear", "dare_ties": "dare_ties", "breadcrumbs": "breadcrumbs",
           "breadcrumbs_ties": "breadcrumbs_ties", "della": "della",
           "della_linear": "della_linear", "slerp": "slerp", "nuslerp": "nuslerp",
           "karcher": "karcher", "model_stock": "model_stock"}
#: mergekit methods of their own formulas (no rule of trimmed sums)
GEOMETRIC = ("slerp", "nuslerp", "karcher", "model_stock")
#: mergekit methods tvreg does not run (refused by name)
LATER = ("multislerp", "passthrough", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl",
         "task_adapter")
TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tvreg"}
MODEL_PARAMS = {"weight", "density"}
SHARED_PARAMS = {"normalize", "lambda", "rescale", "int8_mask"}
#: per method: the per-model parameters and the top-level-only ones mergekit reads
#: (generalized task arithmetic: MODEL_PARAMS and SHARED_PARAMS, plus these per-model ones)
GTA_EXTRA = {"breadcrumbs": {"gamma"}, "breadcrumbs_ties": {"gamma"}, "della": {"epsilon"},
             "della_linear": {"epsilon"}}
#: (tvreg also reads a weight per model for slerp, karcher and model_stock: it scales τ first)
OWN_PARAMS: dict[str, tuple[set[str], set[str]]] = {
    "slerp": ({"weight"}, {"t"}),
    "nuslerp": ({"weight"}, {"nuslerp_flatten", "nuslerp_row_wise"}),
    "karcher": ({"weight"}, {"max_iter", "tol"}),
    "model_stock": ({"weight"}, {"filter_wise"}),
}
#: the per-tensor settings (lists over layers, filters) tvreg evaluates tensor by tensor
TENSOR_SETTINGS = {"weight", "density", "gamma", "epsilon", "t"}
TVREG_KEYS = {"rule", "seed", "trim", "majority_sign", "include", "exclude", "expression",
              "common_fraction", "k", "tall_mask_lambda"}
#: tvreg's own methods (no mergekit name): run with tvreg's rules (``tvreg.rule: peft``)
TVREG_METHODS = ("magnitude_prune", "tsv", "iso_c", "iso_cts", "consensus")
#: tvreg's own method parameters a recipe's ``tvreg`` block may hold
TVREG_PARAMS = ("common_fraction", "k", "tall_mask_lambda")


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The config as a dict: a mapping as it is, else a YAML file's contents."""
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    try:
        with open(os.fspath(config), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read {config}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InvalidInput(f"{config} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{config}: a mergekit config is a mapping")
    return doc


@dataclass
class MergePlan:
    """A config resolved: the composition, the base to apply it to (a path, a stored base's
    name, or None for the vectors' stored base), the output dtype, the checkpoints to close."""

    composition: Composition
    base: Any
    out_dtype: str | None
    opened: list[Any]
    base_dir: str | None = None

    def close(self) -> None:
        """Close the checkpoints the plan opened."""
        for ck in self.opened:
            ck.close()
        self.opened = []


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and os.path.exists(value)


def _scalar_bool(top: dict[str, Any], key: str) -> bool | None:
    if key not in top:
        return None
    value = top[key]
    if not isinstance(value, bool):
        raise InvalidInput(f"parameters.{key} must be true or false here (tvreg reads no "
                           f"per-tensor {key}), not {value!r}")
    return value


def plan_merge(repo: Repo, config: str | os.PathLike | Mapping[str, Any], *,
               allow_base_mismatch: bool = False, device: Any = None) -> MergePlan:
    """A mergekit config as a :class:`MergePlan`; see :meth:`tvreg.Registry.merge_config`.
    Every key is checked, and every per-tensor value evaluated, before a tensor is read."""
    from tvreg.tensors.checkpoints import open_checkpoint
    from tvreg.tensors.hf_folder import folder_of

    doc = load_config(config)
    for key in doc:
        if key not in TOP_KEYS:
            what = {"slices": "slices (passthrough/frankenmerges)", "modules": "modules",
                    "tokenizer": "tokenizer (a tokenizer block)",
                    "chat_template": "chat_template"}.get(key, key)
            raise InvalidInput(f"unsupported mergekit key {what!r}")
    src = doc.get("tokenizer_source")
    if src is not None and src != "base":
        raise InvalidInput(f"unsupported tokenizer_source {src!r}: only 'base' (no union)")
    method = doc.get("merge_method")
    if not isinstance(method, str):
        raise InvalidInput("a mergekit config needs merge_method")
    ext = doc.get("tvreg") or {}
    if not isinstance(ext, Mapping) or set(ext) - TVREG_KEYS:
        raise InvalidInput(f"unknown tvreg key(s): {sorted(set(ext) - TVREG_KEYS)}")
    own = method in GEOMETRIC or method in TVREG_METHODS[1:]
    rule = ext.get("rule", "peft" if own else "mergekit")
    if method in LATER:
        raise InvalidInput(f"merge_method {method} is not supported (tvreg runs "
                           f"{', '.join(METHODS)})")
    if method not in METHODS and not (rule == "peft" and method in TVREG_METHODS):
        raise InvalidInput(f"unknown merge_method {method!r}")
    tv_method = METHODS.get(method, method)
    top = dict(doc.get("parameters") or {})
    if method == "linear":
        model_keys, allowed = {"weight"}, {"weight", "normalize"}
    elif method in OWN_PARAMS:
        model_keys, top_only = OWN_PARAMS[method]
        allowed = model_keys | top_only
    else:
        model_keys = MODEL_PARAMS | GTA_EXTRA.get(method, set())
        allowed = model_keys | SHARED_PARAMS
    for key in top:
        if key not in allowed:
            raise InvalidInput(f"unsupported parameter {key!r} for {method}")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise InvalidInput("a mergekit config needs models (a non-empty list)")
    for i, m in enumerate(models):
        if not isinstance(m, Mapping) or "model" not in m:
            raise InvalidInput(f"models[{i}] needs model")
        for key in m:
            if key not in ("model", "parameters"):
                raise InvalidInput(f"unsupported key {key!r} in models[{i}]")
        for key in (m.get("parameters") or {}):
            if key not in model_keys:
                raise InvalidInput(f"unsupported parameter {key!r} in models[{i}] (mergekit "
                                   "reads it at the top level only)" if key in allowed
                                   else f"unsupported parameter {key!r} in models[{i}]")
    dtype, out_dtype = doc.get("dtype"), doc.get("out_dtype")
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype)):
        if value is not None and value not in ("float32", "bfloat16", "float16"):
            raise InvalidInput(f"unsupported {key} {value!r}")

    normalize = _scalar_bool(top, "normalize")
    rescale = _scalar_bool(top, "rescale")
    _scalar_bool(top, "int8_mask")  # accepted: it changes the mask's dtype, not the result
    lam = top.get("lambda", 1.0)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise InvalidInput(f"parameters.lambda must be a number here, not {lam!r}")
    if method == "linear":
        if normalize is False:
            raise InvalidInput("linear with normalize: false (Σ wᵢ·θᵢ, the base counted Σw "
                               "times) is not a task-vector merge; leave normalize on")
        normalize = True
    scalars = {key: top[key] for key in ("gamma", "epsilon", "t") if key in top
               and isinstance(top[key], (int, float)) and not isinstance(top[key], bool)}
    tvreg_params: dict[str, Any] = {key: ext.get(key) for key in TVREG_PARAMS}
    if method in GEOMETRIC:
        if rule != "peft":
            raise InvalidInput(f"{method} has no tvreg.rule (it follows mergekit's formula)")
        own_scalars = {key: top[key] for key in OWN_PARAMS[method][1] if key != "t"}
        params = MergeParams(method=tv_method, t=scalars.get("t"), **own_scalars)
    elif rule == "peft":
        dens = stand_in_density(top.get("density"), any(
            "density" in (m.get("parameters") or {}) for m in models))
        params = MergeParams(method=tv_method, density=dens,
                             seed=ext.get("seed", 0), trim=ext.get("trim", "tensor"),
                             majority_sign=ext.get("majority_sign", "total"),
                             **tvreg_params)
    elif rule == "mergekit":
        params = MergeParams(method=tv_method, seed=ext.get("seed", 0),
                             majority_sign=ext.get("majority_sign", "total"), rule="mergekit",
                             normalize=normalize, rescale=rescale,
                             density=1.0 if tv_method != "task_arithmetic" else None,
                             gamma=scalars.get("gamma"), epsilon=scalars.get("epsilon"),
                             **tvreg_params)
    else:
        raise InvalidInput(f"unknown tvreg.rule {rule!r}: peft or mergekit")

    opened: list[Any] = []
    try:
        base_ref = doc.get("base_model")
        base_ck: Checkpoint | None = None
        base_dir = None
        if base_ref is not None and not isinstance(base_ref, str):
            raise InvalidInput(f"base_model must be a path or a stored base's name: {base_ref!r}")
        if isinstance(base_ref, str) and _is_path(base_ref):
            base_ck = open_checkpoint(base_ref)
            opened.append(base_ck)
            base_dir = folder_of(base_ref)
        base_hash = checkpoint_base_hash(base_ck) if base_ck is not None else None

        operands, settings = [], []
        for i, m in enumerate(models):
            ref = m["model"]
            if not isinstance(ref, str):
                raise InvalidInput(f"models[{i}].model must be a path or a registry ref")
            if method != "linear" and base_ref is not None and ref == base_ref:
                continue  # mergekit: the base is not one of the merged deltas
            if _is_path(ref):
                if base_ck is None:
                    if base_ref is None:
                        raise InvalidInput(f"models[{i}] is a checkpoint ({ref}): its vector "
                                           "needs base_model")
                    stored = repo.stored_base(_stored_hash(repo, base_ref))
                    if stored is None:
                        raise InvalidInput(f"no stored base {base_ref!r}")
                    base_ck = stored
                    opened.append(base_ck)
                    base_hash = checkpoint_base_hash(base_ck)
                ft = open_checkpoint(ref)
                opened.append(ft)
                assert base_hash is not None
                vector: Any = CheckpointVector(base_ck, ft, ref, base_hash)
            else:
                try:
                    vector = repo.get(ref)
                except NotFound as e:
                    raise NotFound(f"models[{i}] ({ref}): {e}") from None
            mp = dict(m.get("parameters") or {})
            w = mp.get("weight", top.get("weight"))
            coef = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else 1.0
            operands.append(Operand(ref, coef, vector))
            settings.append(mp)
        # mergekit: linear averages base_model with the models (it needs a weight, top-level),
        # karcher takes its mean over base_model too: the base as an operand (τ = 0)
        with_base = base_ref is not None and all(m["model"] != base_ref for m in models) \
            and method == "linear" or (method == "karcher" and base_ref is not None)
        if (with_base or tv_method in WEIGHT_SPACE_METHODS) and base_ref is not None \
                and base_ck is None:
            stored = repo.stored_base(_stored_hash(repo, base_ref))
            if stored is None:
                raise InvalidInput(f"no stored base {base_ref!r}")
            base_ck = stored
            opened.append(base_ck)
            base_hash = checkpoint_base_hash(base_ck)
        if with_base:
            if method == "linear" and "weight" not in top:
                raise InvalidInput("linear averages base_model with the models (as mergekit "
                                   "does): give it a weight (top-level parameters.weight) or "
                                   "leave base_model out")
            assert base_hash is not None and base_ck is not None and base_ref is not None
            w = top.get("weight", 1.0)
            coef = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else 1.0
            zero: Any = CheckpointVector(base_ck, base_ck, base_ref, base_hash)  # τ = 0
            at = 0 if method == "karcher" else len(operands)  # mergekit's order of entries
            operands.insert(at, Operand(base_ref, coef, zero))
            settings.insert(at, {})
        if not operands:
            raise InvalidInput("no model to merge besides the base")
        if method in GEOMETRIC:
            tensor_params: TensorParams | None = TensorParams(
                settings, {k: v for k, v in top.items() if k in ("weight", "t")}, None,
                weight_default=None if method == "nuslerp" else 1.0)
        elif rule == "peft":  # tvreg's rules: weights and densities per model and per tensor
            keys = operand_setting_keys(tv_method)
            for i, mp in enumerate(settings):
                for key in mp:
                    if key not in keys:
                        raise InvalidInput(f"models[{i}]: {key} has no meaning for {tv_method} "
                                           f"(it reads {', '.join(keys)} per model)")
            tensor_params = None
            if any(is_setting(mp.get("weight")) or "density" in mp for mp in settings) \
                    or is_setting(top.get("weight")) or is_setting(top.get("density")):
                default, required = density_fallback("density" in keys, "peft",
                                                      top.get("density"))
                tensor_params = TensorParams(
                    settings, {k: v for k, v in top.items() if k in ("weight", "density")},
                    default, weight_default=1.0, density_required=required)
        else:  # rule mergekit
            extra = tuple(sorted(GTA_EXTRA.get(method, ())))
            tensor_params = TensorParams(
                settings, {k: v for k, v in top.items() if k in MODEL_PARAMS or k in extra},
                1.0 if tv_method != "task_arithmetic" else None, extra_keys=extra)
        expression = ext.get("expression") or " + ".join(
            f"{op.coef!r}*{_quoted(op.ref)}" for op in operands)
        comp = Composition(repo, expression, operands, params, lam=float(lam),
                           include=ext.get("include"), exclude=ext.get("exclude"),
                           allow_base_mismatch=allow_base_mismatch,
                           tensor_params=tensor_params, device=device,
                           base_weights=base_ck if tv_method in WEIGHT_SPACE_METHODS else None)
        if tensor_params is not None:
            tensor_params.bind([e.name for e in comp.manifest.tensors], comp.names())
        base: Any = base_ck if base_ck is not None else base_ref
        return MergePlan(comp, base, out_dtype or dtype, opened, base_dir)
    except BaseException:
        for ck in opened:
            ck.close()
        raise


def _quoted(ref: str) -> str:
    return ref if re.fullmatch(r"[A-Za-z0-9_.@/-]+", ref) and "/" not in ref else f'"{ref}"'


def _stored_hash(repo: Repo, name: str) -> str:
    from tvreg.repo.bases import resolve

    return resolve(repo, name).base_hash


def write_merge(repo: Repo, plan: MergePlan, output: str, *, format: str | None = None,
                shard_size: Any = None, force: bool = False) -> int:
    """θ_base + merged into ``output`` through ``apply``'s writer: a safetensors file or
    (``format="hf"``, the default without a ``.safetensors`` suffix) a Hugging Face folder
    with its model card, from the plan's base (the vectors' stored base when it names none).
    :func:`check_merge_output` runs first (also before a ``--save``)."""
    from tvreg.compose.apply import apply_to_checkpoint
    from tvreg.repo.bases import open_base

    comp = plan.composition
    fmt = check_merge_output(repo, plan, output, format=format, shard_size=shard_size,
                             force=force)
    ck = open_base(repo, plan.base, comp.base_hash)  # closed when written (plan.close again)
    return apply_to_checkpoint(comp, ck, output, dtype=plan.out_dtype,
                               allow_base_mismatch=comp.allow_base_mismatch, format=fmt,
                               shard_size=shard_size, force=force, base_dir=plan.base_dir)


def check_merge_output(repo: Repo, plan: MergePlan, output: str, *, format: str | None = None,
                       shard_size: Any = None, force: bool = False) -> str:
    """The output format, once ``output`` passed apply's checks (:func:`.apply.check_output`)."""
    from tvreg.compose.apply import check_output

    base = plan.base if isinstance(plan.base, (str, os.PathLike)) else \
        getattr(plan.base, "path", None)
    return check_output(repo, output, format=format,
                        base=base if base is not None and os.path.exists(base) else None,
                        base_dir=plan.base_dir, shard_size=shard_size, force=force)


# --- recipes out ------------------------------------------------------------------------------


def recipe_document(record: Any) -> dict[str, Any]:
    """A saved composition's recipe as a mergekit config (with a ``tvreg`` block of what
    mergekit has no key for); :func:`plan_merge` of it rebuilds the version."""
    if not record.recipe:
        raise InvalidInput(f"{record.name}@{record.version} is not a composition (no recipe)")
    return recipe_config(record.recipe)


def recipe_yaml(record: Any) -> str:
    """:func:`recipe_document` as YAML, each operand's ref and vector id in a comment."""
    recipe_document(record)  # a composition, or InvalidInput
    return recipe_config_yaml(record.recipe, f"# tvreg recipe of {record.name}@"
                                             f"{record.version} (vector {record.vector_id})")


# --- reproduce --------------------------------------------------------------------------------


@dataclass
class ReproduceResult:
    """What :func:`reproduce` found: ``ok`` when every tensor is the stored one bit for bit."""

    ref: str
    vector_id: str
    ok: bool
    tensor: str | None = None
    max_abs_diff: float | None = None
    tensors: int = 0


def reproduce(repo: Repo, ref: str) -> ReproduceResult:
    """Recompute a saved composition from its record's recipe and operands and compare it,
    tensor by tensor, with the stored version (:class:`InvalidInput` if ``ref`` is not one)."""
    import torch

    record, vector_id = repo.resolve_ref(ref)
    if record is None or not record.recipe:
        raise InvalidInput(f"{ref} is not a saved composition (it has no recipe)")
    for op in record.recipe["operands"]:
        if op.get("vector_id") is None:
            raise InvalidInput(f"{ref}: operand {op['ref']} was a checkpoint, not a stored "
                               "vector; it cannot be reproduced from the registry")
    plan = plan_merge(repo, recipe_document(record), allow_base_mismatch=True)
    try:
        stored = repo.get(vector_id)
        comp = plan.composition
        count = 0
        for name, t in comp.iter_tensors(prefetch=False):
            s = stored.tensor(name)
            count += 1
            if s.shape != t.shape or not torch.equal(s.to(t.dtype), t):
                diff = float((s.to(torch.float64) - t.to(torch.float64)).abs().max()) \
                    if s.shape == t.shape else float("inf")
                return ReproduceResult(ref, vector_id, False, name, diff, count)
        return ReproduceResult(ref, vector_id, True, tensors=count)
    finally:
        plan.close()
