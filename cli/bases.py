"""`tvreg base add|ls|show|name|export`: base models' weights stored in the registry."""

from __future__ import annotations

import click

from tvreg.util.sizes import human_bytes

from .options import json_option
from .output import check_stdout_output, emit_json, message, ratio, shown_fields, table


def _moved(name: str, base_hash: str, previous: str | None) -> str:
    if previous is None:
        return f"; named {name}"
    if previous == base_hash:
        return f"; already named {name}"
    return f"; named {name} (moved from {previous[:12]})"


@click.group()
def base():
    """Store base models' weights, so `apply` needs no --base and `push --with-base` shares them."""


@base.command(name="add")
@click.argument("path", metavar="P")
@click.option("--name", metavar="N", help="Name the base N (a movable pointer; names move).")
@json_option
@click.pass_obj
def add(reg, path, name, as_json):
    """Store every tensor of the base checkpoint P under its base hash.

    P is read as by `create`. A base already stored is not stored again.
    """
    result = reg.add_base(path, name=name)
    rec = result.record
    named = _moved(name, rec.base_hash, result.previous) if name else ""
    if result.created:
        message(f"stored base {rec.base_hash[:12]}: {rec.n_tensors} tensor(s), "
                f"{rec.n_params:,} params, {human_bytes(rec.raw_bytes)} -> "
                f"{human_bytes(rec.stored_bytes)} ({ratio(rec.raw_bytes, rec.stored_bytes)}), "
                f"{result.new_objects} new object(s){named}")
    else:
        repaired = (f"; {result.new_objects} missing object(s) restored"
                    if result.new_objects else "")
        message(f"unchanged: base {rec.base_hash[:12]} is already stored, nothing written"
                f"{repaired}{named}")
    if as_json:
        emit_json({"created": result.created, "new_objects": result.new_objects, "name": name,
                   "previous": result.previous, **rec.to_json()})
    else:
        click.echo(rec.base_hash)


@base.command(name="ls")
@json_option
@click.pass_obj
def ls(reg, as_json):
    """List stored bases, oldest first."""
    rows = reg.bases()
    if as_json:
        emit_json(rows)
        return
    table(["HASH", "NAMES", "TENSORS", "PARAMS", "SIZE", "STORED", "RATIO", "VERSIONS", "CREATED"],
          [(r["base_hash"][:12], r["names"], r["n_tensors"], f"{r['n_params']:,}",
            human_bytes(r["raw_bytes"]), human_bytes(r["stored_bytes"]),
            ratio(r["raw_bytes"], r["stored_bytes"]), r["n_versions"], r["created_at"])
           for r in rows])


@base.command()
@click.argument("ref", metavar="HASH|NAME")
@click.option("--tensors", is_flag=True, help="Also list the tensors.")
@json_option
@click.pass_obj
def show(reg, ref, tensors, as_json):
    """Show a stored base: hashes, names, sizes."""
    info = reg.show_base(ref, tensors=tensors)
    if as_json:
        emit_json(info)
        return
    table(["FIELD", "VALUE"], shown_fields(info).items())
    if tensors:
        click.echo()
        table(["TENSOR", "DTYPE", "SHAPE", "STORED", "CHUNKS"],
              [(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "()",
                human_bytes(t["stored_bytes"]), t["chunks"]) for t in info["tensors"]])


@base.command(name="name")
@click.argument("ref", metavar="HASH|NAME")
@click.argument("name")
@click.pass_obj
def name_(reg, ref, name):
    """Point base name NAME at the base HASH|NAME (names move).

    HASH is a stored base's hash prefix, or the base hash (prefix) of stored vectors whose base
    weights are not stored (e.g. `tvreg base name 3f2a9c1d sentence-transformers/all-minilm-l6-v2`:
    model cards then name it as their base_model), or a full 64-digit base hash.
    """
    doc, previous = reg.name_base(ref, name)
    stored = "" if reg.repo.base_record(doc.base_hash) is not None else " (weights not stored)"
    message(f"base {name} -> {doc.base_hash[:12]}{stored}" + (
        "" if previous is None else " (unchanged)" if previous == doc.base_hash
        else f" (moved from {previous[:12]})"))


@base.command()
@click.argument("ref", metavar="HASH|NAME")
@click.argument("output", metavar="OUT.safetensors")
@click.pass_obj
def export(reg, ref, output):
    """Write a stored base to a safetensors file (its tensors bit for bit as stored)."""
    check_stdout_output(output)
    n = reg.export_base(ref, output)
    message(f"wrote {output} ({human_bytes(n)})")


COMMANDS = [base]
