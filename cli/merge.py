"""`tvreg merge` (a mergekit YAML config in) and `tvreg reproduce` (a saved composition
recomputed)."""

from __future__ import annotations

import click

from tvreg.util.sizes import human_bytes

from .options import json_option, parse_meta
from .output import emit_json, message, warnings_to_stderr


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="OUT", help="Merged model: a Hugging Face folder, or a "
              "safetensors file (a .safetensors name or --format safetensors).")
@click.option("--format", "fmt", type=click.Choice(["hf", "safetensors"]),
              help="Output format (default: hf, safetensors for a .safetensors name).")
@click.option("--shard-size", metavar="SIZE",
              help="--format hf: largest shard, e.g. 500MB (default 5GB, as transformers).")
@click.option("--force", is_flag=True, help="--format hf: replace a non-empty output folder.")
@click.option("--save", "save_as", metavar="NAME",
              help="Store the merged vector as a new version of NAME.")
@click.option("--task", help="Task label of the saved version.")
@click.option("--meta", multiple=True, metavar="K=V", help="Free metadata of the saved version.")
@click.option("--no-similarities", is_flag=True,
              help="With --save: skip computing its similarities (`tvreg similarities` later).")
@click.option("--allow-base-mismatch", is_flag=True,
              help="Merge vectors of different bases anyway (with a warning).")
@click.option("--device", metavar="DEV",
              help="Where a spectral method's SVDs run: cpu or cuda[:N].")
@json_option
@click.pass_obj
def merge(reg, config, output, fmt, shard_size, force, save_as, task, meta, no_similarities,
          allow_base_mismatch, device, as_json):
    """Run a mergekit YAML CONFIG: models are registry refs or checkpoint paths."""
    from tvreg.errors import InvalidInput

    if not output and not save_as:
        raise InvalidInput("give -o OUT, --save NAME, or both")
    meta_values = parse_meta(meta)
    with warnings_to_stderr():
        plan = reg.merge_config(config, allow_base_mismatch=allow_base_mismatch, device=device)
        try:
            comp = plan.composition
            message(f"merging {comp.expression} ({comp.params.method}, lambda {comp.lam:g}, "
                    f"{len(comp.operands)} model(s), {len(comp.entries)} tensor(s))")
            result = None
            if output:  # bad output: refused before anything is saved
                reg.check_merge_output(plan, output, format=fmt, shard_size=shard_size,
                                       force=force)
            if save_as:
                result = reg.save_composition(save_as, comp, task=task, meta=meta_values,
                                              similarities=not no_similarities)
                state = "saved" if result.created else "unchanged: already stored as"
                message(f"{state} {result.ref} (vector {result.record.vector_id[:12]})")
            if output:
                n = reg.write_merge(plan, output, format=fmt, shard_size=shard_size,
                                    force=force)
                message(f"wrote {output} ({human_bytes(n)})")
        finally:
            plan.close()
    if as_json:
        emit_json({"expression": comp.expression, "recipe": comp.recipe, "output": output,
                   "ref": result.ref if result else None,
                   "vector_id": result.record.vector_id if result else None})
    elif result:
        click.echo(result.ref)


@click.command()
@click.argument("ref")
@json_option
@click.pass_obj
def reproduce(reg, ref, as_json):
    """Recompute a saved composition from its recipe; exit 1 if a tensor differs."""
    result = reg.reproduce(ref)
    if as_json:
        emit_json({"ref": result.ref, "vector_id": result.vector_id, "ok": result.ok,
                   "tensor": result.tensor, "max_abs_diff": result.max_abs_diff})
    elif result.ok:
        click.echo(result.vector_id)
    else:
        click.echo(f"{result.ref}: tensor {result.tensor} differs (max abs difference "
                   f"{result.max_abs_diff:g})")
    if not result.ok:
        raise SystemExit(1)


COMMANDS = [merge, reproduce]
