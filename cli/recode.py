"""``tvreg recode``: store an existing vector again with a lossy codec, as a new version."""

from __future__ import annotations

import click

from tvreg.util.sizes import human_bytes

from .options import json_option
from .output import emit_json, message, ratio, warnings_to_stderr
from .vectors import codec_note


@click.command()
@click.argument("ref")
@click.option("--codec", required=True, metavar="SPEC", help="bf16, fp16, int8, "
              "topk:density=D, ternary:density=D, svd:rank=R or svd:energy=E.")
@click.option("--name", metavar="NAME", help="Store it under NAME (default: REF's name).")
@click.option("--no-similarities", is_flag=True,
              help="Skip computing similarities with the stored vectors.")
@json_option
@click.pass_obj
def recode(reg, ref, codec, name, no_similarities, as_json):
    """Store REF again with the lossy codec SPEC, as a new version of its name (or NAME).

    The new version keeps REF's metadata; its record names REF's vector as its parent and keeps
    the codec and the error against REF (relative L2, cosine) in its recipe.
    """
    with warnings_to_stderr():
        result = reg.recode(ref, codec, name=name, similarities=not no_similarities)
    m, rec = result.manifest, result.record
    source = rec.recipe.get("source_ref") or rec.recipe["source"][:12]
    if result.created:
        message(f"created {rec.ref} from {source}: vector {rec.vector_id[:12]}, "
                f"{human_bytes(m.raw_bytes)} -> {human_bytes(m.stored_bytes)} "
                f"({ratio(m.raw_bytes, m.stored_bytes)}), {result.new_objects} new object(s)"
                + codec_note(rec))
    else:
        message(f"unchanged: {rec.ref} already holds this recoding of {source}; no new version")
    if as_json:
        emit_json({"ref": rec.ref, "created": result.created, "new_objects": result.new_objects,
                   **rec.to_json()})
    else:
        click.echo(rec.ref)


COMMANDS = [recode]
