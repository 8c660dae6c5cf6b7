"""Commands on vectors: create, ls, show, log, tag, export."""

from __future__ import annotations

import click

from tvreg.util.sizes import human_bytes

from .options import json_option, parse_meta
from .output import (
    check_stdout_output,
    emit_json,
    message,
    ratio,
    shown_fields,
    table,
    warnings_to_stderr,
)


def codec_note(rec) -> str:
    """``, codec int8 (rel L2 0.0041, cosine 0.99999)`` for a version stored with a codec."""
    from tvreg.catalog.db import codec_columns
    from tvreg.util.listings import listing

    spec, rel, cos = codec_columns(rec)
    if spec is None:
        return ""
    kept = rec.recipe.get("lossless") or []
    lossless = (f", {len(kept)} tensor(s) kept lossless: {listing(kept, 3)}"
                if kept else "")
    return (f", codec {spec} (rel L2 {'n/a' if rel is None else f'{rel:.3g}'}, "
            f"cosine {'n/a' if cos is None else f'{cos:.6f}'}){lossless}")


@click.command()
@click.argument("name")
@click.option("--base", required=True, metavar="P", help="Pre-trained checkpoint.")
@click.option("--finetuned", metavar="P", help="Fine-tuned checkpoint.")
@click.option("--lora", metavar="DIR", help="A PEFT LoRA adapter directory instead of --finetuned: "
              "the vector is scale·B·A on the adapted tensors.")
@click.option("--task", help="Task the model was fine-tuned for.")
@click.option("--dataset", help="Dataset it was fine-tuned on.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--steps", type=int, help="Training steps.")
@click.option("--meta", multiple=True, metavar="K=V", help="Free metadata (repeatable).")
@click.option("--allow-nonfinite", is_flag=True, help="Store NaN/Inf values instead of refusing.")
@click.option("--exact", is_flag=True,
              help="Exact mode: store the bit differences of FINETUNED over BASE, so that "
                   "`tvreg apply NAME` rebuilds FINETUNED bit for bit (the base is stored too).")
@click.option("--codec", metavar="SPEC", help="Store with a lossy codec: bf16, fp16, int8, "
              "topk:density=D, ternary:density=D, svd:rank=R or svd:energy=E (default: "
              "lossless). The error against the exact vector is recorded.")
@click.option("--include", metavar="REGEX", help="Only tensors whose name matches (Python "
              "re.search); base tensors left out are stored as zero deltas, fine-tuned-only "
              "ones ignored.")
@click.option("--exclude", metavar="REGEX", help="Leave out tensors whose name matches (an "
              "extra head, a missing buffer).")
@click.option("--no-similarities", is_flag=True,
              help="Skip computing similarities with the stored vectors (`tvreg similarities` "
                   "does it later).")
@json_option
@click.pass_obj
def create(reg, name, base, finetuned, lora, task, dataset, lr, steps, meta, allow_nonfinite,
           exact, codec, include, exclude, no_similarities, as_json):
    """Store the task vector FINETUNED − BASE as a new version of NAME.

    P is a .safetensors file, a folder of safetensors shards with its index JSON, or a PyTorch
    state dict (.pt/.bin, loaded with weights_only=True). With --lora DIR (adapter_config.json
    + adapter_model.safetensors, as PEFT saves them) instead of --finetuned, the vector is
    scale·B·A per adapted linear layer and zero elsewhere.
    """
    if (finetuned is None) == (lora is None):
        raise click.UsageError("give --finetuned P or --lora DIR (one of them)")
    with warnings_to_stderr():
        result = reg.create(name, base, finetuned, lora=lora, task=task, dataset=dataset, lr=lr,
                            steps=steps, meta=parse_meta(meta), allow_nonfinite=allow_nonfinite,
                            similarities=not no_similarities, exact=exact, codec=codec,
                            include=include, exclude=exclude)
    m, rec = result.manifest, result.record
    left_out = rec.metadata.meta.get("create.left_out") if (include or exclude) else None
    if result.created:
        message(f"created {rec.ref}: vector {rec.vector_id[:12]}, {m.n_params:,} params, "
                f"{human_bytes(m.raw_bytes)} -> {human_bytes(m.stored_bytes)} "
                f"({ratio(m.raw_bytes, m.stored_bytes)}), {result.new_objects} new object(s)"
                + (f", {len(m.skipped)} non-floating tensor(s) left out" if m.skipped else "")
                + (f", {left_out} tensor(s) left out by --include/--exclude" if left_out else "")
                + codec_note(rec))
    else:
        message(f"unchanged: {rec.ref} already holds this content with the same metadata; "
                "no new version")
    if as_json:
        emit_json({"ref": rec.ref, "created": result.created, "new_objects": result.new_objects,
                   **rec.to_json()})
    else:
        click.echo(rec.ref)


@click.command(name="ls")
@click.option("--all", "all_versions", is_flag=True, help="Every version, not only the latest.")
@click.option("--remote", metavar="NAME", help="List what remote NAME holds (from its index; "
              "no tensors are read).")
