"""The model card (``README.md``) of a model folder tvreg writes (issue 16, item 2).

The Hugging Face Hub reads a card's YAML front matter: ``base_model`` (the base's recorded
name, ``tvreg base name``; left out when the base has none), ``base_model_relation``
(``merge`` for a composition; ``finetune`` for one vector applied at weight 1, which rebuilds
its fine-tuned model), ``library_name`` and ``tags``. The body gives the recipe (expression,
method and every parameter, seed, λ, filters), a table of the operands (ref, vector id, task,
dataset, learning rate, steps) and the recipe file that reproduces the weights. Every text that
comes from users (names, tasks, datasets, the expression) is escaped for Markdown tables and
code spans; the front matter is written by a YAML dumper, never by string formatting.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.compose.composition import Composition

__all__ = ["adapter_card", "library_of", "model_card", "relation_of"]


def relation_of(comp: Composition) -> str:
    """``finetune`` when the weights are one vector at weight 1 (its fine-tuned model), else
    ``merge``."""
    single = (len(comp.operands) == 1 and comp.params.method == "task_arithmetic"
              and comp.operands[0].coef * comp.lam == 1.0 and not comp.include
              and not comp.exclude)
    return "finetune" if single else "merge"


def library_of(base_dir: str | os.PathLike[str] | None) -> str:
    """The library that loads the folder: sentence-transformers when the base folder is one
    (``modules.json``), else transformers."""
    if base_dir is not None and os.path.isfile(os.path.join(os.fspath(base_dir), "modules.json")):
        return "sentence-transformers"
    return "transformers"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes, backslashes and line breaks cannot break the table, and
    HTML in it is shown as text."""
    if value is None:
        return ""
    text = str(value)
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("`", "\\`"),
                 ("*", "\\*"), ("_", "\\_"), ("[", "\\["), ("]", "\\]")):
        text = text.replace(a, b)
    return " ".join(text.split())


def _code(text: str) -> str:
    """``text`` as an inline code span whatever backticks it holds."""
    text = " ".join(str(text).split())
    fence = "`"
    while fence in text:
        fence += "`"
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") \
        else f"{fence}{text}{fence}"


