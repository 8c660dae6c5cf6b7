"""``tvreg serve``: the read-only web view of a registry (docs/web.md)."""

from __future__ import annotations

import click

from .output import message


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs a token.")
@click.option("--port", type=int, default=8000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token", envvar="TVREG_SERVE_TOKEN", metavar="TOKEN",
              help="Require TOKEN on every request ($TVREG_SERVE_TOKEN); generated and "
                   "printed for a non-loopback --host if not given.")
@click.option("--refresh", "refresh_every", type=float, default=60.0, show_default=True,
              metavar="SECONDS", help="For a registry opened by URL: read it again this often.")
@click.option("--sql-rows", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Most rows the SQL console and /api/sql return.")
@click.option("--sql-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="Stop a console query after this long.")
@click.pass_obj
def serve(reg, host, port, token, refresh_every, sql_rows, sql_timeout):
    """Serve a read-only web view of the registry: pages, heatmaps, lineage, a SQL console and a
    JSON API under /api/ (needs the web extra: pip install 'tvreg[web]')."""
    from tvreg.web.server import serve as run

    def ready(url: str, generated: bool) -> None:
        click.echo(f"tvreg serve: {url}", nl=True)
        if generated:
            message("tvreg serve: a token was generated for this non-loopback address; "
                    "every request needs it (the URL above sets it)")
        message("tvreg serve: read-only; press Ctrl+C to stop")

    run(reg, host, port, token=token, refresh_every=refresh_every, sql_rows=sql_rows,
        sql_timeout=sql_timeout, on_ready=ready)


COMMANDS = [serve]
