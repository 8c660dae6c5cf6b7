"""``compare-methods``: which merge method for these vectors, scored by the user's command."""

from __future__ import annotations

import click

from .expression import ExpressionCommand
from .options import json_option
from .output import emit_json, message, table, warnings_to_stderr


def parse_lambdas(text: str | None) -> list[float] | None:
    """``--lambdas 0.2,0.4,1`` as floats (None: the default grid)."""
    from tvreg.errors import InvalidInput

    if text is None:
        return None
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise InvalidInput(f"--lambdas {text!r}: {item.strip()!r} is not a number "
                               "(e.g. --lambdas 0.2,0.4,0.6)") from None
    return values


def _params(row: dict) -> str:
    label = row["label"]
    return label[len(row["method"]) + 2:-1] if label != row["method"] else ""


def _score(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in value.items())
    return f"{value:.4f}"


@click.command("compare-methods", cls=ExpressionCommand)
@click.argument("expression")
@click.option("--eval-cmd", required=True, metavar="CMD",
              help="Validation score command: {model} is replaced by the path of a safetensors "
                   "file of θ_base + λ·merged; the last line of its stdout is the score.")
@click.option("--test-cmd", metavar="CMD",
              help="Test score command, run once per method at its chosen λ.")
@click.option("--base", metavar="P", help="Base checkpoint, or a stored base's name or hash "
              "prefix (default: the stored base of the vectors' base hash).")
@click.option("--method", "methods", multiple=True, metavar="M[:K=V,…]",
              help="A method to compare, with its parameters (ties:density=0.3), repeatable. "
                   "Default: task_arithmetic, ties, dare_ties, breadcrumbs, tsv, iso_c, "
                   "iso_cts, consensus.")
@click.option("--lambdas", metavar="L,L,…",
              help="The λ grid (default 0.1,0.2,0.3,0.4,0.5,0.6,0.8,1,1.2,1.5,2).")
@click.option("--include", metavar="REGEX", help="Only tensors whose name matches.")
@click.option("--exclude", metavar="REGEX", help="Leave out tensors whose name matches.")
@click.option("--allow-base-mismatch", is_flag=True,
              help="Warn instead of refusing vectors of different base models.")
@click.option("--device", metavar="DEV",
              help="Where the spectral methods' SVDs run: cpu or cuda[:N].")
@click.option("--work-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Where the temporary model files go (default: $TMPDIR).")
@json_option
@click.pass_obj
def compare_methods(reg, expression, eval_cmd, test_cmd, base, methods, lambdas, include,
                    exclude, allow_base_mismatch, device, work_dir, as_json):
    """Compare merge methods on EXPRESSION: λ per method chosen by --eval-cmd's score."""
    grid = parse_lambdas(lambdas)

    def done(row: dict) -> None:
        scores = ", ".join(f"{s['lambda']:g}: {s['score']:.4f}" for s in row["scores"])
        message(f"{row['label']}: merged in {row['seconds']:.1f}s; best lambda "
                f"{row['best_lambda']:g} (validation {row['validation']:.4f}; {scores})")

    with warnings_to_stderr():
        result = reg.compare_methods(expression, eval_cmd, methods=list(methods) or None,
                                     grid=grid, base=base, test=test_cmd, include=include,
                                     exclude=exclude, allow_base_mismatch=allow_base_mismatch,
                                     device=device, work_dir=work_dir, on_row=done)
    edges = [r["label"] for r in result["rows"] if r["at_edge"]]
    if edges:
        message(f"note: the best lambda is at the edge of the grid for {', '.join(edges)}: "
                "a wider --lambdas may find a better one")
    if as_json:
        emit_json(result)
        return
    table(["method", "params", "lambda", "validation", "test", "merge_s"],
          [[r["method"], _params(r), f"{r['best_lambda']:g}", _score(r["validation"]),
            _score(r["test"]), f"{r['seconds']:.2f}"] for r in result["rows"]])
    best = result["best"]
    click.echo(f"best: {best['label']}, lambda {best['best_lambda']:g}, validation "
               f"{best['validation']:.4f}")


COMMANDS = [compare_methods]
