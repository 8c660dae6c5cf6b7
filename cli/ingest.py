"""``tvreg ingest``: many versions from a JSON Lines list, resumable."""

from __future__ import annotations

import click

from tvreg.repo.ingest import ENGINES
from tvreg.util import progress

from .options import json_option
from .output import emit_json, message, warnings_to_stderr


@click.command()
@click.argument("list_path", metavar="LIST.jsonl", type=click.Path(dir_okay=False))
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Where the vectors are staged: local = threads of this process; dask = "
                   "tasks of a Dask cluster (the dask extra).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="local: items staged at once (default: the CPU count, at most 8); dask: "
                   "worker processes of a local cluster (default 2).")
@click.option("--scheduler", metavar="ADDRESS",
              help="dask: the scheduler of a running cluster (e.g. tcp://host:8786) instead "
                   "of a local one.")
@click.option("--level", type=int, metavar="L", help="zstd level of compressed streams, as for "
              "create (default 1).")
@click.option("--no-similarities", is_flag=True,
              help="Skip computing the new versions' similarities (`tvreg similarities` does "
                   "it later). Implied by --to.")
@click.option("--to", "to", metavar="REMOTE",
              help="Stage the vectors straight into this remote's store and make the versions "
                   "there, as push would; nothing is written to this registry.")
@json_option
@click.pass_obj
def ingest(reg, list_path, engine, workers, scheduler, level, no_similarities, to, as_json):
    """Create a version for each line of LIST.jsonl (name, base, finetuned or lora, task,
    dataset, lr, steps, meta); rerun it to finish an interrupted or partly failed ingest: items
    that landed before are skipped. Exits 1 if an item failed (the others are stored)."""
    from tvreg.repo.ingest import read_list

    items = read_list(list_path)
    with progress.bar(len(items), "ingest", unit="items") as bar, warnings_to_stderr():
        result = reg.ingest(items, engine=engine, workers=workers, scheduler=scheduler,
                            level=level,
                            similarities=not no_similarities and to is None,
                            on_item=lambda item, outcome: bar.update(1), to=to)
    for item in items:
        if item.line in result.errors:
            message(f"tvreg: line {item.line} ({item.name}): {result.errors[item.line]}")
    where = f" to remote {to}" if to is not None else ""
    message(f"ingest{where}: {result.count('created')} created, {result.count('unchanged')} "
            f"unchanged, {result.count('skipped')} skipped (landed before), "
            f"{result.count('failed')} failed; {result.new_objects} new object(s)")
    if as_json:
        emit_json(result.to_json())
    else:
        for ref in result.refs:
            if ref is not None:
                click.echo(ref)
    if result.count("failed"):
        raise SystemExit(1)


COMMANDS = [ingest]