def _fenced(text: str, info: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def model_card(comp: Composition, *, title: str, base_name: str | None,
               library_name: str = "transformers", recipe_file: str | None = None,
               recipe_format: str = "json") -> str:
    """The card of a folder holding θ_base + merged for ``comp``. ``recipe_file`` is the text of
    the recipe that rebuilds it (default: the canonical JSON recipe), shown as ``recipe_format``."""
    import yaml

    relation = relation_of(comp)
    front: dict[str, Any] = {}
    if base_name:
        front["base_model"] = base_name
    front["base_model_relation"] = relation
    front["library_name"] = library_name
    front["tags"] = ["tvreg", "merge"] if relation == "merge" else ["tvreg", "task-vector"]
    if relation == "merge":
        front["tags"].append(comp.params.method.replace("_", "-"))
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    recipe = comp.recipe
    params = {k: v for k, v in recipe["method"].items() if k != "method"}
    base = (f"{_code(base_name)} (base hash {_code(comp.base_hash[:12])})" if base_name
            else f"base hash {_code(comp.base_hash)} (no recorded name: "
                 f"`tvreg base name {comp.base_hash[:12]} ORG/MODEL` records one)")
    lines = [
        "---", head.rstrip(), "---", "",
        f"# {_cell(title)}", "",
        f"Weights written by tvreg as θ = θ_base + λ·{comp.params.method}"
        f"(τ₁, …, τₙ): the {'merge' if relation == 'merge' else 'fine-tuned model'} of "
        f"{len(comp.operands)} task vector(s) of {base}.", "",
        "## Recipe", "",
        "| field | value |", "|---|---|",
        f"| expression | {_cell(comp.expression)} |",
        f"| method | {_cell(comp.params.method)} |",
        *[f"| {_cell(k)} | {_cell(v)} |" for k, v in params.items()],
        f"| lambda | {comp.lam:g} |",
        f"| include | {_cell(comp.include)} |",
        f"| exclude | {_cell(comp.exclude)} |", "",
        "## Operands", "",
        "| ref | coefficient | vector id | task | dataset | lr | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in comp.operands:
        meta = op.vector.record.metadata if op.vector.record else None
        lines.append("| " + " | ".join([
            _cell(op.vector.ref if op.vector.record else op.ref), f"{op.coef:g}",
            _code(op.vector.vector_id),
            _cell(meta.task if meta else None), _cell(meta.dataset if meta else None),
            _cell(f"{meta.lr:g}" if meta and meta.lr is not None else None),
            _cell(meta.steps if meta else None)]) + " |")
    text = recipe_file if recipe_file is not None else \
        json.dumps(recipe, indent=2, sort_keys=True, ensure_ascii=False)
    lines += ["", "## Recipe file", "",
              "Rebuilds these weights from the registry (`tvreg merge` reads it):" if
              recipe_format == "yaml" else
              "The recipe as tvreg records it (also in every weights file's `tvreg.recipe` "
              "metadata):", "",
              _fenced(text, recipe_format), ""]
    return "\n".join(lines)


def adapter_card(*, title: str, ref: str, base_hash: str, base_name: str | None,
                 operands: list[tuple[float, Any]], report: dict[str, Any],
                 mode: dict[str, Any]) -> str:
    """The card of a PEFT LoRA adapter folder (``export --format peft``): ``base_model`` and
    ``base_model_relation: adapter``, ``library_name: peft``; the source, its operands, the
    rank choice and the adapter's error."""
    import yaml

    front: dict[str, Any] = {}
    if base_name:
        front["base_model"] = base_name
    front["base_model_relation"] = "adapter"
    front["library_name"] = "peft"
    front["tags"] = ["tvreg", "lora", "task-vector"]
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    base = (f"{_code(base_name)} (base hash {_code(base_hash[:12])})" if base_name
            else f"base hash {_code(base_hash)} (no recorded name: "
                 f"`tvreg base name {base_hash[:12]} ORG/MODEL` records one)")
    choice = (f"rank {mode['rank']} per module (capped at what a module allows)"
              if mode.get("rank") is not None
              else f"per module, the smallest rank keeping {mode.get('energy')} of its energy")
    lines = [
        "---", head.rstrip(), "---", "",
        f"# {_cell(title)}", "",
        f"A LoRA adapter written by tvreg from {_code(ref)}, a task vector of {base}: each "
        "2-D weight delta as B·A by truncated SVD (or from the LoRA factors it was stored "
        f"with). Ranks: {choice}" + (f", modules matching {_code(mode['include'])}"
                                    if mode.get("include") else "") + ".", "",
        "| measure | value |", "|---|---|",
        f"| modules | {len(report['modules'])} |",
        f"| ranks | {_cell(', '.join(map(str, report['ranks'])))} (total "
        f"{report['total_rank']}) |",
        f"| relative error over the modules | {report['rel_error_modules']:.4g} |",
        f"| relative error over the vector | {report['rel_error']:.4g} |",
        f"| share of the vector not carried (1-D tensors, excluded modules) | "
        f"{report['not_carried_share']:.4g} |", "",
        "## Operands", "",
        "| ref | coefficient | vector id | task | dataset | lr | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for coef, vec in operands:
        meta = vec.record.metadata if vec.record else None
        lines.append("| " + " | ".join([
            _cell(vec.ref), f"{coef:g}", _code(vec.vector_id),
            _cell(meta.task if meta else None), _cell(meta.dataset if meta else None),
            _cell(f"{meta.lr:g}" if meta and meta.lr is not None else None),
            _cell(meta.steps if meta else None)]) + " |")
    lines.append("")
    return "\n".join(lines)