@json_option
@click.pass_obj
def ls(reg, all_versions, remote, as_json):
    """List vectors (latest version of each name)."""
    rows = (reg.remote_ls(remote, all_versions=all_versions) if remote
            else reg.ls(all_versions=all_versions))
    if as_json:
        emit_json(rows)
        return
    table(["REF", "ID", "TASK", "DATASET", "LR", "STEPS", "PARAMS", "STORED", "RATIO", "TAGS",
           "BASE", "CREATED"],
          [(f"{r['name']}@{r['version']}", r["vector_id"][:12], r["task"], r["dataset"], r["lr"],
            r["steps"], f"{r['n_params']:,}", human_bytes(r["stored_bytes"]),
            ratio(r["raw_bytes"], r["stored_bytes"]), r["tags"],
            (r.get("base_names") or [r["base_hash"][:12]])[0], r["created_at"]) for r in rows])


@click.command()
@click.argument("ref")
@click.option("--tensors", is_flag=True, help="Also list the tensors.")
@click.option("--recipe", is_flag=True,
              help="Print a saved composition's recipe as a mergekit YAML config.")
@json_option
@click.pass_obj
def show(reg, ref, tensors, recipe, as_json):
    """Show a version: ids, metadata, lineage, sizes."""
    if recipe:
        click.echo(reg.recipe_yaml(ref), nl=False)
        return
    info = reg.show(ref, tensors=tensors)
    if as_json:
        emit_json(info)
        return
    table(["FIELD", "VALUE"], shown_fields(info).items())
    if tensors:
        click.echo()
        table(["TENSOR", "DTYPE", "SOURCE", "FINE-TUNED", "SHAPE", "STORED", "CHUNKS", "CODEC"],
              [(t["name"], t["dtype"], t["source_dtype"], t["finetuned_dtype"],
                "x".join(map(str, t["shape"])) or "()",
                human_bytes(t["stored_bytes"]), t["chunks"], t["codec"])
               for t in info["tensors"]])


@click.command()
@click.argument("name")
@json_option
@click.pass_obj
def log(reg, name, as_json):
    """History of NAME, newest first."""
    rows = reg.log(name)
    if as_json:
        emit_json(rows)
        return
    table(["REF", "ID", "TASK", "DATASET", "LR", "STEPS", "CODEC", "META", "TAGS", "CREATED"],
          [(f"{r['name']}@{r['version']}", r["vector_id"][:12], r["task"], r["dataset"], r["lr"],
            r["steps"], r["codec_spec"], r["meta"] or "", r["tags"], r["created_at"])
           for r in rows])


@click.command()
@click.argument("ref")
@click.argument("tag")
@click.pass_obj
def tag(reg, ref, tag):
    """Point NAME@TAG at the version REF names (tags move; versions never change)."""
    rec, previous = reg.tag(ref, tag)
    moved = "" if previous is None else (
        f" (moved from @{previous})" if previous != rec.version else " (unchanged)")
    message(f"{rec.name}@{rec.tag} -> {rec.name}@{rec.version}{moved}")


@click.command()
@click.argument("ref")
@click.option("-o", "--output", required=True, metavar="PATH",
              help="File to write (--format safetensors) or adapter folder (--format peft).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "peft"]),
              default="safetensors", show_default=True,
              help="safetensors: the vector as stored; peft: a PEFT LoRA adapter folder.")
@click.option("--rank", type=int, metavar="R", help="peft: rank per module (capped at each "
              "module's).")
@click.option("--energy", type=float, metavar="E", help="peft: per module, the smallest rank "
              "keeping fraction E (0 < E <= 1) of its squared norm.")
@click.option("--include", metavar="REGEX", help="peft: only tensors whose name matches.")
@click.option("--force", is_flag=True, help="peft: replace a non-empty output folder.")
@json_option
@click.pass_obj
def export(reg, ref, output, fmt, rank, energy, include, force, as_json):
    """Write the task vector REF to a safetensors file (bit for bit what was stored), or with
    --format peft as a PEFT LoRA adapter (REF may be an expression such as '0.5*a + b')."""
    from tvreg.errors import InvalidInput

    if fmt == "safetensors":
        if rank is not None or energy is not None or include is not None or force or as_json:
            raise InvalidInput("--rank, --energy, --include, --force and --json go with "
                               "--format peft")
        check_stdout_output(output)
        n = reg.export(ref, output)
        message(f"wrote {output} ({human_bytes(n)})")
        return
    report = reg.export_peft(ref, output, rank=rank, energy=energy, include=include,
                             force=force)
    rows = [(m["module"], "x".join(map(str, m["shape"])), str(m["rank"]),
             f"{m['rel_error']:.3g}", "yes" if m["exact_factors"] else "")
            for m in report["modules"]]
    cols = ["MODULE", "SHAPE", "RANK", "REL ERROR", "FACTORS KEPT"]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    for r in [cols, *rows]:
        message("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    message(f"wrote {output}: {len(report['modules'])} module(s), total rank "
            f"{report['total_rank']}, rel error {report['rel_error']:.3g} (modules "
            f"{report['rel_error_modules']:.3g}), not carried {report['not_carried_share']:.3g} "
            f"of the squared norm ({len(report['not_carried'])} tensor(s))")
    if as_json:
        emit_json(report)


COMMANDS = [create, ls, show, log, tag, export]
