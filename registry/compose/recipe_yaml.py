"""A recipe (:attr:`Composition.recipe`, as a version record keeps it) as a mergekit YAML
config: ``models`` by vector id (the ref in a comment), mergekit's parameters, and a ``tvreg``
block for what mergekit has no key for (rule, expression, seed, trim, majority sign, Iso-CTS's
common fraction, consensus's k and TALL-mask λ, filters).
``tvreg merge`` of it (:mod:`.mergekit`) rebuilds the composition; docs/interop.md."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["recipe_config", "recipe_config_yaml"]

#: method parameters mergekit has keys for (top-level ``parameters``)
MERGEKIT_PARAMS = ("gamma", "epsilon", "t", "filter_wise", "nuslerp_flatten", "nuslerp_row_wise",
                   "max_iter", "tol")


def recipe_config(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe (:attr:`Composition.recipe`, as a version record keeps it) as a mergekit
    config."""
    method = dict(recipe["method"])
    rule = method.get("rule", "peft")
    name = method["method"]
    doc: dict[str, Any] = {"merge_method": name}
    models = []
    extra = recipe.get("parameters")
    for i, op in enumerate(recipe["operands"]):
        ref = op["ref"] if op.get("vector_id") is None else op["vector_id"]
        params = dict(extra["models"][i]) if extra else {"weight": op["coef"]}
        models.append({"model": ref, "parameters": params})
    doc["models"] = models
    top: dict[str, Any] = dict(extra["parameters"]) if extra else {}
    if method.get("density") is not None and not extra:  # else: in the per-tensor settings
        top["density"] = method["density"]
    for key in MERGEKIT_PARAMS:  # the method's own mergekit parameters, unless per tensor
        if method.get(key) is not None and key not in top:
            top[key] = method[key]
    if rule == "mergekit":
        top["normalize"] = method["normalize"]
        if name != "task_arithmetic":
            top["rescale"] = method["rescale"]
    if recipe.get("lambda", 1.0) != 1.0:
        top["lambda"] = recipe["lambda"]
    if top:
        doc["parameters"] = top
    tv: dict[str, Any] = {"rule": rule, "expression": recipe["expression"]}
    for key in ("seed", "trim", "majority_sign", "common_fraction", "k", "tall_mask_lambda"):
        if key in method:
            tv[key] = method[key]
    for key in ("include", "exclude"):
        if recipe.get(key) is not None:
            tv[key] = recipe[key]
    doc["tvreg"] = tv
    return doc


def recipe_config_yaml(recipe: Mapping[str, Any], head: str) -> str:
    """:func:`recipe_config` as YAML after the comment line ``head``, each operand's ref in a
    comment after its vector id."""
    import yaml

    doc = recipe_config(recipe)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    refs = {op["vector_id"]: op["ref"] for op in recipe["operands"] if op.get("vector_id")}
    lines = []
    for line in text.splitlines():
        m = re.match(r"^(- model: |\s*- model: )(\S+)$", line)
        if m and m.group(2) in refs:
            line += f"  # {refs[m.group(2)]}"
        lines.append(line)
    return head + "\n" + "\n".join(lines) + "\n"
