"""``tvreg sql``: read-only SQL over the catalog."""

from __future__ import annotations

import click

from .options import json_option
from .output import emit_json, table


@click.command()
@click.argument("query")
@click.option("--remote", metavar="NAME", help="Query remote NAME's index instead (tables "
              "versions and tags, view latest), without pulling.")
@json_option
@click.pass_obj
def sql(reg, query, remote, as_json):
    """Run a read-only SQL QUERY (DuckDB dialect) on the catalog.

    Tables: versions, vectors, tensors, tags; view: latest. See docs/sql.md.
    """
    columns, rows = reg.remote_sql_table(remote, query) if remote else reg.sql_table(query)
    if as_json:
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
    else:
        table(columns, rows)


COMMANDS = [sql]
