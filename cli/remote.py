"""`tvreg remote add|ls|rm` (named remotes, fsspec URLs kept in config.json) and `tvreg push`."""

from __future__ import annotations

import json

import click

from .options import json_option
from .output import emit_json, human_bytes, message, table


@click.group()
def remote():
    """Manage remotes: where vectors are shared (a folder, s3://, memory://, http(s)://…)."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option, repeatable (e.g. endpoint_url=http://…). Never "
                   "credentials: they come from the backend's usual sources.")
@click.pass_obj
def add(reg, name, url, options):
    """Add remote NAME at URL."""
    from tvreg.remotes import parse_options

    r = reg.add_remote(name, url, parse_options(options))
    message(f"added remote {r.name}: {r.url}" + ("" if r.writable else " (read-only: pull only)"))


@remote.command(name="ls")
@json_option
@click.pass_obj
def ls(reg, as_json):
    """List remotes."""
    remotes = reg.remotes()
    if as_json:
        emit_json([{"name": r.name, **r.to_json(), "writable": r.writable}
                   for r in remotes.values()])
        return
    table(["name", "url", "options", "access"],
          [(r.name, r.url, " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                                    for k, v in sorted(r.options.items())),
            "read-write" if r.writable else "read-only") for r in remotes.values()])


@remote.command(name="rm")
@click.argument("name")
@click.pass_obj
def rm(reg, name):
    """Remove remote NAME (its data is left where it is)."""
    r = reg.remove_remote(name)
    message(f"removed remote {r.name} ({r.url}); nothing was deleted there")



@click.command()
@click.argument("args", nargs=-1, metavar="[REMOTE] [REF...]")
@json_option
@click.pass_obj
def push(reg, args, as_json):
    """Copy versions (default: all) to REMOTE (default: origin): blobs, manifests, records, tags.

    A bare NAME pushes all its versions; NAME@N or NAME@TAG one. Only objects the remote lacks
    are sent; a version number another pusher took goes to the next free one (reported).
    """
    from tvreg import progress

    args = list(args)
    name = args.pop(0) if args and args[0] in reg.remotes() else "origin"
    with progress.bar(None, f"push {name}") as bar:
        rep = reg.push(name, args or None, on_bytes=bar.update)
    if as_json:
        emit_json(rep.to_json())
    for local, remote_ref in rep.renumbered.items():
        message(f"{local} is {remote_ref} on {name} (another version held {local} there)")
    message(f"pushed to {name}: {rep.objects_sent} object(s), {human_bytes(rep.bytes_sent)} sent, "
            f"{rep.objects_skipped} already there; {rep.versions_sent} version(s), "
            f"{rep.versions_skipped} already there; {rep.tags_sent} tag(s)")


COMMANDS = [remote, push]
