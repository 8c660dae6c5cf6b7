"""Composition commands: compose (a merged vector) and apply (merged model weights)."""

from __future__ import annotations

import click

from tvreg.util.sizes import human_bytes

from .expression import ExpressionCommand
from .options import json_option, parse_meta
from .output import check_stdout_output, emit_json, message, warnings_to_stderr

METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "tsv", "iso_c",
           "iso_cts", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "slerp",
           "nuslerp", "karcher", "model_stock", "consensus"]
#: the options of merge_options that are MergeParams fields (None: the method's default)
PARAM_OPTIONS = ("density", "seed", "trim", "majority_sign", "common_fraction", "rule",
                 "normalize", "rescale", "gamma", "epsilon", "t", "k", "tall_mask_lambda",
                 "filter_wise")


def merge_options(fn):
    """Options shared by compose and apply (see docs/composition.md)."""
    options = [
        click.option("--method", default="task_arithmetic", show_default=True,
                     type=click.Choice(METHODS), help="Merge method."),
        click.option("--density", type=float,
                     help="Fraction kept (ties, dare_*, magnitude_prune, breadcrumbs*, della*)."),
        click.option("--seed", type=int,
                     help="Seed of the random drops (dare_*, della*) [default: 0]."),
        click.option("--trim", type=click.Choice(["tensor", "global"]),
                     help="Trim by magnitude per tensor or over the whole vector "
                          "[default: tensor]."),
        click.option("--majority-sign", type=click.Choice(["total", "frequency"]),
                     help="Sign election (ties, dare_ties, breadcrumbs_ties, della) "
                          "[default: total]."),
        click.option("--rule", type=click.Choice(["peft", "mergekit"]),
                     help="ties, dare_*: peft's rules (default) or mergekit's weighted ones."),
        click.option("--normalize/--no-normalize", default=None,
                     help="rule mergekit: divide by the (agreeing) weights' sum "
                          "[default: mergekit's for the method]."),
        click.option("--rescale/--no-rescale", default=None,
                     help="rule mergekit: rescale the kept entries to the delta's L1 norm "
                          "[default: mergekit's for the method]."),
        click.option("--common-fraction", type=float,
                     help="iso_cts: share of the directions kept common [default: 0.8]."),
        click.option("--gamma", type=float,
                     help="breadcrumbs*: share of the largest magnitudes dropped "
                          "[default: 0.01]."),
        click.option("--epsilon", type=float,
                     help="della*: keep probabilities density ± epsilon by rank "
                          "[default: 0.15]."),
        click.option("--t", "t", type=float,
                     help="slerp: interpolation point (0: the first, 1: the second)."),
        click.option("--k", "k", type=int,
                     help="consensus: least number of tasks' TALL masks [default: 2]."),
        click.option("--tall-mask-lambda", type=float,
                     help="consensus: the TALL masks' lambda [default: 0.6]."),
        click.option("--filter-wise", is_flag=True, default=None,
                     help="model_stock: one ratio per row, not per tensor."),
        click.option("--device", metavar="DEV",
                     help="Where the spectral methods' SVDs run: cpu or cuda[:N]."),
        click.option("--lambda", "lam", type=float, default=1.0, show_default=True,
                     help="Global scale: θ = θ_base + λ·merged."),
        click.option("--include", metavar="REGEX", help="Only tensors whose name matches."),
        click.option("--exclude", metavar="REGEX", help="Leave out tensors whose name matches."),
        click.option("--allow-base-mismatch", is_flag=True,
                     help="Warn instead of refusing vectors of different base models."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _resolve(reg, expression, kw):
    comp = reg.resolve(expression, method=kw["method"], lam=kw["lam"], include=kw["include"],
                       exclude=kw["exclude"], allow_base_mismatch=kw["allow_base_mismatch"],
                       device=kw["device"], **{key: kw[key] for key in PARAM_OPTIONS})
    report = comp.dtype_report
    if report:  # compatible (names and shapes decide), but said: the dtypes are not one
        listed = ", ".join(f"{r['ref']} ({r['dtypes']})" for r in report["operands"])
        message(f"tvreg: note: operands differ in dtype: {listed}; summed in "
                f"{report['summed_in']}")
    return comp


@click.command(cls=ExpressionCommand)
@click.argument("expression")
@click.option("-o", "--output", metavar="F.safetensors", help="Write the composed vector here.")
@click.option("--save", "save_as", metavar="NAME", help="Store it as a new version of NAME.")
@click.option("--task", help="Task label of the saved version.")
@click.option("--meta", multiple=True, metavar="K=V", help="Free metadata of the saved version.")
@click.option("--no-similarities", is_flag=True,
              help="With --save: skip computing its similarities (`tvreg similarities` later).")
@merge_options
@json_option
@click.pass_obj
def compose(reg, expression, output, save_as, task, meta, no_similarities, as_json, **kw):
    """Compose stored vectors: EXPRESSION like '0.5*sentiment + topic@2 - toxicity@prod'."""
    from tvreg.compose.apply import check_output_path
    from tvreg.errors import InvalidInput

    if not output and not save_as:
        raise InvalidInput("give -o FILE, --save NAME, or both")
    check_stdout_output(output, taken_by="--json" if as_json else
                        "--save (it prints the saved ref)" if save_as else None)
    if output:
        check_output_path(output, registry=getattr(reg, "root", None))
    meta_values = parse_meta(meta)
    with warnings_to_stderr():
        comp = _resolve(reg, expression, kw)
        message(f"composing {comp.expression} ({kw['method']}, lambda {comp.lam:g}, "
                f"{len(comp.operands)} vector(s), {len(comp.entries)} tensor(s))")
        result = None
        if save_as:
            result = reg.save_composition(save_as, comp, task=task, meta=meta_values,
                                          similarities=not no_similarities)
            state = "saved" if result.created else "unchanged: already stored as"
            message(f"{state} {result.ref} (vector {result.record.vector_id[:12]})")
        if output:
            n = comp.save(output)
            message(f"wrote {output} ({human_bytes(n)})")
    if as_json:
        emit_json({"expression": comp.expression, "recipe": comp.recipe, "output": output,
                   "dtypes": comp.dtype_report,
                   "ref": result.ref if result else None,
                   "vector_id": result.record.vector_id if result else None})
    elif result:
        click.echo(result.ref)


@click.command(cls=ExpressionCommand)
@click.argument("expression")
@click.option("--base", metavar="P", help="Base checkpoint to apply to (a Hugging Face model "
              "folder for --format hf), or a stored base's name or hash prefix (default: the "
              "stored base of the vectors' base hash).")
@click.option("-o", "--output", required=True, metavar="OUT",
              help="Merged weights: a model folder, or F.safetensors.")
@click.option("--format", "fmt", type=click.Choice(["hf", "safetensors"]),
              help="hf: a Hugging Face model folder (config, tokenizer, shards, model card); "
                   "safetensors: one file. Default: hf unless OUT ends in .safetensors.")
@click.option("--shard-size", metavar="SIZE",
              help="--format hf: largest shard, e.g. 500MB or 2GiB (default 5GB, as "
                   "transformers).")
@click.option("--force", is_flag=True, help="--format hf: replace a non-empty output folder.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="dtype of floating tensors in the output (default: the base's).")
@merge_options
@click.pass_obj
def apply(reg, expression, base, output, fmt, shard_size, force, dtype, **kw):
    """Write base + composed vector as model weights (same keys as the base).

    Without --base, the base is the stored base (`tvreg base add`) of the vectors' base hash.
    """
    from tvreg.compose.apply import output_format

    fmt = output_format(output, fmt)
    if fmt == "safetensors":
        check_stdout_output(output)
    with warnings_to_stderr():
        comp = _resolve(reg, expression, kw)
        n = reg.apply(comp, base, output, dtype=dtype,
                      allow_base_mismatch=kw["allow_base_mismatch"], format=fmt,
                      shard_size=shard_size, force=force)
    scale = "" if comp.lam == 1.0 else f"{comp.lam:g}·"
    what = "model folder " if fmt == "hf" else ""
    message(f"wrote {what}{output} ({human_bytes(n)}): "
            f"{base or 'stored base ' + comp.base_hash[:12]} + {scale}[{comp.expression}] "
            f"({kw['method']})")


COMMANDS = [compose, apply]
